//! Rooms: creating (explicitly, or by a first send), deleting, membership, and the one namespace
//! that rooms and aliases share.

use super::{ChatError, ChatService, SendRequest};
use crate::model::{Alias, RoomName};
use crate::room::ChatRoom;

impl ChatService {
    /// Creates the room named by a first send (it may have been created meanwhile).
    pub(super) async fn create_room_for(
        &self,
        request: &SendRequest,
    ) -> Result<ChatRoom, ChatError> {
        let group_room = request.group_room.unwrap_or(false);
        let other = if group_room {
            None
        } else {
            Some(request.to_alias.clone().ok_or_else(|| {
                ChatError::BadRequest(format!(
                    "to_alias is required to create the private room {} \
                     (or pass group_room=true for a group room)",
                    request.room_name
                ))
            })?)
        };
        let created = self
            .create_room(&request.room_name, group_room, &request.from_alias, other)
            .await;
        match created {
            Err(ChatError::Conflict(_)) => self.room(&request.room_name),
            other => other,
        }
    }

    /// Creates a room owned by `owner` (a private room with `other`, a group room without):
    /// declared on the broker, saved, listed, consumed. `Conflict` if it exists.
    pub async fn create_room(
        &self,
        name: &RoomName,
        group_room: bool,
        owner: &Alias,
        other: Option<Alias>,
    ) -> Result<ChatRoom, ChatError> {
        match (&other, group_room) {
            (None, false) => {
                return Err(ChatError::BadRequest(format!(
                    "the private room {name} needs a second member"
                )));
            }
            (Some(_), true) => {
                return Err(ChatError::BadRequest(
                    "a group room is created with its owner only; members join later".into(),
                ));
            }
            (Some(o), false) if o == owner => {
                return Err(ChatError::BadRequest(
                    "a private room needs two different aliases".into(),
                ));
            }
            _ => {}
        }
        let _one_at_a_time = self.inner.creating.lock().await;
        if self.inner.rooms.find(name).is_some() {
            return Err(ChatError::Conflict(format!("room {name} already exists")));
        }
        self.check_alias_free(owner)?;
        if let Some(o) = &other {
            self.check_alias_free(o)?;
        }
        self.check_room_name_free(name, [Some(owner), other.as_ref()].into_iter().flatten())?;

        let room = ChatRoom::new(
            name.clone(),
            group_room,
            owner.clone(),
            other,
            self.inner.broker.clone(),
            self.inner.store.clone(),
            self.inner.config.cache_capacity,
        );
        // A room saved before a crash, but not yet in the saved list, is taken back as it was.
        let restored = room.restore().await?;
        room.declare().await?;
        if !restored {
            room.persist().await?;
        }
        self.inner.rooms.add(room.clone());
        self.inner.rooms.persist_meta().await?;
        self.spawn_consumer(room.clone());
        tracing::info!(room = %name, group_room = room.group_room(), "room created");
        Ok(room)
    }

    /// Registers an alias (not a room's name) and returns its token.
    pub async fn register(&self, alias: &Alias) -> Result<String, ChatError> {
        self.check_alias_free(alias)?;
        self.inner.auth.register(alias).await
    }

    /// Adds `alias` to a group room (binding its inbox queue); `false` if it was a member.
    pub async fn add_member(&self, room: &RoomName, alias: &Alias) -> Result<bool, ChatError> {
        let room = self.room(room)?;
        self.check_alias_free(alias)?;
        Ok(room.add_group_member(alias).await?)
    }

    /// An alias may not be a room's name: both name queues on the broker.
    pub(super) fn check_alias_free(&self, alias: &Alias) -> Result<(), ChatError> {
        let as_room = RoomName::new(alias.as_str())?;
        if self.inner.rooms.find(&as_room).is_some() {
            return Err(ChatError::NameTaken(format!(
                "{alias} is the name of a room; rooms and aliases share one namespace"
            )));
        }
        Ok(())
    }

    /// A new room's name may not be an alias in use (nor one of `involved`).
    fn check_room_name_free<'a>(
        &self,
        name: &RoomName,
        mut involved: impl Iterator<Item = &'a Alias>,
    ) -> Result<(), ChatError> {
        let taken = involved.any(|a| a.as_str() == name.as_str())
            || self
                .inner
                .rooms
                .rooms()
                .iter()
                .any(|room| room.members().iter().any(|m| m.as_str() == name.as_str()));
        if taken {
            return Err(ChatError::NameTaken(format!(
                "{name} is an alias; rooms and aliases share one namespace"
            )));
        }
        Ok(())
    }

    /// Deletes a room: stops its consumer, removes its queue and exchange, its collection and
    /// its entry in the room list.
    pub async fn delete_room(&self, name: &RoomName) -> Result<(), ChatError> {
        let room = self.room(name)?;
        let token = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(token) = token {
            token.cancel();
        }
        self.inner
            .broker
            .delete_room(name, room.group_room())
            .await?;
        self.inner.store.delete_room(name).await?;
        self.inner.rooms.remove(name);
        self.inner.rooms.persist_meta().await?;
        Ok(())
    }
}
