//! The room's consumer (the seed's `retrieve_messages`): takes deliveries off the room's queue in
//! order, numbers each new message, stores it, puts it in the cache, wakes its sender, and only
//! then acknowledges it.
//!
//! Deliveries that are ready together are handled as one batch (one store lookup, one store
//! write), which is what lets the store keep up with the broker. Within a batch:
//! 1. ids already stored (redeliveries, client retries) keep their stored copy and first number;
//! 2. the new messages are numbered `last_sequence + 1 ..` once, before the write;
//! 3. the write is retried with those same numbered messages until it succeeds. It is ordered and
//!    idempotent by id, so a failed attempt leaves a stored prefix and a retry completes it:
//!    numbers never repeat and never leave a gap, even if the service dies mid-batch.

use std::collections::HashMap;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ChatRoom;
use crate::backoff::Backoff;
use crate::broker::{Delivery, DeliveryStream};
use crate::metrics as m;
use crate::model::{ChatMessage, MessageType, now};

/// Most deliveries handled as one batch.
pub const MAX_BATCH: usize = 256;
/// How often an idle consumer checks that its subscription is still open.
const LIVENESS_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

impl ChatRoom {
    /// Runs the room's consumer until `shutdown` fires: (re)declares the topology, subscribes,
    /// handles deliveries, and resubscribes with backoff whenever the broker goes away.
    pub(crate) async fn retrieve_messages(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let subscribed = async {
                self.declare().await?;
                Ok::<_, super::RoomError>(self.inner.broker.consume(&self.inner.name).await?)
            };
            match subscribed.await {
                Ok(stream) => {
                    metrics::counter!(m::CONSUMER_STARTS).increment(1);
                    backoff.reset();
                    tracing::debug!(room = %self.inner.name, "consuming");
                    if !self.drain(stream, &shutdown).await {
                        return;
                    }
                }
                Err(e) => tracing::warn!(room = %self.inner.name, error = %e, "cannot consume"),
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    /// Handles deliveries until the stream ends (returns `true`: resubscribe) or shutdown
    /// (returns `false`).
    async fn drain(
        &self,
        mut stream: Box<dyn DeliveryStream>,
        shutdown: &CancellationToken,
    ) -> bool {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return false,
                next = stream.next() => next,
                _ = tokio::time::sleep(LIVENESS_CHECK) => {
                    if stream.is_open() {
                        continue;
                    }
                    tracing::warn!(room = %self.inner.name, "subscription closed silently");
                    return true;
                }
            };
            let first = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    tracing::warn!(room = %self.inner.name, error = %e, "consumer failed");
                    return true;
                }
                None => return true,
            };
            let mut batch = vec![first];
            let mut ended = false;
            while batch.len() < MAX_BATCH {
                match stream.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(_) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if !self.receive(batch, shutdown).await {
                return false;
            }
            if ended {
                return true;
            }
        }
    }

    /// Handles one batch of deliveries. Returns `false` if shutdown interrupted it before it was
    /// stored; the deliveries are then left unacknowledged and the broker delivers them again.
    async fn receive(&self, deliveries: Vec<Delivery>, shutdown: &CancellationToken) -> bool {
        let mut accepted = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match serde_json::from_slice::<ChatMessage>(&delivery.body) {
                Ok(m) if m.mess_props.room_name == self.inner.name => accepted.push((delivery, m)),
                Ok(m) => {
                    tracing::warn!(room = %self.inner.name, other = %m.mess_props.room_name,
                        "dropping a message for another room");
                    let _ = delivery.reject().await;
                }
                Err(e) => {
                    tracing::warn!(room = %self.inner.name, error = %e, "dropping a malformed message");
                    let _ = delivery.reject().await;
                }
            }
        }
        metrics::counter!(m::DELIVERIES).increment(accepted.len() as u64);
        if accepted.is_empty() {
            return true;
        }
        let ids: Vec<Uuid> = accepted.iter().map(|(_, m)| m.mess_props.id).collect();
        let store = &self.inner.store;
        let room = &self.inner.name;

        let mut backoff = Backoff::default();
        let existing = loop {
            match store.existing_messages(room, &ids).await {
                Ok(existing) => break existing,
                Err(e) => {
                    metrics::counter!(m::STORE_ERRORS).increment(1);
                    tracing::warn!(%room, error = %e, "cannot read the store; retrying");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
            }
        };
        let (outcome, fresh) = self.number(accepted.iter().map(|(_, m)| m), existing);

        let mut backoff = Backoff::default();
        while let Err(e) = store.insert_messages(room, &fresh).await {
            metrics::counter!(m::STORE_ERRORS).increment(1);
            tracing::warn!(%room, count = fresh.len(), error = %e, "cannot store; retrying");
            if !backoff.wait(shutdown).await {
                return false;
            }
        }
        let stored_at = now();
        for message in &fresh {
            let waited = stored_at - message.mess_props.sent_time;
            metrics::histogram!(m::SEND_TO_STORED_SECONDS)
                .record(waited.num_microseconds().unwrap_or(0) as f64 / 1e6);
            self.put(message.clone());
            self.publish_live(message);
        }
        metrics::counter!(m::STORE_WRITES).increment(fresh.len() as u64);
        metrics::counter!(m::REDELIVERIES).increment((outcome.len() - fresh.len()) as u64);
        if !fresh.is_empty() {
            metrics::histogram!(m::STORE_BATCH_SIZE).record(fresh.len() as f64);
        }
        tracing::debug!(%room, stored = fresh.len(), duplicates = outcome.len() - fresh.len(),
            last = self.last_sequence(), "batch stored");
        let mut channel_ok = true;
        for ((delivery, _), stored) in accepted.into_iter().zip(outcome) {
            let id = stored.mess_props.id;
            self.wake(stored);
            // Once an ack fails the channel is gone: the broker redelivers the rest of the batch
            // (the store recognises them), so don't wait on each.
            if channel_ok && let Err(e) = delivery.ack().await {
                tracing::warn!(%room, %id, error = %e, "ack failed; the rest of the batch will be redelivered");
                channel_ok = false;
            }
        }
        true
    }

    /// Decides each message's stored form: the stored copy for ids already known (from the store,
    /// or earlier in this batch), otherwise the message received and numbered. Returns the
    /// outcome for every message, in order, and the new messages to write.
    fn number<'a>(
        &self,
        received: impl Iterator<Item = &'a ChatMessage>,
        existing: Vec<ChatMessage>,
    ) -> (Vec<ChatMessage>, Vec<ChatMessage>) {
        let mut known: HashMap<Uuid, ChatMessage> =
            existing.into_iter().map(|m| (m.mess_props.id, m)).collect();
        let mut outcome = Vec::new();
        let mut fresh = Vec::new();
        let rec_time = now();
        let mut state = self.state();
        for message in received {
            let id = message.mess_props.id;
            if let Some(first) = known.get(&id) {
                outcome.push(first.clone());
                continue;
            }
            state.last_sequence += 1;
            let mut stored = message.clone();
            stored.mess_props.mess_type = MessageType::Received;
            stored.mess_props.rec_time = Some(rec_time);
            stored.mess_props.sequence_number = Some(state.last_sequence);
            stored.dirty = false;
            known.insert(id, stored.clone());
            fresh.push(stored.clone());
            outcome.push(stored);
        }
        (outcome, fresh)
    }

    fn wake(&self, stored: ChatMessage) {
        let waiting = self.state().waiters.remove(&stored.mess_props.id);
        for waiter in waiting.into_iter().flatten() {
            let _ = waiter.send(stored.clone());
        }
    }
}
