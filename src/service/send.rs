//! Sending: the seed's `/send/` semantics, shared by the REST API.

use super::{ChatError, ChatService, SendOutcome, SendRequest, kind};
use crate::model::{
    Alias, MAX_IDEMPOTENCY_KEY_BYTES, MAX_MESSAGE_BYTES, MessageProperties, idempotent_id,
};
use crate::room::ChatRoom;

impl ChatService {
    /// Sends a message (creating the room on its first send) and answers once it is stored, or
    /// once the broker confirmed it if storing takes longer than `store_wait`.
    pub async fn send(&self, request: SendRequest) -> Result<SendOutcome, ChatError> {
        if request.message.is_empty() {
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
        let room = match self.inner.rooms.find(&request.room_name) {
            Some(room) => room,
            None => self.create_room_for(&request).await?,
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
            if !room.is_member(&request.from_alias) {
                self.check_alias_free(&request.from_alias)?;
                room.add_group_member(&request.from_alias).await?;
            }
            room.name().to_string()
        } else {
            self.private_recipient(&room, &request)?.to_string()
        };
        let mut props =
            MessageProperties::new_sent(room.name().clone(), request.from_alias.clone(), to_user);
        if let Some(key) = &request.idempotency_key {
            props.id = idempotent_id(room.name(), &request.from_alias, key);
        }
        let id = props.id;
        let stored = room.register_waiter(id);
        let sent = match room.send_message(request.message, props).await {
            Ok(sent) => sent,
            Err(e) => {
                room.forget_waiter(&id);
                return Err(e.into());
            }
        };
        let stored = tokio::time::timeout(self.inner.config.store_wait, stored).await;
        if let Ok(Ok(stored)) = stored {
            return Ok(SendOutcome::Stored(stored));
        }
        room.forget_waiter(&id);
        if self.inner.broker.durable() {
            // The broker holds it durably: it will be stored once the store can take it.
            Ok(SendOutcome::Accepted(sent))
        } else {
            // Only this process holds it: no acknowledgement before it is stored.
            Err(ChatError::Unavailable(format!(
                "message {id} was not stored within {:?}; it may still be stored: retry with \
                 the same idempotency_key to send it exactly once",
                self.inner.config.store_wait
            )))
        }
    }

    /// The other member of a private room, checking that sender and recipient both belong.
    fn private_recipient(
        &self,
        room: &ChatRoom,
        request: &SendRequest,
    ) -> Result<Alias, ChatError> {
        let members = room.members();
        let full = || ChatError::PrivateRoomFull {
            room: room.name().clone(),
            members: members
                .iter()
                .map(Alias::as_str)
                .collect::<Vec<_>>()
                .join(" and "),
        };
        if !members.contains(&request.from_alias) {
            return Err(full());
        }
        let other = members
            .iter()
            .find(|m| **m != request.from_alias)
            .cloned()
            .unwrap_or_else(|| request.from_alias.clone());
        match &request.to_alias {
            Some(to) if *to != other => Err(full()),
            _ => Ok(other),
        }
    }
}
