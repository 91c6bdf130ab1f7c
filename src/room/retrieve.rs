//! The room's consumer (the seed's `retrieve_messages`): takes deliveries off the room's queue in
//! order, numbers each new message, stores it, puts it in the cache, wakes its sender, and only
//! then acknowledges it.
//!
//! Deliveries that are ready together are handled as one batch (one store write), which is what
//! lets the store keep up with the broker. Within a batch:
//! 1. redelivered messages are looked up first: those already stored keep their stored copy and
//!    first number;
//! 2. the other messages are numbered `last_sequence + 1 ..` once, before the write;
//! 3. the write is ordered and stops at the first id already stored (a client's retry with an
//!    idempotency key): that message takes its stored copy and gives its number back, and the
//!    rest are renumbered before the write goes on; so numbers never repeat and never leave a gap;
//! 4. a failed write is retried with the same numbered messages. A failure leaves a stored
//!    prefix, which the retry recognises as its own (same number), even if the service dies
//!    mid-batch and the broker redelivers it.

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
        let room = &self.inner.name;
        // Only a redelivery can have been stored by this consumer already: look those up first
        // (one read). A fresh delivery can be stored already only if a client retried with an
        // idempotency key; the write itself catches that.
        let redelivered: Vec<Uuid> = accepted
            .iter()
            .filter(|(delivery, _)| delivery.redelivered)
            .map(|(_, m)| m.mess_props.id)
            .collect();
        let existing = if redelivered.is_empty() {
            Vec::new()
        } else {
            match self.lookup(&redelivered, shutdown).await {
                Some(existing) => existing,
                None => return false,
            }
        };
        let (mut outcome, fresh) = self.number(accepted.iter().map(|(_, m)| m), existing);
        let Some(stored) = self.write(&mut outcome, &fresh, shutdown).await else {
            return false;
        };
        let stored_at = now();
        for &slot in &stored {
            let message = &outcome[slot];
            let waited = stored_at - message.mess_props.sent_time;
            metrics::histogram!(m::SEND_TO_STORED_SECONDS)
                .record(waited.num_microseconds().unwrap_or(0) as f64 / 1e6);
            self.put(message.clone());
            self.publish_live(message);
        }
        metrics::counter!(m::STORE_WRITES).increment(stored.len() as u64);
        metrics::counter!(m::REDELIVERIES).increment((outcome.len() - stored.len()) as u64);
        if !stored.is_empty() {
            metrics::histogram!(m::STORE_BATCH_SIZE).record(stored.len() as f64);
        }
        tracing::debug!(%room, stored = stored.len(), duplicates = outcome.len() - stored.len(),
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

    /// The stored copies of those of `ids` the store has, retrying through outages; `None` if
    /// shutdown came first.
    async fn lookup(&self, ids: &[Uuid], shutdown: &CancellationToken) -> Option<Vec<ChatMessage>> {
        let mut backoff = Backoff::default();
        loop {
            match self
                .inner
                .store
                .existing_messages(&self.inner.name, ids)
                .await
            {
                Ok(existing) => return Some(existing),
                Err(e) => {
                    metrics::counter!(m::STORE_ERRORS).increment(1);
                    tracing::warn!(room = %self.inner.name, error = %e, "cannot read the store; retrying");
                    if !backoff.wait(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Writes the new messages (`outcome[slot]` for each of `fresh`, in order) until all are
    /// stored, retrying through outages with the same numbered messages. A message found already
    /// stored takes its stored copy; if that copy is not one this batch wrote on an earlier
    /// attempt (a client's retry), its number is given back and every later new message is
    /// numbered one lower, so no gap opens. Returns the slots this batch stored, or `None` if
    /// shutdown came first.
    async fn write(
        &self,
        outcome: &mut [ChatMessage],
        fresh: &[usize],
        shutdown: &CancellationToken,
    ) -> Option<Vec<usize>> {
        let mut stored = Vec::with_capacity(fresh.len());
        let mut start = 0;
        let mut backoff = Backoff::default();
        while start < fresh.len() {
            let batch: Vec<ChatMessage> =
                fresh[start..].iter().map(|&s| outcome[s].clone()).collect();
            let found_at = match self
                .inner
                .store
                .insert_messages(&self.inner.name, &batch)
                .await
            {
                Ok(None) => {
                    stored.extend_from_slice(&fresh[start..]);
                    break;
                }
                Ok(Some(index)) => index,
                Err(e) => {
                    metrics::counter!(m::STORE_ERRORS).increment(1);
                    tracing::warn!(room = %self.inner.name, count = batch.len(), error = %e,
                        "cannot store; retrying");
                    if !backoff.wait(shutdown).await {
                        return None;
                    }
                    continue;
                }
            };
            stored.extend_from_slice(&fresh[start..start + found_at]);
            let slot = fresh[start + found_at];
            let ours = &outcome[slot];
            let copy = self.lookup(&[ours.mess_props.id], shutdown).await?.pop();
            let Some(copy) = copy else {
                tracing::warn!(room = %self.inner.name, "store reported a stored id it cannot find; retrying");
                if !backoff.wait(shutdown).await {
                    return None;
                }
                continue;
            };
            if copy.mess_props.sequence_number == ours.mess_props.sequence_number {
                // Written by an earlier attempt of this very batch.
                stored.push(slot);
            } else {
                outcome[slot] = copy;
                for &later in &fresh[start + found_at + 1..] {
                    let number = &mut outcome[later].mess_props.sequence_number;
                    *number = number.map(|n| n - 1);
                }
                self.state().last_sequence -= 1;
            }
            start += found_at + 1;
        }
        Some(stored)
    }

    /// Decides each message's stored form: the stored copy for ids already known (from the store,
    /// or earlier in this batch), otherwise the message received and numbered. Returns the
    /// outcome for every message, in order, and the slots of the new messages to write.
    fn number<'a>(
        &self,
        received: impl Iterator<Item = &'a ChatMessage>,
        existing: Vec<ChatMessage>,
    ) -> (Vec<ChatMessage>, Vec<usize>) {
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
            fresh.push(outcome.len());
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
