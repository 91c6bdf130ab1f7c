//! Rooms: creating (explicitly, or by a first send), deleting, membership and listing. Each
//! change is decided by one atomic write in the store, made on the broker after it (undone in the
//! store if the broker refuses), and announced to every instance.

use super::{ChatError, ChatService, SendRequest, kind};
use crate::model::{Alias, ClusterEvent, RoomMeta, RoomName, now};
use crate::room::{ChatRoom, declare_topology};
use crate::store::Created;

/// What [`ChatService::create_room`] did.
#[derive(Debug, Clone)]
pub enum Creation {
    /// The room is new, as asked.
    Created(RoomMeta),
    /// The same room existed already (a retry, or the same creation on another instance).
    Existing(RoomMeta),
}

/// What the creation itself made.
enum Made {
    /// A new room, taken by this instance.
    New(ChatRoom),
    /// A room of that name was there already.
    Existing(RoomMeta),
}

impl ChatService {
    /// Creates the room named by a first send. If another send (on any instance) created it
    /// meanwhile, that room is the one used.
    pub(super) async fn create_room_for(
        &self,
        request: &SendRequest,
    ) -> Result<ChatRoom, ChatError> {
        // A new room is a group room unless a private one is asked for (`group_room=false`).
        let group_room = request.group_room.unwrap_or(true);
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
        match self
            .create(&request.room_name, group_room, &request.from_alias, other)
            .await?
        {
            Made::New(room) => Ok(room),
            Made::Existing(_) => self.room(&request.room_name).await,
        }
    }

    /// Creates a room owned by `owner` (a private room with `other`, a group room without). If
    /// a room of that name exists already, it counts as this creation when it is the same room
    /// (same kind and owner, and for a private room the same other member), else `Conflict`.
    pub async fn create_room(
        &self,
        owner: &Alias,
        name: &RoomName,
        group_room: bool,
        other: Option<Alias>,
    ) -> Result<Creation, ChatError> {
        match self.create(name, group_room, owner, other.clone()).await? {
            Made::New(room) => Ok(Creation::Created(room.meta())),
            Made::Existing(meta) => {
                let mut asked: Vec<&Alias> = [Some(owner), other.as_ref()]
                    .into_iter()
                    .flatten()
                    .collect();
                asked.sort();
                let same = meta.group_room == group_room
                    && meta.owner_alias == *owner
                    && (group_room || meta.members.iter().eq(asked.iter().copied()));
                if same {
                    Ok(Creation::Existing(meta))
                } else if meta.group_room != group_room {
                    Err(ChatError::KindConflict {
                        room: name.clone(),
                        actual: kind(meta.group_room),
                        asked: kind(group_room),
                    })
                } else {
                    Err(ChatError::Conflict(format!(
                        "room {name} already exists, owned by {}",
                        meta.owner_alias
                    )))
                }
            }
        }
    }

    /// The creation itself: one atomic insert of the metadata decides it (of two creations of
    /// one name, on any instances, one wins); then the broker topology and the stored room list.
    /// If either of those fails, what was done is undone and the caller hears `Unavailable`.
    async fn create(
        &self,
        name: &RoomName,
        group_room: bool,
        owner: &Alias,
        other: Option<Alias>,
    ) -> Result<Made, ChatError> {
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
        self.check_room_creation_rate(owner)?;
        if let Err(e) = self.check_rooms_owned(owner).await {
            // At its quota, an alias may still repeat a creation that happened.
            return match self.inner.store.load_room(name).await? {
                Some(existing) => Ok(Made::Existing(existing)),
                None => Err(e),
            };
        }
        let created = now();
        let mut members: Vec<Alias> = [Some(owner.clone()), other].into_iter().flatten().collect();
        members.sort();
        let meta = RoomMeta {
            name: name.clone(),
            group_room,
            owner_alias: owner.clone(),
            members,
            create_time: created,
            modify_time: created,
            version: 0,
        };
        let store = &self.inner.store;
        let existing = match store.create_room(&meta).await? {
            Created::New => None,
            Created::Existing(existing) => Some(existing),
        };
        if let Some(existing) = existing {
            return Ok(Made::Existing(existing));
        }
        // Known here from now on: a member another instance adds meanwhile (its event) is
        // applied to this copy, not lost to it.
        let room = self.adopt(meta.clone());
        let broker = self.inner.broker.as_ref();
        let ready = async {
            declare_topology(broker, &meta).await?;
            self.inner.rooms.register(name).await?;
            Ok::<_, ChatError>(())
        };
        if let Err(e) = ready.await {
            tracing::warn!(room = %name, error = %e, "room creation failed; undoing it");
            self.forget_room(name);
            // A clash means the queue or exchange is someone else's: leave it alone.
            if !matches!(e, ChatError::NameClash(_)) {
                let _ = broker.delete_room(name, group_room).await;
            }
            if let Err(undo) = store.delete_room(name).await {
                tracing::error!(room = %name, error = %undo,
                    "could not undo a failed room creation: the room stays in the store");
            }
            return Err(e);
        }
        self.start_consumer(name, Some(meta));
        self.announce(ClusterEvent::RoomCreated { room: name.clone() })
            .await;
        tracing::info!(room = %name, group_room, "room created");
        Ok(Made::New(room))
    }

    /// Deletes a room (its owner only): its metadata and history, then its entry in the room
    /// list, its consumers, live feeds and waiting senders on every instance, then its queue and
    /// exchange.
    pub async fn delete_room(&self, actor: &Alias, name: &RoomName) -> Result<(), ChatError> {
        let room = self.room(name).await?;
        if room.owner_alias() != *actor {
            return Err(ChatError::Forbidden(format!(
                "only the owner of {name} may delete it"
            )));
        }
        // The broker must be there to take the room's queue away: refused now, nothing happened.
        self.inner.broker.ping().await?;
        // The deletion is decided here: from now on the room does not exist.
        self.inner.store.delete_room(name).await?;
        if let Err(e) = self.inner.rooms.unregister(name).await {
            tracing::warn!(room = %name, error = %e, "deleted room left in the stored room list");
        }
        self.announce_everywhere(ClusterEvent::RoomDeleted { room: name.clone() })
            .await;
        if let Err(e) = self.inner.broker.delete_room(name, room.group_room()).await {
            tracing::warn!(room = %name, error = %e, "deleted room's queue left on the broker");
        }
        tracing::info!(room = %name, "room deleted");
        Ok(())
    }

    /// Registers an alias and returns its token; `client` is the address the request came from
    /// (registrations are rate-limited per address; `None`: not known, not limited).
    pub async fn register(
        &self,
        alias: &Alias,
        client: Option<std::net::IpAddr>,
    ) -> Result<String, ChatError> {
        self.check_registration_rate(client)?;
        self.inner.auth.register(alias).await
    }

    /// Adds `alias` to a group room (`add_group_member`): anyone may join; a member may add
    /// someone else. Returns the room's metadata after the change.
    pub async fn add_member(
        &self,
        actor: &Alias,
        room: &RoomName,
        alias: &Alias,
    ) -> Result<RoomMeta, ChatError> {
        let room = self.room(room).await?;
        if actor != alias && !self.is_member(&room, actor).await? {
            return Err(ChatError::NotAMember {
                room: room.name().clone(),
                alias: actor.clone(),
            });
        }
        self.join(&room, alias).await?;
        Ok(room.meta())
    }

    /// Removes `alias` from a group room (`remove_group_member`): a member may leave, the owner
    /// may remove anyone else. The alias's live feeds of the room end, on every instance.
    pub async fn remove_member(
        &self,
        actor: &Alias,
        room: &RoomName,
        alias: &Alias,
    ) -> Result<RoomMeta, ChatError> {
        let room = self.room(room).await?;
        if actor != alias && room.owner_alias() != *actor {
            return Err(ChatError::Forbidden(format!(
                "only {alias} or the owner of {} may remove {alias}",
                room.name()
            )));
        }
        room.remove_group_member(alias).await?;
        self.announce_everywhere(ClusterEvent::RoomChanged { meta: room.meta() })
            .await;
        Ok(room.meta())
    }

    /// Adds `alias` to a group room and tells every instance.
    pub(super) async fn join(&self, room: &ChatRoom, alias: &Alias) -> Result<(), ChatError> {
        if room.add_group_member(alias).await? {
            self.announce_everywhere(ClusterEvent::RoomChanged { meta: room.meta() })
                .await;
        }
        Ok(())
    }

    /// The metadata of every room `actor` is a member of, in name order.
    pub async fn rooms_of(&self, actor: &Alias) -> Result<Vec<RoomMeta>, ChatError> {
        let mut metas = Vec::new();
        for name in self.inner.store.rooms_of(actor).await? {
            let meta = match self.inner.rooms.find(&name) {
                // A "no" from this instance's copy is checked against the store (the change
                // that made `actor` a member may not have reached this copy yet).
                Some(room) => match self.is_member(&room, actor).await {
                    Ok(_) => Some(room.meta()),
                    Err(ChatError::RoomNotFound(_)) => None,
                    Err(e) => return Err(e),
                },
                None => self.inner.store.load_room(&name).await?,
            };
            metas.extend(meta.filter(|m| m.members.contains(actor)));
        }
        Ok(metas)
    }

    /// A room's metadata, for one of its members.
    pub async fn room_meta(&self, actor: &Alias, name: &RoomName) -> Result<RoomMeta, ChatError> {
        let room = self.room(name).await?;
        self.may_read(Some(actor), &room).await?;
        Ok(room.meta())
    }
}
