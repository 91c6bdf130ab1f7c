//! `ChatService`: the use cases. It owns the [`RoomList`], creates rooms on their first send, runs
//! one consumer task per room, and answers the HTTP layer. Cheap to clone.

mod error;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ChatError;

use crate::broker::Broker;
use crate::model::{
    Alias, ChatMessage, MAX_IDEMPOTENCY_KEY_BYTES, MAX_MESSAGE_BYTES, MessageProperties, RoomName,
    idempotent_id,
};
use crate::room::{ChatRoom, RoomList};
use crate::store::Store;

/// Name of the deployment's room list.
pub const ROOM_LIST_NAME: &str = "main";
/// Most messages one history request may ask for.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// Tunables of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Messages kept in each room's cache.
    pub cache_capacity: usize,
    /// How long a send waits for its message to be stored before answering "accepted" instead
    /// (or 503 on a broker that is not durable).
    pub store_wait: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 1000,
            store_wait: Duration::from_secs(3),
        }
    }
}

/// A send as the seed's `/send/` describes it, with names already validated.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The room; created by this send if it does not exist.
    pub room_name: RoomName,
    /// The text.
    pub message: String,
    /// The sender.
    pub from_alias: Alias,
    /// The other member of a private room (required to create one); ignored by group rooms.
    pub to_alias: Option<Alias>,
    /// The kind the sender expects; `None` means "whatever the room is" (private if new).
    pub group_room: Option<bool>,
    /// Client key making retries safe: sends with the same room, sender and key are one message.
    pub idempotency_key: Option<String>,
}

/// How far a send got before the service answered.
#[derive(Debug, Clone)]
pub enum SendOutcome {
    /// Confirmed by the broker and stored: the message has its sequence number.
    Stored(ChatMessage),
    /// Confirmed by the broker (so it will be stored), but not stored within `store_wait`.
    Accepted(ChatMessage),
}

/// Whether each back end answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    /// The broker answered a ping.
    pub broker: bool,
    /// The store answered a ping.
    pub store: bool,
}

/// The chat service; clones share one state.
#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
}

struct Inner {
    rooms: RoomList,
    broker: Arc<dyn Broker>,
    store: Arc<dyn Store>,
    config: ServiceConfig,
    /// Serialises room creation, so two first sends to one room create it once.
    creating: tokio::sync::Mutex<()>,
    /// Fired once to stop every consumer.
    shutdown: CancellationToken,
    /// Each room's consumer, to stop one room alone.
    consumers: Mutex<HashMap<RoomName, CancellationToken>>,
    /// Every consumer task, to wait for them on shutdown.
    tasks: TaskTracker,
}

impl ChatService {
    /// Restores the room list from the store and starts every room's consumer.
    pub async fn start(
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        config: ServiceConfig,
    ) -> Result<Self, ChatError> {
        let rooms = RoomList::new(
            ROOM_LIST_NAME,
            broker.clone(),
            store.clone(),
            config.cache_capacity,
        );
        rooms.restore().await?;
        let service = Self {
            inner: Arc::new(Inner {
                rooms,
                broker,
                store,
                config,
                creating: tokio::sync::Mutex::new(()),
                shutdown: CancellationToken::new(),
                consumers: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
            }),
        };
        for room in service.inner.rooms.rooms() {
            service.spawn_consumer(room);
        }
        tracing::info!(rooms = service.inner.rooms.rooms().len(), "service started");
        Ok(service)
    }

    /// The room list.
    pub fn rooms(&self) -> &RoomList {
        &self.inner.rooms
    }

    /// The room with this name, or `RoomNotFound`.
    pub fn room(&self, name: &RoomName) -> Result<ChatRoom, ChatError> {
        self.inner
            .rooms
            .find(name)
            .ok_or_else(|| ChatError::RoomNotFound(name.clone()))
    }

    fn spawn_consumer(&self, room: ChatRoom) {
        let token = self.inner.shutdown.child_token();
        self.inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.name().clone(), token.clone());
        self.inner
            .tasks
            .spawn(async move { room.retrieve_messages(token).await });
    }

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
            None => self.create_room(&request).await?,
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

    /// Creates the room named by a first send: declared on the broker, saved, listed, consumed.
    async fn create_room(&self, request: &SendRequest) -> Result<ChatRoom, ChatError> {
        let _one_at_a_time = self.inner.creating.lock().await;
        if let Some(room) = self.inner.rooms.find(&request.room_name) {
            return Ok(room);
        }
        let name = &request.room_name;
        let group_room = request.group_room.unwrap_or(false);
        let other = if group_room {
            None
        } else {
            let to = request.to_alias.clone().ok_or_else(|| {
                ChatError::BadRequest(format!(
                    "to_alias is required to create the private room {name} \
                     (or pass group_room=true for a group room)"
                ))
            })?;
            if to == request.from_alias {
                return Err(ChatError::BadRequest(
                    "a private room needs two different aliases".into(),
                ));
            }
            self.check_alias_free(&to)?;
            Some(to)
        };
        self.check_alias_free(&request.from_alias)?;
        self.check_room_name_free(name, request)?;

        let room = ChatRoom::new(
            name.clone(),
            group_room,
            request.from_alias.clone(),
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

    /// An alias may not be a room's name: both name queues on the broker.
    fn check_alias_free(&self, alias: &Alias) -> Result<(), ChatError> {
        let as_room = RoomName::new(alias.as_str())?;
        if self.inner.rooms.find(&as_room).is_some() {
            return Err(ChatError::NameTaken(format!(
                "{alias} is the name of a room; rooms and aliases share one namespace"
            )));
        }
        Ok(())
    }

    /// A new room's name may not be an alias in use (nor the name of an alias in this request).
    fn check_room_name_free(
        &self,
        name: &RoomName,
        request: &SendRequest,
    ) -> Result<(), ChatError> {
        let taken = request.from_alias.as_str() == name.as_str()
            || request
                .to_alias
                .as_ref()
                .is_some_and(|a| a.as_str() == name.as_str())
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

    /// The room's newest `limit` messages, oldest first: from the cache, and from the store for
    /// whatever the cache no longer holds.
    pub async fn history(
        &self,
        name: &RoomName,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, ChatError> {
        if limit == 0 || limit > MAX_HISTORY_LIMIT {
            return Err(ChatError::BadRequest(format!(
                "limit must be between 1 and {MAX_HISTORY_LIMIT}"
            )));
        }
        let room = self.room(name)?;
        let mut cached = room.cached();
        if cached.len() >= limit {
            return Ok(cached.split_off(cached.len() - limit));
        }
        let oldest = cached
            .first()
            .and_then(|m| m.mess_props.sequence_number)
            .unwrap_or(room.last_sequence() + 1);
        if oldest <= 1 {
            return Ok(cached);
        }
        let mut older = room.messages_before(oldest, limit - cached.len()).await?;
        older.extend(cached);
        Ok(older)
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

    /// Pings the broker and the store (each within two seconds).
    pub async fn readiness(&self) -> Readiness {
        let limit = Duration::from_secs(2);
        let (broker, store) = tokio::join!(
            tokio::time::timeout(limit, self.inner.broker.ping()),
            tokio::time::timeout(limit, self.inner.store.ping()),
        );
        Readiness {
            broker: matches!(broker, Ok(Ok(()))),
            store: matches!(store, Ok(Ok(()))),
        }
    }

    /// Stops every consumer and waits until each finished the delivery it was handling.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // Rooms' metadata (modify times) changes with every message; save it once, here.
        if let Err(e) = self.inner.rooms.persist().await {
            tracing::warn!(error = %e, "could not save room metadata at shutdown");
        }
    }
}

fn kind(group_room: bool) -> &'static str {
    if group_room { "group" } else { "private" }
}
