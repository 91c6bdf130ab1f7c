//! `ChatService`: the use cases. It owns the [`RoomList`], runs one consumer task per room, and
//! answers the HTTP layer. Cheap to clone. The use cases are grouped by file: [`send`] (sending,
//! creating a room on its first send), [`rooms`] (creating, deleting, membership), [`history`]
//! (history, cursor pages, search), [`auth`] (registration and tokens).

mod auth;
mod error;
mod history;
mod rooms;
mod send;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::Auth;
pub use error::ChatError;
pub use history::{HistoryPage, MAX_SEARCH_RESULTS};

use crate::broker::Broker;
use crate::model::{Alias, ChatMessage, RoomName};
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
    /// Whether callers must present a bearer token (`serve`'s default; off with `--no-auth`).
    pub require_auth: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 1000,
            store_wait: Duration::from_secs(3),
            require_auth: false,
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
    /// Registered aliases and their tokens.
    auth: Auth,
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
                auth: Auth::new(store.clone()),
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

    /// Registration and token checks.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// Whether callers must present a bearer token.
    pub fn require_auth(&self) -> bool {
        self.inner.config.require_auth
    }

    /// Fires when the service shuts down: long-lived work outside the service (live sockets,
    /// which the HTTP server does not wait for once upgraded) stops on it.
    pub fn shutdown_signal(&self) -> CancellationToken {
        self.inner.shutdown.child_token()
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

/// "group" or "private", for messages.
fn kind(group_room: bool) -> &'static str {
    if group_room { "group" } else { "private" }
}
