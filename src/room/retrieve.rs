//! The room's consumer (the seed's `retrieve_messages`): takes deliveries off the room's queue in
//! order, numbers each new message, stores it, announces the stored batch (to the caches, live
//! feeds and waiting senders of every instance), fans it out to the members' inboxes, and only
//! then acknowledges it.
//!
//! Every instance runs a consumer for every room; the broker's single-active-consumer makes one
//! of them the room's numberer at a time. Numbering is fenced:
//! - a consumer reads the room's last stored number when its subscription delivers its first
//!   batch (it has just become the active consumer), never trusting a number from before;
//! - the store refuses a second message with one number, so a stale numberer (another instance
//!   took over meanwhile) gets [`InsertStop::NumberTaken`], reads the last number again and
//!   renumbers the rest of its batch: no number is ever stored twice, and none is skipped.
//!
//! Deliveries that are ready together are handled as one batch (one store write), which is what
//! lets the store keep up with the broker. Within a batch:
//! 1. redelivered messages are looked up first: those already stored keep their stored copy and
//!    first number;
//! 2. the other messages are numbered `last + 1 ..` once, before the write;
//! 3. the write is ordered and stops at the first id already stored (a client's retry with an
//!    idempotency key): that message takes its stored copy and gives its number back, and the
//!    rest are renumbered before the write goes on;
//! 4. a failed write is retried with the same numbered messages. A failure leaves a stored
//!    prefix, which the retry recognises as its own (same number), even if the service dies
//!    mid-batch and the broker redelivers it. If the subscription closes meanwhile (the broker
//!    hands the deliveries to another consumer), the batch is abandoned unacknowledged.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{RoomError, declare_topology, sequence};
use crate::backoff::Backoff;
use crate::broker::{Broker, Delivery, DeliveryStream};
use crate::metrics as m;
use crate::model::{ChatMessage, MessageId, MessageType, RoomMeta, RoomName, now};
use crate::store::{InsertStop, Store, StoreError};

/// Most deliveries handled as one batch.
pub const MAX_BATCH: usize = 256;

/// Where a room's consumer reports each stored batch (the service publishes it as a cluster
/// event and feeds its own caches, live feeds and waiting senders) and how it is doing.
#[async_trait]
pub trait Announce: Send + Sync + 'static {
    /// `messages` are stored (new ones numbered; redelivered ones as first stored). Failures are
    /// the announcer's to log: the messages are stored either way.
    async fn stored(&self, room: &RoomName, messages: &[ChatMessage]);

    /// The consumer's state changed: it consumes, or it cannot (and why).
    fn health(&self, room: &RoomName, health: Health);

    /// The room's queue was deleted behind the service: the messages it held and had not
    /// delivered are gone, so whoever waits for one of them must not be told it is safe.
    async fn queue_lost(&self, room: &RoomName);
}

/// Whether a room's consumer can do its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Subscribed (active or standing by), storing what it gets.
    Consuming,
    /// Stored a batch: the room's active consumer.
    Stored,
    /// Cannot subscribe, or cannot store what it got: the room's messages wait in its queue.
    Failing(String),
    /// Stopped (the room was deleted, or shutdown).
    Stopped,
}

/// What the room's consumer works with.
pub struct RoomConsumer {
    /// The room whose queue it consumes.
    pub room: RoomName,
    /// Where the queue is.
    pub broker: Arc<dyn Broker>,
    /// Where messages are stored.
    pub store: Arc<dyn Store>,
    /// Who hears about stored batches.
    pub announce: Arc<dyn Announce>,
    /// The metadata of a room this instance has just created, topology declared: the first
    /// subscription takes it instead of reading the store and declaring again.
    pub created: std::sync::Mutex<Option<RoomMeta>>,
    /// Permits to subscribe, shared by the instance's consumers: an instance starting with
    /// 10,000 rooms subscribes them a few at a time rather than all at once (which held every
    /// room's half-done start in memory together, and made them queue at the store anyway).
    pub subscribing: Arc<tokio::sync::Semaphore>,
    /// Told when the room is in use (a send waits for it): its consumer subscribes without
    /// waiting for a permit.
    pub urgent: Arc<tokio::sync::Notify>,
    /// Started with the instance (the room is in the stored list), not subscribed yet: the
    /// first subscription reads nothing from the store and declares only the room's queue (it
    /// must exist to be consumed). The room's metadata is read when its first batch arrives; its
    /// exchange and members' inbox bindings were declared, durable, when it was made and when
    /// they joined, and the instance's topology sweep declares them again once every room is
    /// subscribed. So an instance with 10,000 rooms is ready after two broker operations per
    /// room, not a store read and a handful of them.
    pub at_start: std::sync::atomic::AtomicBool,
}

/// How a subscription ended.
enum Ended {
    /// Subscribe again (the broker went away, or cancelled the consumer).
    Resubscribe,
    /// The broker cancelled the consumer on a live channel: the room's queue was deleted, and
    /// with it whatever it held that was not delivered yet. Declare it again and subscribe.
    QueueGone,
    /// Shutdown.
    Stop,
}

/// What one subscription knows about numbering.
struct Numbering {
    /// The room's last stored number, read when the first batch arrives; `None` before.
    last: Option<u64>,
    /// A group room fans stored messages out to its members' inboxes; `None` until the room's
    /// metadata is read (at the first batch of a consumer started with the instance).
    group_room: Option<bool>,
}

/// Runs the room's consumer until `shutdown` fires or the room is deleted: loads the room's
/// metadata from the store, (re)declares its topology (which heals a queue deleted behind the
/// service), subscribes, handles deliveries, and subscribes again with backoff whenever the
/// broker goes away or cancels the subscription.
pub async fn retrieve_messages(consumer: RoomConsumer, shutdown: CancellationToken) {
    consumer.run(&shutdown).await;
    consumer.announce.health(&consumer.room, Health::Stopped);
}

impl RoomConsumer {
    async fn run(&self, shutdown: &CancellationToken) {
        let room = &self.room;
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self.subscribe().await {
                Ok(Some((stream, group_room))) => {
                    metrics::counter!(m::CONSUMER_STARTS).increment(1);
                    self.announce.health(room, Health::Consuming);
                    backoff.reset();
                    tracing::debug!(%room, "consuming");
                    let numbering = Numbering {
                        last: None,
                        group_room,
                    };
                    match self.drain(stream, numbering, shutdown).await {
                        Ended::Stop => return,
                        Ended::QueueGone => self.announce.queue_lost(room).await,
                        Ended::Resubscribe => {}
                    }
                }
                Ok(None) => {
                    tracing::info!(%room, "room deleted; its consumer stops");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%room, error = %e, "cannot consume");
                    self.announce
                        .health(room, Health::Failing(format!("cannot consume: {e}")));
                }
            }
            if !backoff.wait(shutdown).await {
                return;
            }
        }
    }
}

impl RoomConsumer {
    /// A subscription, the room's topology declared (see [`RoomConsumer::at_start`]), and
    /// whether it is a group room if that was read; `None` if the room no longer exists.
    async fn subscribe(
        &self,
    ) -> Result<Option<(Box<dyn DeliveryStream>, Option<bool>)>, RoomError> {
        let _permit = tokio::select! {
            permit = self.subscribing.acquire() => permit.ok(),
            _ = self.urgent.notified() => None,
        };
        let created = self
            .created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let group_room = match created {
            Some(meta) => Some(meta.group_room),
            None if self
                .at_start
                .swap(false, std::sync::atomic::Ordering::Relaxed) =>
            {
                self.broker.declare_room(&self.room, false).await?;
                None
            }
            None => {
                let Some(meta) = self.store.load_room(&self.room).await? else {
                    return Ok(None);
                };
                declare_topology(self.broker.as_ref(), &meta).await?;
                Some(meta.group_room)
            }
        };
        let stream = self.broker.consume(&self.room).await?;
        Ok(Some((stream, group_room)))
    }

    /// Handles deliveries until the subscription ends or shutdown.
    async fn drain(
        &self,
        mut stream: Box<dyn DeliveryStream>,
        mut numbering: Numbering,
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut closed = stream.closed();
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ended::Stop,
                next = stream.next() => next,
                _ = &mut closed => {
                    tracing::warn!(room = %self.room, "subscription closed silently");
                    return Ended::Resubscribe;
                }
            };
            let first = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    tracing::warn!(room = %self.room, error = %e, "consumer failed");
                    return Ended::Resubscribe;
                }
                None if stream.is_open() => {
                    tracing::warn!(room = %self.room,
                        "the broker cancelled the consumer: the room's queue was deleted");
                    return Ended::QueueGone;
                }
                None => {
                    tracing::info!(room = %self.room, "subscription closed");
                    return Ended::Resubscribe;
                }
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
            let open = || stream.is_open();
            // Boxed: an idle consumer (one per room) then holds only the small waiting state,
            // not room for a whole batch's work.
            match Box::pin(self.receive(batch, &mut numbering, &open, shutdown)).await {
                Handled::Done => {}
                Handled::Abandoned => return Ended::Resubscribe,
                Handled::Stopped => return Ended::Stop,
            }
            if ended {
                return Ended::Resubscribe;
            }
        }
    }

    /// Handles one batch of deliveries. Unless it is `Done`, the deliveries are left
    /// unacknowledged and the broker delivers them again (to this or another instance).
    async fn receive(
        &self,
        deliveries: Vec<Delivery>,
        numbering: &mut Numbering,
        open: &(dyn Fn() -> bool + Sync),
        shutdown: &CancellationToken,
    ) -> Handled {
        let mut accepted = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match serde_json::from_slice::<ChatMessage>(&delivery.body) {
                Ok(m) if m.mess_props.room_name == self.room => accepted.push((delivery, m)),
                Ok(m) => {
                    tracing::warn!(room = %self.room, other = %m.mess_props.room_name,
                        "dropping a message for another room");
                    let _ = delivery.reject().await;
                }
                Err(e) => {
                    tracing::warn!(room = %self.room, error = %e, "dropping a malformed message");
                    let _ = delivery.reject().await;
                }
            }
        }
        metrics::counter!(m::DELIVERIES).increment(accepted.len() as u64);
        if accepted.is_empty() {
            return Handled::Done;
        }
        let retry = Retry { open, shutdown };
        if numbering.group_room.is_none() {
            match self.group_room(&retry).await {
                Ok(group_room) => numbering.group_room = Some(group_room),
                Err(handled) => return handled,
            }
        }
        // Only a redelivery can have been stored already by a consumer of this room: look those
        // up first (one read). A fresh delivery can be stored already only if a client retried
        // with an idempotency key; the write itself catches that.
        let redelivered: Vec<MessageId> = accepted
            .iter()
            .filter(|(delivery, _)| delivery.redelivered)
            .map(|(_, m)| m.mess_props.id)
            .collect();
        let existing = if redelivered.is_empty() {
            Vec::new()
        } else {
            match self.lookup(&redelivered, &retry).await {
                Ok(existing) => existing,
                Err(handled) => return handled,
            }
        };
        // The first batch of a subscription: this consumer just became the active one.
        let last = match numbering.last {
            Some(last) => last,
            None => match self.last_stored(&retry).await {
                Ok(last) => last,
                Err(handled) => return handled,
            },
        };
        let (mut outcome, fresh, last) = number(accepted.iter().map(|(_, m)| m), existing, last);
        numbering.last = Some(last);
        let stored = match self.write(&mut outcome, &fresh, numbering, &retry).await {
            Ok(stored) => stored,
            Err(handled) => {
                // What this consumer believes about the last number may be wrong now.
                numbering.last = None;
                return handled;
            }
        };
        // A message that came more than once in this batch (a client's concurrent retries) must
        // read as its one final stored copy everywhere, whatever the write changed about it.
        let finals: HashMap<MessageId, ChatMessage> = fresh
            .iter()
            .map(|&slot| (outcome[slot].mess_props.id, outcome[slot].clone()))
            .collect();
        for message in outcome.iter_mut() {
            if let Some(last) = finals.get(&message.mess_props.id) {
                *message = last.clone();
            }
        }
        let stored_at = now();
        for &slot in &stored {
            let waited = stored_at - outcome[slot].mess_props.sent_time;
            metrics::histogram!(m::SEND_TO_STORED_SECONDS)
                .record(waited.num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
        metrics::counter!(m::STORE_WRITES).increment(stored.len() as u64);
        metrics::counter!(m::REDELIVERIES).increment((outcome.len() - stored.len()) as u64);
        if !stored.is_empty() {
            metrics::histogram!(m::STORE_BATCH_SIZE).record(stored.len() as f64);
        }
        tracing::debug!(room = %self.room, stored = stored.len(),
            duplicates = outcome.len() - stored.len(), last = ?numbering.last, "batch stored");
        self.announce.health(&self.room, Health::Stored);
        self.announce.stored(&self.room, &outcome).await;
        if numbering.group_room == Some(true) && !stored.is_empty() {
            self.fan_out(&outcome, &stored).await;
        }
        let mut channel_ok = true;
        for ((delivery, _), stored) in accepted.into_iter().zip(&outcome) {
            // Once an ack fails the channel is gone: the broker redelivers the rest of the batch
            // (the store recognises them), so don't wait on each.
            if channel_ok && let Err(e) = delivery.ack().await {
                tracing::warn!(room = %self.room, id = %stored.mess_props.id, error = %e,
                    "ack failed; the rest of the batch will be redelivered");
                channel_ok = false;
            }
        }
        Handled::Done
    }

    /// Copies newly stored messages to the members' inboxes. Best effort: the history holds
    /// them either way, and an inbox is only a convenience copy.
    async fn fan_out(&self, outcome: &[ChatMessage], stored: &[usize]) {
        let bodies = stored
            .iter()
            .filter_map(|&slot| serde_json::to_vec(&outcome[slot]).ok())
            .collect();
        if let Err(e) = self.broker.fan_out(&self.room, bodies).await {
            tracing::warn!(room = %self.room, error = %e, "could not copy messages to inboxes");
        }
    }

    /// Reads from the store, retrying through outages (until the subscription closes or the
    /// instance stops).
    async fn read<T, Fut>(&self, retry: &Retry<'_>, read: impl Fn() -> Fut) -> Result<T, Handled>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Backoff::default();
        loop {
            match read().await {
                Ok(found) => return Ok(found),
                Err(e) => {
                    metrics::counter!(m::STORE_ERRORS).increment(1);
                    tracing::warn!(room = %self.room, error = %e, "cannot read the store; retrying");
                    retry.wait(&mut backoff).await?;
                }
            }
        }
    }

    /// The stored copies of those of `ids` the store has.
    async fn lookup(
        &self,
        ids: &[MessageId],
        retry: &Retry<'_>,
    ) -> Result<Vec<ChatMessage>, Handled> {
        self.read(retry, || self.store.existing_messages(&self.room, ids))
            .await
    }

    /// Whether the room is a group room. A room deleted meanwhile stops its consumer, its
    /// deliveries unacknowledged.
    async fn group_room(&self, retry: &Retry<'_>) -> Result<bool, Handled> {
        match self
            .read(retry, || self.store.load_room(&self.room))
            .await?
        {
            Some(meta) => Ok(meta.group_room),
            None => {
                tracing::info!(room = %self.room, "room deleted; its consumer stops");
                Err(Handled::Stopped)
            }
        }
    }

    /// The room's last stored sequence number.
    async fn last_stored(&self, retry: &Retry<'_>) -> Result<u64, Handled> {
        self.read(retry, || self.store.last_sequence(&self.room))
            .await
    }

    /// Writes the new messages (`outcome[slot]` for each of `fresh`, in order) until all are
    /// stored, retrying through outages with the same numbered messages. A message found already
    /// stored takes its stored copy; if that copy is not one this batch wrote on an earlier
    /// attempt (a client's retry), its number is given back and every later new message is
    /// numbered one lower. A number found taken (another numberer was active meanwhile) makes
    /// the rest of the batch start again after the room's last stored number. Returns the slots
    /// this batch stored.
    async fn write(
        &self,
        outcome: &mut [ChatMessage],
        fresh: &[usize],
        numbering: &mut Numbering,
        retry: &Retry<'_>,
    ) -> Result<Vec<usize>, Handled> {
        let mut stored = Vec::with_capacity(fresh.len());
        let mut start = 0;
        let mut backoff = Backoff::default();
        while start < fresh.len() {
            let batch: Vec<ChatMessage> =
                fresh[start..].iter().map(|&s| outcome[s].clone()).collect();
            let stop = match self.store.insert_messages(&self.room, &batch).await {
                Ok(None) => {
                    stored.extend_from_slice(&fresh[start..]);
                    break;
                }
                Ok(Some(stop)) => stop,
                Err(e) => {
                    metrics::counter!(m::STORE_ERRORS).increment(1);
                    tracing::warn!(room = %self.room, count = batch.len(), error = %e,
                        "cannot store; retrying");
                    self.announce
                        .health(&self.room, Health::Failing(format!("cannot store: {e}")));
                    retry.wait(&mut backoff).await?;
                    continue;
                }
            };
            match stop {
                InsertStop::IdStored(found_at) => {
                    stored.extend_from_slice(&fresh[start..start + found_at]);
                    let slot = fresh[start + found_at];
                    let ours = sequence(&outcome[slot]);
                    let copy = self
                        .lookup(&[outcome[slot].mess_props.id], retry)
                        .await?
                        .pop();
                    let Some(copy) = copy else {
                        tracing::warn!(room = %self.room,
                            "store reported a stored id it cannot find; retrying");
                        retry.wait(&mut backoff).await?;
                        continue;
                    };
                    if sequence(&copy) == ours {
                        // Written by an earlier attempt of this very batch.
                        stored.push(slot);
                    } else {
                        outcome[slot] = copy;
                        let later = &fresh[start + found_at + 1..];
                        numbering.last = Some(renumber(outcome, later, ours));
                    }
                    start += found_at + 1;
                }
                InsertStop::NumberTaken(taken_at) => {
                    stored.extend_from_slice(&fresh[start..start + taken_at]);
                    let last = self.last_stored(retry).await?;
                    tracing::warn!(room = %self.room, last,
                        "another consumer numbered this room meanwhile; renumbering");
                    let rest = &fresh[start + taken_at..];
                    numbering.last = Some(renumber(outcome, rest, last + 1));
                    start += taken_at;
                }
            }
        }
        Ok(stored)
    }
}

/// How a batch ended when it was not stored.
enum Handled {
    /// Stored, announced and acknowledged.
    Done,
    /// The subscription closed while the store was failing: the broker hands the deliveries to
    /// the next active consumer.
    Abandoned,
    /// Shutdown came first.
    Stopped,
}

/// When a store retry loop must give up.
struct Retry<'a> {
    /// Whether the subscription is still open.
    open: &'a (dyn Fn() -> bool + Sync),
    shutdown: &'a CancellationToken,
}

impl Retry<'_> {
    /// Waits before the next attempt, or says why there is none.
    async fn wait(&self, backoff: &mut Backoff) -> Result<(), Handled> {
        if !(self.open)() {
            return Err(Handled::Abandoned);
        }
        if backoff.wait(self.shutdown).await {
            Ok(())
        } else {
            Err(Handled::Stopped)
        }
    }
}

/// Numbers `slots` of `outcome` as `first, first + 1, ...`; returns the last number given
/// (`first - 1` when there are none).
fn renumber(outcome: &mut [ChatMessage], slots: &[usize], first: u64) -> u64 {
    let mut last = first - 1;
    for &slot in slots {
        last += 1;
        outcome[slot].mess_props.sequence_number = Some(last);
    }
    last
}

/// Decides each message's stored form: the stored copy for ids already known (from the store,
/// or earlier in this batch), otherwise the message received and numbered after `last`. Returns
/// the outcome for every message, in order, the slots of the new messages to write, and the last
/// number given.
fn number<'a>(
    received: impl Iterator<Item = &'a ChatMessage>,
    existing: Vec<ChatMessage>,
    mut last: u64,
) -> (Vec<ChatMessage>, Vec<usize>, u64) {
    let mut known: HashMap<MessageId, ChatMessage> =
        existing.into_iter().map(|m| (m.mess_props.id, m)).collect();
    let mut outcome = Vec::new();
    let mut fresh = Vec::new();
    let rec_time = now();
    for message in received {
        let id = message.mess_props.id;
        if let Some(first) = known.get(&id) {
            outcome.push(first.clone());
            continue;
        }
        last += 1;
        let mut stored = message.clone();
        stored.mess_props.mess_type = MessageType::Received;
        stored.mess_props.rec_time = Some(rec_time);
        stored.mess_props.sequence_number = Some(last);
        stored.dirty = false;
        known.insert(id, stored.clone());
        fresh.push(outcome.len());
        outcome.push(stored);
    }
    (outcome, fresh, last)
}
