//! `RoomList`: the named list of rooms. In memory it holds the rooms this instance has loaded; in
//! the store, the names of every room of the deployment, changed one name at a time by atomic
//! writes so that instances never overwrite each other. `persist` and `restore` handle the list's
//! own metadata, then every room's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use super::{ChatRoom, RoomError};
use crate::broker::Broker;
use crate::model::{RoomListMeta, RoomName, now};
use crate::store::Store;

/// A named list of rooms, persisted as one metadata document plus each room's own documents.
pub struct RoomList {
    /// The list's name (its document's id in the store).
    name: String,
    broker: Arc<dyn Broker>,
    store: Arc<dyn Store>,
    /// Cache capacity given to every restored room.
    capacity: usize,
    /// A std mutex: held only for short sync sections.
    state: Mutex<ListState>,
}

struct ListState {
    /// The rooms loaded in this instance. A hash map: every send looks its room up, and over
    /// 10,000 rooms with a shared prefix a tree's dozen or so name comparisons showed in the
    /// profile; the few callers that want name order sort.
    rooms: HashMap<RoomName, ChatRoom>,
    create_time: DateTime<Utc>,
    modify_time: DateTime<Utc>,
}

impl RoomList {
    /// An empty list; call [`RoomList::restore`] to load a saved one.
    pub fn new(
        name: impl Into<String>,
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        capacity: usize,
    ) -> Self {
        let created = now();
        Self {
            name: name.into(),
            broker,
            store,
            capacity,
            state: Mutex::new(ListState {
                rooms: HashMap::new(),
                create_time: created,
                modify_time: created,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, ListState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The list's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a room; returns `false` (and keeps the existing one) if the name is taken.
    pub fn add(&self, room: ChatRoom) -> bool {
        let mut state = self.state();
        if state.rooms.contains_key(room.name()) {
            return false;
        }
        state.rooms.insert(room.name().clone(), room);
        state.modify_time = now();
        true
    }

    /// Adds a room unless one of that name is loaded already; returns the one the list holds.
    pub fn add_or_get(&self, room: ChatRoom) -> ChatRoom {
        let mut state = self.state();
        if let Some(existing) = state.rooms.get(room.name()) {
            return existing.clone();
        }
        state.rooms.insert(room.name().clone(), room.clone());
        state.modify_time = now();
        room
    }

    /// Removes and returns the room with this name.
    pub fn remove(&self, name: &RoomName) -> Option<ChatRoom> {
        let mut state = self.state();
        let removed = state.rooms.remove(name);
        if removed.is_some() {
            state.modify_time = now();
        }
        removed
    }

    /// The loaded room with this name.
    pub fn find(&self, name: &RoomName) -> Option<ChatRoom> {
        self.state().rooms.get(name).cloned()
    }

    /// Every loaded room, in name order.
    pub fn rooms(&self) -> Vec<ChatRoom> {
        let mut rooms = self.loaded();
        rooms.sort_unstable_by(|a, b| a.name().cmp(b.name()));
        rooms
    }

    /// Every loaded room, in no order.
    fn loaded(&self) -> Vec<ChatRoom> {
        self.state().rooms.values().cloned().collect()
    }

    /// Keeps all rooms' caches together within `budget` messages: past it, empties the caches
    /// of the rooms used longest ago until they hold three quarters of it (so that the next
    /// check has room to spare). Returns how many messages the caches hold after.
    pub fn trim_caches(&self, budget: usize) -> usize {
        let mut rooms: Vec<(u64, usize, ChatRoom)> = self
            .loaded()
            .into_iter()
            .map(|room| (room.touched(), room.len(), room))
            .collect();
        let mut total: usize = rooms.iter().map(|(_, len, _)| len).sum();
        if total <= budget {
            return total;
        }
        rooms.sort_unstable_by_key(|(touched, _, _)| *touched);
        let goal = budget / 4 * 3;
        for (_, _, room) in rooms {
            if total <= goal {
                break;
            }
            total -= room.trim_cache().min(total);
        }
        total
    }

    /// The list's metadata document, naming the loaded rooms.
    pub fn meta(&self) -> RoomListMeta {
        let state = self.state();
        RoomListMeta {
            name: self.name.clone(),
            rooms: {
                let mut names: Vec<RoomName> = state.rooms.keys().cloned().collect();
                names.sort_unstable();
                names
            },
            create_time: state.create_time,
            modify_time: state.modify_time,
        }
    }

    /// Records one new room in the stored list (an atomic add; the list is created if need be).
    pub async fn register(&self, room: &RoomName) -> Result<(), RoomError> {
        Ok(self.store.add_to_room_list(&self.name, room).await?)
    }

    /// Removes one room from the stored list (an atomic removal).
    pub async fn unregister(&self, room: &RoomName) -> Result<(), RoomError> {
        Ok(self.store.remove_from_room_list(&self.name, room).await?)
    }

    /// The names of every room in the stored list (all instances' rooms).
    pub async fn stored_names(&self) -> Result<Vec<RoomName>, RoomError> {
        let meta = self.store.load_room_list(&self.name).await?;
        Ok(meta.map(|m| m.rooms).unwrap_or_default())
    }

    /// Saves the list's own metadata: creates it if need be and adds the loaded rooms' names,
    /// never removing a name another instance added.
    pub async fn persist_meta(&self) -> Result<(), RoomError> {
        Ok(self.store.save_room_list(&self.meta()).await?)
    }

    /// Saves the list's metadata, then every loaded room's.
    pub async fn persist(&self) -> Result<(), RoomError> {
        self.persist_meta().await?;
        for room in self.rooms() {
            room.persist().await?;
        }
        Ok(())
    }

    /// Loads the list's metadata, then restores every room it names. A room whose metadata is
    /// missing from the store is skipped with a warning.
    pub async fn restore(&self) -> Result<(), RoomError> {
        let Some(meta) = self.store.load_room_list(&self.name).await? else {
            return Ok(());
        };
        {
            let mut state = self.state();
            state.create_time = meta.create_time;
            state.modify_time = meta.modify_time;
        }
        for name in meta.rooms {
            let Some(room_meta) = self.store.load_room(&name).await? else {
                tracing::warn!(room = %name, "room list names a room the store does not have");
                continue;
            };
            let room = ChatRoom::from_meta(
                room_meta,
                self.broker.clone(),
                self.store.clone(),
                self.capacity,
            );
            if room.restore().await? {
                self.state().rooms.insert(name, room);
            }
        }
        Ok(())
    }
}
