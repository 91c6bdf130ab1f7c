//! The store is the registry: rooms live there, and this instance loads a room on first use
//! (send, history, search, members, live) and keeps it in step through cluster events. Every
//! room of the stored list gets a consumer on every instance; the broker makes one of them active.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::error::ChatError;
use super::events::Announcer;
use super::{ChatService, Consumer};
use crate::model::{Alias, RoomMeta, RoomName};
use crate::room::retrieve::{RoomConsumer, retrieve_messages};
use crate::room::{ChatRoom, declare_topology};

/// Rooms whose topology the sweep declares at once (it runs beside the service's work).
const SWEEPING_AT_ONCE: usize = 4;
/// How often all rooms' caches are held to their total.
const CACHE_CHECK: Duration = Duration::from_secs(1);
/// How long the sweep waits for the consumers started with the instance to subscribe.
const SWEEP_WAIT: Duration = Duration::from_secs(600);

impl ChatService {
    /// The room with this name: the loaded one, or loaded now from the store (metadata and newest
    /// messages). `RoomNotFound` if the store has no such room. Concurrent first uses of one room
    /// wait for one load.
    pub async fn room(&self, name: &RoomName) -> Result<ChatRoom, ChatError> {
        if let Some(room) = self.inner.rooms.find(name) {
            return Ok(room);
        }
        let loading = {
            let mut loading = self.inner.loading.lock().unwrap_or_else(|e| e.into_inner());
            loading.entry(name.clone()).or_default().clone()
        };
        let loaded = async {
            let _one_load = loading.lock().await;
            if let Some(room) = self.inner.rooms.find(name) {
                return Ok(room);
            }
            let room = ChatRoom::load(
                name,
                self.inner.broker.clone(),
                self.inner.store.clone(),
                self.inner.config.cache_capacity,
            )
            .await?
            .ok_or_else(|| ChatError::RoomNotFound(name.clone()))?;
            let room = self.inner.rooms.add_or_get(room);
            // Events of this room that arrived while it was loading were not applied to it.
            self.catch_up(&room).await;
            self.ensure_consumer(name);
            self.hurry_consumer(name);
            Ok(room)
        }
        .await;
        // The last one out removes the room's lock (a loaded room is found without it).
        let mut locks = self.inner.loading.lock().unwrap_or_else(|e| e.into_inner());
        if locks
            .get(name)
            .is_some_and(|lock| Arc::strong_count(lock) <= 2)
        {
            locks.remove(name);
        }
        loaded
    }

    /// Whether `alias` is a member of `room`. A "no" from this instance's copy is checked against
    /// the store (a member added on another instance is a member here at once).
    pub(super) async fn is_member(
        &self,
        room: &ChatRoom,
        alias: &Alias,
    ) -> Result<bool, ChatError> {
        if room.is_member(alias) {
            return Ok(true);
        }
        self.refresh(room).await?;
        Ok(room.is_member(alias))
    }

    /// Reloads a room's metadata from the store.
    pub(super) async fn refresh(&self, room: &ChatRoom) -> Result<(), ChatError> {
        match self.inner.store.load_room(room.name()).await? {
            Some(meta) => {
                room.set_meta(meta);
                Ok(())
            }
            None => {
                self.forget_room(room.name());
                Err(ChatError::RoomNotFound(room.name().clone()))
            }
        }
    }

    /// Starts the room's consumer on this instance, unless it runs already.
    pub(super) fn ensure_consumer(&self, name: &RoomName) {
        self.start_consumer(name, None);
    }

    /// Takes a room this instance has just stored without reading it back (an empty cache);
    /// its consumer is started once its topology is declared ([`Self::start_consumer`] with
    /// the creation's metadata).
    pub(super) fn adopt(&self, meta: RoomMeta) -> ChatRoom {
        let room = ChatRoom::from_meta(
            meta,
            self.inner.broker.clone(),
            self.inner.store.clone(),
            self.inner.config.cache_capacity,
        );
        self.inner.rooms.add_or_get(room)
    }

    /// The room is in use: its consumer, if still waiting to subscribe, goes first.
    fn hurry_consumer(&self, name: &RoomName) {
        let consumers = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(consumer) = consumers.get(name) {
            consumer.urgent.notify_one();
        }
    }

    pub(super) fn start_consumer(&self, name: &RoomName, created: Option<RoomMeta>) {
        let inner = &self.inner;
        let token = inner.shutdown.child_token();
        let run = inner.consumer_runs.fetch_add(1, Ordering::Relaxed);
        let urgent = Arc::new(tokio::sync::Notify::new());
        {
            let mut consumers = inner.consumers.lock().unwrap_or_else(|e| e.into_inner());
            if consumers.contains_key(name) || inner.shutdown.is_cancelled() {
                return;
            }
            let consumer = Consumer {
                run,
                stop: token.clone(),
                urgent: urgent.clone(),
            };
            consumers.insert(name.clone(), consumer);
        }
        let at_start = !inner.started.load(Ordering::Relaxed);
        inner.health.starting(name, at_start);
        let consumer = RoomConsumer {
            room: name.clone(),
            broker: inner.broker.clone(),
            store: inner.store.clone(),
            announce: Announcer::new(inner),
            created: std::sync::Mutex::new(created),
            subscribing: inner.subscribing.clone(),
            urgent,
            at_start: at_start.into(),
        };
        let service = self.clone();
        let name = name.clone();
        inner.tasks.spawn(async move {
            retrieve_messages(consumer, token).await;
            // Ended by itself (the room was deleted) or stopped: forget this run, not a later one.
            let mut consumers = service
                .inner
                .consumers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if consumers.get(&name).is_some_and(|c| c.run == run) {
                consumers.remove(&name);
            }
        });
    }

    /// Keeps all rooms' caches within [`super::ServiceConfig::cache_total`] messages, checking
    /// every [`CACHE_CHECK`], until `shutdown`.
    pub(super) async fn keep_caches_small(self, shutdown: CancellationToken) {
        super::every(CACHE_CHECK, shutdown, || {
            let cached = self.inner.rooms.trim_caches(self.inner.config.cache_total);
            metrics::gauge!(crate::metrics::CACHED_MESSAGES).set(cached as f64);
        })
        .await;
    }

    /// The topology sweep: once every consumer started with the instance has subscribed (each
    /// declared only its room's queue), declares every listed room's whole topology again, a
    /// few rooms at a time: an exchange or a member's binding deleted behind the service, or
    /// made by an earlier version's layout, is back within the sweep.
    pub(super) async fn sweep_topology(self, shutdown: CancellationToken) {
        let deadline = tokio::time::Instant::now() + SWEEP_WAIT;
        while !self.inner.started.load(Ordering::Relaxed) || self.inner.health.starting_count() > 0
        {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!("rooms still starting; sweeping the topology anyway");
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let names = match self.inner.rooms.stored_names().await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the room list; no topology sweep");
                return;
            }
        };
        let started = std::time::Instant::now();
        let swept = futures_util::stream::iter(names)
            .map(|name| {
                let service = self.clone();
                async move {
                    let Ok(Some(meta)) = service.inner.store.load_room(&name).await else {
                        return false;
                    };
                    // A room deleted meanwhile has no consumer any more: its topology stays gone.
                    if !service.has_consumer(&name) {
                        return false;
                    }
                    declare_topology(service.inner.broker.as_ref(), &meta)
                        .await
                        .is_ok()
                }
            })
            .buffer_unordered(SWEEPING_AT_ONCE)
            .take_until(shutdown.cancelled())
            .fold((0usize, 0usize), |(ok, failed), done| async move {
                if done {
                    (ok + 1, failed)
                } else {
                    (ok, failed + 1)
                }
            })
            .await;
        tracing::info!(rooms = swept.0, not_swept = swept.1, took = ?started.elapsed(),
            "topology declared again");
    }

    /// Whether the room has a consumer on this instance (it is listed, and not deleted).
    fn has_consumer(&self, name: &RoomName) -> bool {
        self.inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }

    /// Stops the room's consumer on this instance.
    pub(super) fn stop_consumer(&self, name: &RoomName) {
        let stopped = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(consumer) = stopped {
            consumer.stop.cancel();
        }
    }
}
