//! Stored batches leave for the other instances together. Each room's consumer hands its stored
//! batch to the outbox and waits until it is published (as before, a batch is acknowledged to
//! the broker only after that); one task publishes whatever has gathered meanwhile as one event.
//! Over many rooms, where a batch is mostly one message, that is one publish for many batches
//! instead of one each; with nothing else waiting, a batch leaves at once.

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::ChatService;
use crate::model::{ClusterEvent, StoredBatch};

/// Most batches one event carries.
const MOST_AT_ONCE: usize = 64;

/// Where consumers hand their stored batches. Unbounded, yet it holds at most one batch per room
/// consumer: each waits for its batch to be published before it takes its next.
pub(super) struct Outbox(mpsc::UnboundedSender<Parcel>);

/// The other end, read by [`ChatService::publish_stored`].
pub(super) struct Parcels(mpsc::UnboundedReceiver<Parcel>);

/// A batch, and who waits for it to be published.
struct Parcel {
    batch: StoredBatch,
    published: oneshot::Sender<()>,
}

/// An outbox and its other end.
pub(super) fn outbox() -> (Outbox, Parcels) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Outbox(sender), Parcels(receiver))
}

impl Outbox {
    /// Hands `batch` over and waits until it is published (or the service stops).
    pub(super) async fn send(&self, batch: StoredBatch) {
        let (published, done) = oneshot::channel();
        if self.0.send(Parcel { batch, published }).is_ok() {
            let _ = done.await;
        }
    }
}

impl ChatService {
    /// Publishes the outbox's batches until `shutdown`: each time, every batch waiting (up to
    /// [`MOST_AT_ONCE`]) in one event.
    pub(super) async fn publish_stored(self, mut parcels: Parcels, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                first = parcels.0.recv() => match first {
                    Some(first) => first,
                    None => return,
                },
            };
            let mut gathered = vec![first];
            while gathered.len() < MOST_AT_ONCE {
                match parcels.0.try_recv() {
                    Ok(parcel) => gathered.push(parcel),
                    Err(_) => break,
                }
            }
            let (mut batches, waiting): (Vec<StoredBatch>, Vec<_>) = gathered
                .into_iter()
                .map(|parcel| (parcel.batch, parcel.published))
                .unzip();
            let event = match batches.len() {
                // One batch alone goes as the plain event.
                1 => {
                    let StoredBatch { room, messages } = batches.remove(0);
                    ClusterEvent::Stored { room, messages }
                }
                _ => ClusterEvent::StoredBatches { batches },
            };
            self.publish(None, event).await;
            for published in waiting {
                let _ = published.send(());
            }
        }
    }
}
