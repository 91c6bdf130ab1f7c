//! `ChatService`: the use cases, and the only way into the chat. The HTTP layer calls a use case
//! with the acting alias (`None` only in dev mode, for the seed's endpoints) and never holds a
//! room; the service checks who may do what, and keeps this instance's rooms in step with every
//! other instance's through the store (the registry) and the cluster events.
//!
//! The use cases are grouped by file: [`send`] (sending, creating a room on its first send),
//! [`rooms`] (creating, deleting, membership, listing), [`history`] (history, cursor pages,
//! search), [`live`] (following a room), [`auth`] (registration and tokens). Beside them:
//! [`registry`] loads rooms on first use and runs their consumers, [`events`] applies and
//! publishes cluster events, [`waiters`] holds the senders waiting for "stored", and [`access`]
//! says who may read and write a room.

mod access;
mod auth;
mod error;
mod events;
mod health;
mod history;
mod ids;
mod limits;
mod live;
mod outbox;
mod peers;
mod registry;
mod rooms;
mod send;
mod waiters;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use auth::Auth;
pub use error::ChatError;
pub use history::{HistoryPage, MAX_SEARCH_RESULTS};
pub use limits::{Limits, Rate};
pub use live::{Follow, FollowEnd};
pub use rooms::Creation;

use crate::broker::{Broker, BrokerError};
use crate::model::{Alias, ChatMessage, RoomName};
use crate::room::RoomList;
use crate::store::{Schema, Store, StoreError};

/// Name of the deployment's room list.
pub const ROOM_LIST_NAME: &str = "main";
/// Most messages one history request may ask for.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// The default of [`ServiceConfig::default_room`].
pub const DEFAULT_ROOM: &str = "general";
/// How long start-up waits for the first subscription to cluster events (and the catch-up after
/// it), and for an instance number, before serving anyway; sends made meanwhile may answer 202
/// instead of "stored", or 503.
/// Room consumers subscribing at once (the rest wait their turn, unless their room is in use).
const SUBSCRIBING_AT_ONCE: usize = 64;
const EVENTS_READY_WAIT: Duration = Duration::from_secs(10);
/// How long start-up waits for the store to answer.
const STORE_WAIT_AT_START: Duration = Duration::from_secs(20);

/// Messages all rooms' caches hold together by default: about 12 MiB of a service's memory (a
/// cached message takes some 500 bytes), whatever the number of rooms. At 50,000 the embedded
/// service under load over 10,000 rooms reached 145–156.5 MiB once the caches were full (rooms
/// bench, three 5-second rounds a step, glibc's malloc); at 25,000, 139–145 MiB, and 153–160
/// MiB under the longer load of five rounds a step; 132–135 MiB since histogram samples are
/// folded away and jemalloc allocates (the README's Speed section).
pub const DEFAULT_CACHE_TOTAL: usize = 25_000;

/// Tunables of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Messages kept in each room's cache.
    pub cache_capacity: usize,
    /// Messages kept in all rooms' caches together: past it, the caches of the rooms used
    /// longest ago are emptied (their messages stay in the store).
    pub cache_total: usize,
    /// How long a send waits for its message to be stored before answering "accepted" instead
    /// (or 503 on a broker that is not durable).
    pub store_wait: Duration,
    /// Whether callers must present a bearer token (`serve`'s default; off with `--no-auth`).
    pub require_auth: bool,
    /// The room of the seed's `/send/` and `/messages/` when they name none.
    pub default_room: RoomName,
    /// The quota of rooms owned and the rate limits. The default has none (benches and tests
    /// drive one alias hard); `mess-chat serve` applies [`Limits::SERVE`] unless told otherwise.
    pub limits: Limits,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 1000,
            cache_total: DEFAULT_CACHE_TOTAL,
            store_wait: Duration::from_secs(3),
            require_auth: false,
            default_room: RoomName::new(DEFAULT_ROOM).expect("a valid room name"),
            limits: Limits::NONE,
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
    /// The seed's way (the first send creates the room, a first send to a group room joins it),
    /// or the REST API's (the room must exist and the sender be a member).
    pub mode: SendMode,
}

/// How a send treats a room that does not exist, or a sender not in a group room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMode {
    /// The seed's `/send/`: create the room on its first send, join a group room on a first send.
    CreateOrJoin,
    /// The REST API: the room must exist and the sender must be a member.
    MemberOnly,
}

/// How far a send got before the service answered.
#[derive(Debug, Clone)]
pub enum SendOutcome {
    /// Confirmed by the broker and stored: the message has its sequence number.
    Stored(ChatMessage),
    /// Confirmed by the broker (so it will be stored), but not stored within `store_wait`.
    Accepted(ChatMessage),
}

/// Whether each back end answers, and which rooms cannot be stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    /// The broker answered a ping.
    pub broker: bool,
    /// The store answered a ping.
    pub store: bool,
    /// This instance holds a number to make message ids with (leased from the store): without one it
    /// cannot send.
    pub ids: bool,
    /// Rooms whose consumer on this instance has not been able to subscribe or to store for a
    /// while (their messages wait in their queues), with why.
    pub rooms_not_stored: Vec<(RoomName, String)>,
}

impl Readiness {
    /// Whether this instance can do all its work.
    pub fn ready(&self) -> bool {
        self.broker && self.store && self.ids && self.rooms_not_stored.is_empty()
    }
}

/// The chat service; clones share one state.
#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
}

/// What every clone of the service shares.
pub(crate) struct Inner {
    /// This process's id in the cluster: its own events come back to it and are skipped.
    instance: Uuid,
    /// The rooms this instance has loaded (a cache of the store's).
    rooms: RoomList,
    /// Registered aliases and their tokens.
    auth: Auth,
    broker: Arc<dyn Broker>,
    store: Arc<dyn Store>,
    config: ServiceConfig,
    /// Senders waiting for their message to be stored, on this instance.
    waiters: waiters::Waiters,
    /// Stored batches on their way to the other instances.
    outbox: outbox::Outbox,
    /// The other instances, and the changes waiting for them to apply.
    peers: peers::Peers,
    /// Rooms whose consumer cannot work right now.
    health: health::RoomHealth,
    /// Makes message ids with this instance's leased number.
    ids: ids::Ids,
    /// Fired once to stop every task.
    shutdown: CancellationToken,
    /// Each room's consumer (with a number telling one run from the next), to stop one alone.
    consumers: Mutex<HashMap<RoomName, Consumer>>,
    /// Numbers the consumer runs.
    consumer_runs: AtomicU64,
    /// Set once the first catch-up with the store has started every room's consumer: rooms
    /// whose consumer starts before then keep `/readyz` at 503 until they subscribe.
    started: std::sync::atomic::AtomicBool,
    /// Permits for room consumers to subscribe ([`SUBSCRIBING_AT_ONCE`] at a time).
    subscribing: Arc<tokio::sync::Semaphore>,
    /// One lock per room being loaded, so that concurrent first uses load it once.
    loading: Mutex<HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
    /// Every task (consumers, the events listener), to wait for them on shutdown.
    tasks: TaskTracker,
    /// The rate limiters of sends, room creations and registrations.
    rate_limits: limits::RateLimits,
}

impl ChatService {
    /// Starts the service: subscribes to cluster events, catches up with the store (starting a
    /// consumer for every room of the stored list) and returns. Rooms are loaded on first use.
    pub async fn start(
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        config: ServiceConfig,
    ) -> Result<Self, ChatError> {
        check_schema(store.as_ref()).await?;
        check_queue_type(broker.as_ref(), store.as_ref()).await?;
        let rooms = RoomList::new(
            ROOM_LIST_NAME,
            broker.clone(),
            store.clone(),
            config.cache_capacity,
        );
        let (outbox, parcels) = outbox::outbox();
        let service = Self {
            inner: Arc::new(Inner {
                instance: Uuid::new_v4(),
                rooms,
                auth: Auth::new(store.clone()),
                rate_limits: limits::RateLimits::new(&config.limits),
                broker,
                store,
                config,
                waiters: waiters::Waiters::default(),
                outbox,
                peers: peers::Peers::default(),
                health: health::RoomHealth::default(),
                ids: ids::Ids::default(),
                shutdown: CancellationToken::new(),
                consumers: Mutex::new(HashMap::new()),
                consumer_runs: AtomicU64::new(0),
                started: std::sync::atomic::AtomicBool::new(false),
                subscribing: Arc::new(tokio::sync::Semaphore::new(SUBSCRIBING_AT_ONCE)),
                loading: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
            }),
        };
        let (ready, listening) = tokio::sync::oneshot::channel();
        service.in_background(|s, stop| s.listen(stop, ready));
        service.in_background(ChatService::keep_alive);
        service.in_background(ChatService::keep_limits_small);
        service.in_background(ChatService::sweep_topology);
        service.in_background(ChatService::keep_caches_small);
        service
            .in_background(|_, stop| crate::metrics::keep_up(crate::metrics::UPKEEP_EVERY, stop));
        service.in_background(|s, stop| s.publish_stored(parcels, stop));
        let (leased, leasing) = tokio::sync::oneshot::channel();
        service.in_background(|s, stop| s.keep_leasing(stop, leased));
        if tokio::time::timeout(EVENTS_READY_WAIT, leasing)
            .await
            .is_err()
        {
            tracing::warn!("no instance number for message ids yet; sends answer 503 until then");
        }
        if tokio::time::timeout(EVENTS_READY_WAIT, listening)
            .await
            .is_err()
        {
            tracing::warn!("cluster events not subscribed yet; serving anyway");
        }
        tracing::info!(instance = %service.inner.instance, "service started");
        Ok(service)
    }

    /// Runs `task` beside the service until it shuts down (the task is given the service and
    /// the token that fires then); shutting down waits for it.
    fn in_background<F, Fut>(&self, task: F)
    where
        F: FnOnce(ChatService, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let running = task(self.clone(), self.inner.shutdown.child_token());
        self.inner.tasks.spawn(running);
    }

    /// Registration and token checks.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// Whether callers must present a bearer token.
    pub fn require_auth(&self) -> bool {
        self.inner.config.require_auth
    }

    /// The room of the seed's endpoints when they name none.
    pub fn default_room(&self) -> &RoomName {
        &self.inner.config.default_room
    }

    /// This instance's id in the cluster.
    pub fn instance(&self) -> Uuid {
        self.inner.instance
    }

    /// How many other instances this one hears from.
    pub fn peers(&self) -> usize {
        self.inner.peers.alive()
    }

    /// How many rooms this instance numbers and stores (it holds their active consumer).
    pub fn rooms_numbering(&self) -> usize {
        self.inner.health.numbering_count()
    }

    /// Fires when the service shuts down: long-lived work outside the service (live sockets,
    /// which the HTTP server does not wait for once upgraded) stops on it.
    pub fn shutdown_signal(&self) -> CancellationToken {
        self.inner.shutdown.child_token()
    }

    /// The rooms this instance has loaded.
    pub fn rooms(&self) -> &RoomList {
        &self.inner.rooms
    }

    /// Pings the broker and the store (each within two seconds), and lists the rooms this
    /// instance has not been able to store for a while.
    pub async fn readiness(&self) -> Readiness {
        let limit = Duration::from_secs(2);
        let (broker, store) = tokio::join!(
            tokio::time::timeout(limit, self.inner.broker.ping()),
            tokio::time::timeout(limit, self.inner.store.ping()),
        );
        Readiness {
            broker: matches!(broker, Ok(Ok(()))),
            store: matches!(store, Ok(Ok(()))),
            ids: self.inner.ids.usable(),
            rooms_not_stored: self.inner.health.stalled(health::STALL_GRACE),
        }
    }

    /// Stops every consumer and waits until each finished the delivery it was handling.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// A room's consumer on this instance, as the registry knows it.
struct Consumer {
    /// Tells one run from the next.
    run: u64,
    /// Stops it.
    stop: CancellationToken,
    /// Hurries its subscription (the room is in use).
    urgent: Arc<tokio::sync::Notify>,
}

/// Refuses a store holding an earlier version's data (it says how to convert it); retries a
/// store that does not answer for a while.
async fn check_schema(store: &dyn Store) -> Result<(), ChatError> {
    let deadline = tokio::time::Instant::now() + STORE_WAIT_AT_START;
    loop {
        match store.schema().await {
            Ok(Schema::Current | Schema::Empty) => return Ok(()),
            Ok(Schema::Legacy) => {
                return Err(ChatError::Legacy(
                    "the store holds messages of an earlier mess-chat (UUID ids, named types): \
                     stop every instance and run `mess-chat migrate` with the same back-end \
                     settings (the broker's URL too), then start again"
                        .into(),
                ));
            }
            Err(StoreError::Legacy(why)) => return Err(ChatError::Legacy(why)),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot read the store's layout version yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Refuses to start when the rooms' queues on the broker are of the other queue type (classic or
/// quorum) than this instance declares: declaring one stored room's queue again is the broker's
/// own check, and every queue of a deployment was declared with one type. A back end that does
/// not answer yet skips the check; each room's consumer declares its queue when it starts, and a
/// queue of the other type then keeps that room from being served (logged as an error, counted
/// by `/readyz`, answered 503 `misconfigured`).
async fn check_queue_type(broker: &dyn Broker, store: &dyn Store) -> Result<(), ChatError> {
    let Ok(Some(list)) = store.load_room_list(ROOM_LIST_NAME).await else {
        return Ok(());
    };
    let Some(first) = list.rooms.first() else {
        return Ok(());
    };
    // The queue alone: a room's queue is declared alike whatever the room's kind.
    match broker.declare_room(first, false).await {
        Err(e @ BrokerError::QueueType { .. }) => Err(ChatError::Misconfigured(format!(
            "{e}: start every instance of a deployment with the queue type its queues have \
             (the README's Operations section says how to change it)"
        ))),
        _ => Ok(()),
    }
}

/// Does `work` every `period` (the first time at once) until `stop` fires.
async fn every(period: Duration, stop: CancellationToken, mut work: impl FnMut()) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => work(),
        }
    }
}

/// "group" or "private", for messages.
fn kind(group_room: bool) -> &'static str {
    if group_room { "group" } else { "private" }
}
