//! Sending: the seed's `/send/` semantics, shared by the REST API.

use std::time::Instant;

use super::waiters::RoomGone;
use super::{ChatError, ChatService, SendMode, SendOutcome, SendRequest, kind};
use crate::metrics as m;
use crate::model::{
    Alias, ChatMessage, MAX_IDEMPOTENCY_KEY_BYTES, MAX_MESSAGE_BYTES, MessageProperties,
    idempotency_name,
};
use crate::room::{ChatRoom, RoomError};

impl ChatService {
    /// Sends a message as `actor` (creating the room on its first send) and answers once it is
    /// stored, by whichever instance numbers the room, or once the broker confirmed it if storing
    /// takes longer than `store_wait`.
    pub async fn send(
        &self,
        actor: Option<&Alias>,
        request: SendRequest,
    ) -> Result<SendOutcome, ChatError> {
        let started = Instant::now();
        let outcome = self.send_inner(actor, request).await;
        let label = match &outcome {
            Ok(SendOutcome::Stored(_)) => "stored",
            Ok(SendOutcome::Accepted(_)) => "accepted",
            Err(ChatError::Unavailable(_)) => "unavailable",
            Err(ChatError::RateLimited { .. }) => "rate_limited",
            Err(_) => "refused",
        };
        metrics::counter!(m::SENDS, "outcome" => label).increment(1);
        metrics::histogram!(m::SEND_SECONDS).record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn send_inner(
        &self,
        actor: Option<&Alias>,
        request: SendRequest,
    ) -> Result<SendOutcome, ChatError> {
        // The seed's clients send empty messages (the course's test plan does); the REST API
        // refuses them.
        if request.message.is_empty() && request.mode == SendMode::MemberOnly {
            return Err(ChatError::BadRequest("message must not be empty".into()));
        }
        if request.message.len() > MAX_MESSAGE_BYTES {
            return Err(ChatError::MessageTooLarge(request.message.len()));
        }
        if let Some(key) = &request.idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES)
        {
            return Err(ChatError::BadRequest(format!(
                "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes long"
            )));
        }
        self.may_post_as(actor, &request.from_alias)?;
        self.check_send_rate(&request.from_alias)?;
        let create_or_join = request.mode == SendMode::CreateOrJoin;
        let room = match self.room(&request.room_name).await {
            Ok(room) => room,
            Err(ChatError::RoomNotFound(_)) if create_or_join => {
                self.create_room_for(&request).await?
            }
            Err(e) => return Err(e),
        };
        let group_room = room.group_room();
        if let Some(asked) = request.group_room
            && asked != group_room
        {
            return Err(ChatError::KindConflict {
                room: room.name().clone(),
                actual: kind(group_room),
                asked: kind(asked),
            });
        }
        let to_user = if group_room {
            if !self.is_member(&room, &request.from_alias).await? {
                if !create_or_join {
                    return Err(ChatError::NotAMember {
                        room: room.name().clone(),
                        alias: request.from_alias.clone(),
                    });
                }
                self.join(&room, &request.from_alias).await?;
            }
            room.name().to_string()
        } else {
            self.private_recipient(&room, &request).await?.to_string()
        };
        let mut id = self.inner.ids.next()?;
        if let Some(key) = &request.idempotency_key {
            // The first send with this key names the message's id; a retry finds it.
            let name = idempotency_name(room.name(), &request.from_alias, key);
            let claimed = self.inner.store.claim_idempotency_name(&name, id).await?;
            if claimed != id {
                id = claimed;
                // A retry of a stored message answers with it at once; a reuse of the key for
                // another text is refused before anything is published. (If the store cannot
                // say, the send goes on: the consumer recognises the id either way.)
                let stored = self.inner.store.existing_messages(room.name(), &[id]).await;
                if let Ok(Some(stored)) = stored.map(|found| found.into_iter().next()) {
                    return same_message(stored, &request.message).map(SendOutcome::Stored);
                }
            }
        }
        let props = MessageProperties::new_sent(
            room.name().clone(),
            request.from_alias.clone(),
            to_user,
            id,
        );
        let id = props.id;
        let keyed = request.idempotency_key.is_some();
        let waiters = &self.inner.waiters;
        let stored = waiters.register(room.name(), id);
        // Transient first: the client hears nothing before the message is stored, or before a
        // persistent copy of it is confirmed (below), so a broker restart that loses this copy
        // loses no acknowledged message. A persistent message on one of many rooms' queues,
        // each mostly idle, costs RabbitMQ a disk sync of that queue's own index.
        let sent = match room.send_message_in_memory(request.message, props).await {
            Ok(sent) => sent,
            Err(e) => {
                let _ = waiters.forget(&id);
                return Err(self.refused(&room, e).await);
            }
        };
        let mut stored = stored;
        let store_wait = self.inner.config.store_wait;
        let mut waited = tokio::time::timeout(store_wait, &mut stored).await;
        let mut on_disk = false;
        if waited.is_err() && self.inner.broker.durable() && !waiters.in_doubt(&id) {
            // Not stored yet: from now on the message must survive a broker restart.
            self.keep_on_disk(&room, &sent).await?;
            on_disk = true;
        }
        if waited.is_err() && on_disk && self.store_answers_within(store_wait).await {
            // The store answers, so the message is not waiting for it: the room's consumer is
            // slow, the broker restarted and lost the transient copy (the persistent one is on
            // its way), or the queue that held the message was deleted (which the consumer
            // reports once it notices). Wait longer, so that such a message is not acknowledged.
            waited = tokio::time::timeout(2 * store_wait, &mut stored).await;
            if waited.is_err() {
                let _ = waiters.forget(&id);
                return Err(ChatError::Unavailable(format!(
                    "message {id} was not stored within {:?} although the store answers; it may \
                     be lost: retry with the same idempotency_key to send it exactly once",
                    3 * store_wait
                )));
            }
        }
        let in_doubt = match waited {
            // Another send with this key (and another text) may have been stored first.
            Ok(Ok(Ok(stored))) if keyed => {
                return same_message(stored, &sent.message).map(SendOutcome::Stored);
            }
            Ok(Ok(Ok(stored))) => return Ok(SendOutcome::Stored(stored)),
            Ok(Ok(Err(RoomGone))) => return Err(ChatError::RoomNotFound(room.name().clone())),
            _ => waiters.forget(&id),
        };
        if in_doubt {
            // The queue that held it was deleted: it may be gone, so it is not acknowledged.
            return Err(ChatError::Unavailable(format!(
                "message {id} was in room {}'s queue when the queue was deleted and is not \
                 stored; it may be lost: retry with the same idempotency_key to send it exactly \
                 once",
                room.name()
            )));
        }
        if self.inner.broker.durable() {
            // The store is down and the broker holds the message durably: it will be stored once
            // the store is back.
            if !on_disk {
                self.keep_on_disk(&room, &sent).await?;
            }
            Ok(SendOutcome::Accepted(sent))
        } else {
            // Only this process holds it: no acknowledgement before it is stored.
            Err(ChatError::Unavailable(format!(
                "message {id} was not stored within {store_wait:?}; it may still be stored: retry \
                 with the same idempotency_key to send it exactly once"
            )))
        }
    }

    /// Publishes a persistent copy of a message sent transient and not stored yet (the consumer
    /// stores whichever copy comes first, and recognises the other by its id). If the broker
    /// cannot take it, the send is not acknowledged: the transient copy may still be stored.
    async fn keep_on_disk(&self, room: &ChatRoom, sent: &ChatMessage) -> Result<(), ChatError> {
        let id = sent.mess_props.id;
        room.keep_on_disk(sent).await.map_err(|e| {
            let _ = self.inner.waiters.forget(&id);
            ChatError::Unavailable(format!(
                "message {id} is not stored yet and the broker could not keep a copy of it \
                 ({e}); it may still be stored: retry with the same idempotency_key to send it \
                 exactly once"
            ))
        })?;
        metrics::counter!(m::SENDS_KEPT_ON_DISK).increment(1);
        Ok(())
    }

    /// Why a publish was refused, for the client. A send the broker could not route to the
    /// room's queue is not accepted: if the room was deleted meanwhile it is not found, else its
    /// queue is missing (deleted behind the service), which the room's consumer declares again
    /// when the broker cancels it: a retry succeeds shortly.
    async fn refused(&self, room: &ChatRoom, error: RoomError) -> ChatError {
        if !matches!(
            error,
            RoomError::Broker(crate::broker::BrokerError::Unroutable(_))
        ) {
            return error.into();
        }
        match self.refresh(room).await {
            Err(gone @ ChatError::RoomNotFound(_)) => gone,
            _ => ChatError::Unavailable(format!(
                "room {}'s queue could not take the message; it is being declared again: retry \
                 shortly (with an idempotency_key to send it exactly once)",
                room.name()
            )),
        }
    }

    /// Whether the store answers a ping within `wait` (a store that takes longer is as good as
    /// down for a sender waiting on it).
    async fn store_answers_within(&self, wait: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.inner.store.ping()).await,
            Ok(Ok(()))
        )
    }

    /// The other member of a private room, checking that sender and recipient both belong.
    async fn private_recipient(
        &self,
        room: &ChatRoom,
        request: &SendRequest,
    ) -> Result<Alias, ChatError> {
        // The two members of a private room never change; only a room object loaded before
        // the room was re-created under the same name can be wrong, so check the store on "no".
        if !self.is_member(room, &request.from_alias).await? {
            if request.mode == SendMode::MemberOnly {
                return Err(ChatError::NotAMember {
                    room: room.name().clone(),
                    alias: request.from_alias.clone(),
                });
            }
            return Err(private_room_full(room));
        }
        let other = room
            .members()
            .into_iter()
            .find(|m| *m != request.from_alias)
            .unwrap_or_else(|| request.from_alias.clone());
        match &request.to_alias {
            Some(to) if *to != other => Err(private_room_full(room)),
            _ => Ok(other),
        }
    }
}

/// The stored message, if it carries `text`; else the key it was sent with was reused.
fn same_message(stored: ChatMessage, text: &str) -> Result<ChatMessage, ChatError> {
    if stored.message == text {
        Ok(stored)
    } else {
        Err(ChatError::IdempotencyKeyReused {
            stored: stored.message.chars().take(80).collect(),
        })
    }
}

/// A private room refusing a third alias.
fn private_room_full(room: &ChatRoom) -> ChatError {
    ChatError::PrivateRoomFull {
        room: room.name().clone(),
        members: room
            .members()
            .iter()
            .map(Alias::as_str)
            .collect::<Vec<_>>()
            .join(" and "),
    }
}
