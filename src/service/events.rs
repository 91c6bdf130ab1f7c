//! Cluster events: how several instances serve as one. Whatever changes a room (a stored batch, a
//! creation, a membership change, a deletion) is applied here at once and published on the
//! broker's events exchange; every other instance applies it from its own events queue. The
//! store stays the truth: an instance that may have missed events (its events queue is new after
//! a reconnect) catches up from the store ([`ChatService::resync`]), and a cache that meets a gap
//! in the numbers fills it from the store before going on.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::peers::{ALIVE_EVERY, BARRIER_WAIT};
use super::{ChatService, Inner};
use crate::backoff::Backoff;
use crate::model::{ChatMessage, ClusterEvent, EventEnvelope, RoomName, StoredBatch};
use crate::room::retrieve::{Announce, Health};
use crate::room::{ChatRoom, Gap};

/// Messages read from the store per page when a cache catches up.
const CATCH_UP_PAGE: usize = 1000;

impl ChatService {
    /// Tells every other instance about `event`, then applies it here. Publishing first means
    /// that by the time this instance answers anyone, every instance's events queue holds the
    /// change. A failed publish is logged: the change is in the store, and the other instances
    /// catch up from it (a stored batch at their next event of that room, membership and rooms
    /// when they resync or load the room).
    pub(super) async fn announce(&self, event: ClusterEvent) {
        self.publish(None, event.clone()).await;
        self.apply(event).await;
    }

    /// Like [`Self::announce`], and then waits (at most [`BARRIER_WAIT`]) until every other live
    /// instance has applied the change too: a change that decides who may do what (a deletion,
    /// a membership change) holds everywhere before this instance answers.
    pub(super) async fn announce_everywhere(&self, event: ClusterEvent) {
        let barrier = Uuid::new_v4();
        let applied = self.inner.peers.open(barrier);
        self.publish(Some(barrier), event.clone()).await;
        self.apply(event).await;
        if tokio::time::timeout(BARRIER_WAIT, applied).await.is_err() {
            let slow = self.inner.peers.close(barrier);
            tracing::warn!(
                ?slow,
                "instances did not confirm a change in time; not waiting for them"
            );
        }
    }

    /// Publishes an event on the events exchange (logging a failure).
    pub(super) async fn publish(&self, barrier: Option<Uuid>, event: ClusterEvent) {
        let envelope = EventEnvelope {
            origin: self.inner.instance,
            barrier,
            event,
        };
        let body = serde_json::to_vec(&envelope).expect("an event always serialises");
        if let Err(e) = self.inner.broker.publish_event(body).await {
            tracing::warn!(error = %e,
                "could not publish a cluster event; other instances will catch up from the store");
        }
    }

    /// Handles an event another instance published.
    async fn receive(&self, envelope: EventEnvelope) {
        let from = envelope.origin;
        if self.inner.peers.heard(from) && envelope.event != ClusterEvent::Leaving {
            // A newcomer (or one this instance lost sight of): let it know this one at once.
            self.publish(None, ClusterEvent::Alive).await;
        }
        match envelope.event {
            ClusterEvent::Alive => {}
            ClusterEvent::Leaving => self.inner.peers.left(from),
            ClusterEvent::Applied { to, barrier } => {
                if to == self.inner.instance {
                    self.inner.peers.applied(barrier, from);
                }
            }
            event => {
                self.apply(event).await;
                if let Some(barrier) = envelope.barrier {
                    self.publish(None, ClusterEvent::Applied { to: from, barrier })
                        .await;
                }
            }
        }
    }

    /// Says "alive" now and every [`ALIVE_EVERY`] until `shutdown`, then "leaving".
    pub(super) async fn keep_alive(self, shutdown: CancellationToken) {
        loop {
            self.publish(None, ClusterEvent::Alive).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(ALIVE_EVERY) => {}
            }
        }
        self.publish(None, ClusterEvent::Leaving).await;
    }

    /// Applies an event to this instance's rooms, consumers and waiting senders.
    async fn apply(&self, event: ClusterEvent) {
        match event {
            ClusterEvent::Stored { room, messages } => self.apply_stored(&room, &messages).await,
            ClusterEvent::StoredBatches { batches } => {
                for batch in batches {
                    self.apply_stored(&batch.room, &batch.messages).await;
                }
            }
            ClusterEvent::RoomCreated { room } => self.ensure_consumer(&room),
            ClusterEvent::RoomChanged { meta } => {
                if let Some(loaded) = self.inner.rooms.find(&meta.name) {
                    loaded.set_meta(meta);
                }
            }
            ClusterEvent::RoomDeleted { room } => self.forget_room(&room),
            ClusterEvent::QueueLost { room } => self.inner.waiters.doubt_room(&room),
            ClusterEvent::Alive | ClusterEvent::Leaving | ClusterEvent::Applied { .. } => {}
        }
    }

    /// A room's stored batch: feeds its cache and live feeds, then wakes its senders. In this
    /// order, so that a sender answered "stored" finds its message in the very next read.
    async fn apply_stored(&self, room: &RoomName, messages: &[ChatMessage]) {
        if let Some(loaded) = self.inner.rooms.find(room) {
            self.feed(&loaded, messages).await;
        }
        self.inner.waiters.wake(messages);
    }

    /// Drops a deleted room: its cache, its live feeds, its consumer and its waiting senders.
    pub(super) fn forget_room(&self, room: &RoomName) {
        if let Some(loaded) = self.inner.rooms.remove(room) {
            loaded.close();
        }
        self.inner.waiters.fail_room(room);
        self.stop_consumer(room);
    }

    /// Puts stored messages in a room's cache in sequence order, reading whatever is missing
    /// before them from the store.
    pub(super) async fn feed(&self, room: &ChatRoom, messages: &[ChatMessage]) {
        let Err(gap) = room.apply(messages) else {
            return;
        };
        self.fill(room, gap).await;
        if let Err(gap) = room.apply(messages) {
            // The store could not fill it: start the cache over at these messages.
            room.restart_at(gap.before);
            let _ = room.apply(messages);
        }
    }

    /// Reads the messages of a gap from the store into the cache (at most the cache's capacity:
    /// older ones stay in the store, where history reads find them).
    async fn fill(&self, room: &ChatRoom, gap: Gap) {
        let capacity = self.inner.config.cache_capacity as u64;
        let from = gap.after.max(gap.before.saturating_sub(capacity + 1));
        if from > gap.after {
            room.restart_at(from + 1);
        }
        let missing = (gap.before - from - 1) as usize;
        match room.messages_after(from, missing).await {
            Ok(found) => {
                if let Err(still) = room.apply(&found) {
                    tracing::warn!(room = %room.name(), ?still, "store has a gap in its numbers");
                }
            }
            Err(e) => tracing::warn!(room = %room.name(), error = %e, "cannot fill a cache gap"),
        }
    }

    /// Brings a loaded room's cache up to the store's newest message.
    pub(super) async fn catch_up(&self, room: &ChatRoom) {
        loop {
            match room
                .messages_after(room.last_sequence(), CATCH_UP_PAGE)
                .await
            {
                Ok(found) if found.is_empty() => return,
                Ok(found) => {
                    let full = found.len() == CATCH_UP_PAGE;
                    self.feed(room, &found).await;
                    if !full {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(room = %room.name(), error = %e, "cannot catch up from the store");
                    return;
                }
            }
        }
    }

    /// Reads this instance's events queue until `shutdown`: (re)subscribes, catches up from the
    /// store each time (events may have been missed while there was no queue), then applies every
    /// event other instances publish. `ready` fires after the first catch-up.
    pub(super) async fn listen(
        self,
        shutdown: CancellationToken,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let mut stream = match self.inner.broker.subscribe_events().await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to cluster events");
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            self.resync().await;
            self.inner
                .started
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = stream.next() => next,
                };
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cluster events interrupted");
                        break;
                    }
                    None => break,
                };
                match serde_json::from_slice::<EventEnvelope>(&delivery.body) {
                    // Applied when it was published.
                    Ok(envelope) if envelope.origin == self.inner.instance => {}
                    Ok(envelope) => self.receive(envelope).await,
                    Err(e) => tracing::warn!(error = %e, "dropping a malformed cluster event"),
                }
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    /// Catches up with the store after events may have been missed: every room in the stored
    /// list gets a consumer, every loaded room its current metadata and newest messages (or is
    /// dropped if deleted), and every waiting sender whose message is stored is answered.
    async fn resync(&self) {
        match self.inner.rooms.stored_names().await {
            Ok(mut names) => {
                // Consumers subscribe in this order, and the first to subscribe to a room is its
                // active one: instances starting together each begin at their own place in the
                // list, so the rooms spread over them.
                let start = start_place(self.leased_number().await, names.len());
                names.rotate_left(start);
                for name in names {
                    self.ensure_consumer(&name);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the room list"),
        }
        for room in self.inner.rooms.rooms() {
            match self.inner.store.load_room(room.name()).await {
                Ok(Some(meta)) => {
                    room.set_meta(meta);
                    self.catch_up(&room).await;
                }
                Ok(None) => self.forget_room(room.name()),
                Err(e) => tracing::warn!(room = %room.name(), error = %e, "cannot resync room"),
            }
        }
        for (room, ids) in self.inner.waiters.pending() {
            match self.inner.store.existing_messages(&room, &ids).await {
                Ok(stored) => self.inner.waiters.wake(&stored),
                Err(e) => tracing::warn!(%room, error = %e, "cannot look up awaited messages"),
            }
        }
    }
}

/// Where in a list of `len` rooms an instance holding `number` starts subscribing: the number's
/// bits reversed, as a fraction of the list (0 at the start, 1 half way, 2 a quarter, 3 three
/// quarters, ...), so any count of instances starting together begin far apart.
fn start_place(number: Option<u16>, len: usize) -> usize {
    let Some(number) = number else {
        return 0;
    };
    let fraction = f64::from(number.reverse_bits()) / 65_536.0;
    ((fraction * len as f64) as usize).min(len.saturating_sub(1))
}

/// The consumers' [`Announce`]: a stored batch becomes a cluster event. Holds the service
/// weakly, since the service owns the consumers.
pub(super) struct Announcer(pub Weak<Inner>);

#[async_trait]
impl Announce for Announcer {
    async fn stored(&self, room: &RoomName, messages: &[ChatMessage]) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        // Published first (with other rooms' batches gathered meanwhile), then applied here:
        // an instance answers "stored" only once the others can hear it too, as with every
        // event.
        let batch = StoredBatch {
            room: room.clone(),
            messages: messages.to_vec(),
        };
        inner.outbox.send(batch).await;
        ChatService { inner }.apply_stored(room, messages).await;
    }

    async fn queue_lost(&self, room: &RoomName) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let service = ChatService { inner };
        service
            .announce(ClusterEvent::QueueLost { room: room.clone() })
            .await;
    }

    fn health(&self, room: &RoomName, health: Health) {
        if let Some(inner) = self.0.upgrade() {
            inner.health.report(room, health);
        }
    }
}

impl Announcer {
    /// An announcer for `inner`'s consumers.
    pub(super) fn new(inner: &Arc<Inner>) -> Arc<Self> {
        Arc::new(Self(Arc::downgrade(inner)))
    }
}

#[cfg(test)]
mod tests {
    use super::start_place;

    #[test]
    fn instances_start_subscribing_far_apart_in_the_room_list() {
        let places: Vec<usize> = (0..4).map(|n| start_place(Some(n), 1_000)).collect();
        assert_eq!(places, [0, 500, 250, 750]);
        assert_eq!(start_place(None, 1_000), 0, "no number yet: from the start");
        assert_eq!(start_place(Some(1), 0), 0);
        assert_eq!(start_place(Some(1), 1), 0);
    }
}
