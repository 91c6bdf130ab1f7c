//! The room's consumer (the seed's `retrieve_messages`): takes deliveries off the room's queue in
//! order, numbers each message, stores it, puts it in the cache, wakes its sender, and only then
//! acknowledges it. A redelivered message that is already stored keeps its first number and is
//! acknowledged without being stored again.

use tokio_util::sync::CancellationToken;

use super::ChatRoom;
use crate::backoff::Backoff;
use crate::broker::{Delivery, DeliveryStream};
use crate::model::{ChatMessage, MessageType, now};
use crate::store::Inserted;

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
    async fn drain(&self, mut stream: Box<dyn DeliveryStream>, shutdown: &CancellationToken) -> bool {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return false,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    if !self.receive(delivery, shutdown).await {
                        return false;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(room = %self.inner.name, error = %e, "consumer failed");
                    return true;
                }
                None => return true,
            }
        }
    }

    /// Handles one delivery. Returns `false` if shutdown interrupted it before it was stored (the
    /// delivery is then left unacknowledged, so the broker delivers it again later).
    async fn receive(&self, delivery: Delivery, shutdown: &CancellationToken) -> bool {
        let mut message = match serde_json::from_slice::<ChatMessage>(&delivery.body) {
            Ok(m) if m.mess_props.room_name == self.inner.name => m,
            Ok(m) => {
                tracing::warn!(room = %self.inner.name, other = %m.mess_props.room_name,
                    "dropping a message for another room");
                let _ = delivery.reject().await;
                return true;
            }
            Err(e) => {
                tracing::warn!(room = %self.inner.name, error = %e, "dropping a malformed message");
                let _ = delivery.reject().await;
                return true;
            }
        };
        let id = message.mess_props.id;
        let sequence = {
            let mut state = self.state();
            state.last_sequence += 1;
            state.last_sequence
        };
        message.mess_props.mess_type = MessageType::Received;
        message.mess_props.rec_time = Some(now());
        message.mess_props.sequence_number = Some(sequence);
        message.dirty = false;

        let mut backoff = Backoff::default();
        let stored = loop {
            match self.inner.store.insert_message(&message).await {
                Ok(Inserted::New) => break message,
                Ok(Inserted::Existing(first)) => {
                    // A redelivery: give the number back (nothing else numbers messages
                    // while this consumer runs) and keep the first one.
                    self.state().last_sequence -= 1;
                    tracing::debug!(room = %self.inner.name, %id, "redelivered message already stored");
                    self.wake(first);
                    return self.ack(delivery, id).await;
                }
                Err(e) => {
                    tracing::warn!(room = %self.inner.name, %id, error = %e,
                        "cannot store message; retrying");
                    if !backoff.wait(shutdown).await {
                        self.state().last_sequence -= 1;
                        return false;
                    }
                }
            }
        };
        tracing::debug!(room = %self.inner.name, %id, sequence, "stored");
        self.put(stored.clone());
        self.wake(stored);
        self.ack(delivery, id).await
    }

    fn wake(&self, stored: ChatMessage) {
        let waiter = self.state().waiters.remove(&stored.mess_props.id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(stored);
        }
    }

    async fn ack(&self, delivery: Delivery, id: uuid::Uuid) -> bool {
        if let Err(e) = delivery.ack().await {
            // Stored but not acked: the broker redelivers it and the store recognises it.
            tracing::warn!(room = %self.inner.name, %id, error = %e, "ack failed");
        }
        true
    }
}
