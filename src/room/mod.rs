//! `ChatRoom`: one room's message cache (a deque), its metadata and membership, and the methods
//! that hide the broker and the store behind the seed's names.
//!
//! A `ChatRoom` is a cheap-to-clone handle: the HTTP handlers send through it while the room's
//! consumer ([`retrieve`]) fills its cache. The deque's *left* end holds the newest message: `put`
//! pushes there and `get` takes the oldest from the *right*, as in the seed; the cache keeps at
//! most `capacity` messages and the store keeps them all.

mod list;
mod retrieve;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

pub use list::RoomList;

use crate::broker::{Broker, BrokerError};
use crate::model::{
    Alias, ChatMessage, MAX_MESSAGE_BYTES, MessageProperties, RoomMeta, RoomName, now,
};
use crate::store::{Store, StoreError};

/// Messages a live subscriber may fall behind before it must catch up from the store.
pub const LIVE_BUFFER: usize = 1024;

/// What a room operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// Membership changes need a group room.
    #[error("room {0} is a private room; only group rooms have group members")]
    NotAGroupRoom(RoomName),
    /// The alias is not a member of the room.
    #[error("{alias} is not a member of room {room}")]
    NotAMember {
        /// The room.
        room: RoomName,
        /// The alias that is not a member.
        alias: Alias,
    },
    /// The owner of a room cannot leave it.
    #[error("{0} owns the room and cannot leave it")]
    OwnerCannotLeave(Alias),
    /// A message must have some text.
    #[error("message must not be empty")]
    EmptyMessage,
    /// A message over [`MAX_MESSAGE_BYTES`].
    #[error("message is {0} bytes long; the limit is {MAX_MESSAGE_BYTES} bytes")]
    MessageTooLarge(usize),
    /// The message properties name another room.
    #[error("message properties name room {0}")]
    WrongRoom(RoomName),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`ChatRoom::get_messages`] returns: objects or texts, as the seed's `return_objects` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomMessages {
    /// Whole messages, oldest first.
    Objects(Vec<ChatMessage>),
    /// Just the texts, oldest first.
    Texts(Vec<String>),
}

/// A chat room: a bounded deque of messages plus metadata, backed by a broker and a store.
#[derive(Clone)]
pub struct ChatRoom {
    inner: Arc<Inner>,
}

struct Inner {
    /// The room's name: its queue, its exchange (group rooms) and its collection.
    name: RoomName,
    /// Most messages the cache holds; older ones are only in the store.
    capacity: usize,
    broker: Arc<dyn Broker>,
    store: Arc<dyn Store>,
    /// Everything that changes. A std mutex: held for short sync sections, never across `.await`.
    state: Mutex<State>,
    /// Stored messages, in order, for live subscribers; made by the first subscriber, so a room
    /// nobody watches costs nothing (a channel preallocates its whole buffer).
    live: OnceLock<broadcast::Sender<ChatMessage>>,
}

struct State {
    /// The cache: newest message at the front (left), oldest at the back (right).
    cache: VecDeque<ChatMessage>,
    group_room: bool,
    owner_alias: Alias,
    members: BTreeSet<Alias>,
    /// True while the metadata has changes the store has not seen.
    dirty: bool,
    create_time: DateTime<Utc>,
    modify_time: DateTime<Utc>,
    /// Highest sequence number handed out; the next message gets one more.
    last_sequence: u64,
    /// Senders waiting to learn that their message (by id) was stored; several when a client
    /// retries with one idempotency key while the first attempt still waits.
    waiters: HashMap<Uuid, Vec<oneshot::Sender<ChatMessage>>>,
}

impl ChatRoom {
    /// A new room owned by `owner_alias`, with `other_member` too for a private room.
    /// Nothing is declared or saved until [`ChatRoom::declare`] and [`ChatRoom::persist`].
    pub fn new(
        name: RoomName,
        group_room: bool,
        owner_alias: Alias,
        other_member: Option<Alias>,
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        capacity: usize,
    ) -> Self {
        let created = now();
        let mut members = BTreeSet::from([owner_alias.clone()]);
        members.extend(other_member);
        let state = State {
            cache: VecDeque::new(),
            group_room,
            owner_alias,
            members,
            dirty: true,
            create_time: created,
            modify_time: created,
            last_sequence: 0,
            waiters: HashMap::new(),
        };
        Self {
            inner: Arc::new(Inner {
                name,
                capacity: capacity.max(1),
                broker,
                store,
                state: Mutex::new(state),
                live: OnceLock::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room's name.
    pub fn name(&self) -> &RoomName {
        &self.inner.name
    }

    /// Whether this is a group room (exchange, any number of members).
    pub fn group_room(&self) -> bool {
        self.state().group_room
    }

    /// The room's owner.
    pub fn owner_alias(&self) -> Alias {
        self.state().owner_alias.clone()
    }

    /// All members, the owner included, in name order.
    pub fn members(&self) -> Vec<Alias> {
        self.state().members.iter().cloned().collect()
    }

    /// Whether `alias` is a member.
    pub fn is_member(&self, alias: &Alias) -> bool {
        self.state().members.contains(alias)
    }

    /// Whether the metadata must still be saved.
    pub fn dirty(&self) -> bool {
        self.state().dirty
    }

    /// When the room was created.
    pub fn create_time(&self) -> DateTime<Utc> {
        self.state().create_time
    }

    /// When the room last changed.
    pub fn modify_time(&self) -> DateTime<Utc> {
        self.state().modify_time
    }

    /// The highest sequence number handed out so far.
    pub fn last_sequence(&self) -> u64 {
        self.state().last_sequence
    }

    /// The room's metadata document.
    pub fn meta(&self) -> RoomMeta {
        let state = self.state();
        RoomMeta {
            name: self.inner.name.clone(),
            group_room: state.group_room,
            owner_alias: state.owner_alias.clone(),
            members: state.members.iter().cloned().collect(),
            create_time: state.create_time,
            modify_time: state.modify_time,
        }
    }

    // ----- the deque -----

    /// How many messages the cache holds.
    pub fn len(&self) -> usize {
        self.state().cache.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.state().cache.is_empty()
    }

    /// Puts a message at the left (newest) end, dropping the oldest beyond the capacity.
    pub fn put(&self, message: ChatMessage) {
        let mut state = self.state();
        state.modify_time = now();
        state.dirty = true;
        state.cache.push_front(message);
        while state.cache.len() > self.inner.capacity {
            state.cache.pop_back();
        }
    }

    /// Takes the next message from the right (oldest) end.
    pub fn get(&self) -> Option<ChatMessage> {
        self.state().cache.pop_back()
    }

    /// The last `num_messages` messages of the cache, oldest first, as objects or as texts.
    pub fn get_messages(&self, num_messages: usize, return_objects: bool) -> RoomMessages {
        let state = self.state();
        let newest = state.cache.iter().take(num_messages).rev();
        if return_objects {
            RoomMessages::Objects(newest.cloned().collect())
        } else {
            RoomMessages::Texts(newest.map(|m| m.message.clone()).collect())
        }
    }

    /// The newest cached message whose text is exactly `message_text`.
    pub fn find_message(&self, message_text: &str) -> Option<ChatMessage> {
        let state = self.state();
        state
            .cache
            .iter()
            .find(|m| m.message == message_text)
            .cloned()
    }

    /// The cached messages, oldest first (a snapshot).
    pub fn cached(&self) -> Vec<ChatMessage> {
        self.state().cache.iter().rev().cloned().collect()
    }

    // ----- membership -----

    /// Adds `alias` to a group room and binds its inbox queue to the room's exchange.
    /// Returns `false` if it already was a member.
    pub async fn add_group_member(&self, alias: &Alias) -> Result<bool, RoomError> {
        if !self.group_room() {
            return Err(RoomError::NotAGroupRoom(self.inner.name.clone()));
        }
        if self.is_member(alias) {
            return Ok(false);
        }
        self.inner
            .broker
            .bind_member(&self.inner.name, alias)
            .await?;
        self.change(|state| state.members.insert(alias.clone()));
        self.persist().await?;
        Ok(true)
    }

    /// Removes `alias` from a group room and unbinds its inbox queue. The owner cannot leave.
    pub async fn remove_group_member(&self, alias: &Alias) -> Result<(), RoomError> {
        if !self.group_room() {
            return Err(RoomError::NotAGroupRoom(self.inner.name.clone()));
        }
        if &self.owner_alias() == alias {
            return Err(RoomError::OwnerCannotLeave(alias.clone()));
        }
        if !self.is_member(alias) {
            return Err(self.not_a_member(alias));
        }
        self.inner
            .broker
            .unbind_member(&self.inner.name, alias)
            .await?;
        self.change(|state| state.members.remove(alias));
        self.persist().await?;
        Ok(())
    }

    fn change<T>(&self, edit: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state();
        let result = edit(&mut state);
        state.dirty = true;
        state.modify_time = now();
        result
    }

    fn not_a_member(&self, alias: &Alias) -> RoomError {
        RoomError::NotAMember {
            room: self.inner.name.clone(),
            alias: alias.clone(),
        }
    }

    // ----- broker -----

    /// Declares the room's broker topology: its queue, and for a group room its exchange and
    /// every member's bound inbox. Idempotent.
    pub async fn declare(&self) -> Result<(), RoomError> {
        let (group_room, members) = {
            let state = self.state();
            (state.group_room, state.members.clone())
        };
        let broker = &self.inner.broker;
        broker.declare_room(&self.inner.name, group_room).await?;
        if group_room {
            for alias in &members {
                broker.bind_member(&self.inner.name, alias).await?;
            }
        }
        Ok(())
    }

    /// Publishes a message to the room and returns it once the broker confirmed it.
    /// The sender must be a member; the room's consumer will number and store it.
    pub async fn send_message(
        &self,
        message: String,
        mess_props: MessageProperties,
    ) -> Result<ChatMessage, RoomError> {
        if message.is_empty() {
            return Err(RoomError::EmptyMessage);
        }
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(RoomError::MessageTooLarge(message.len()));
        }
        if mess_props.room_name != self.inner.name {
            return Err(RoomError::WrongRoom(mess_props.room_name));
        }
        if !self.is_member(&mess_props.from_user) {
            return Err(self.not_a_member(&mess_props.from_user));
        }
        let message = ChatMessage::new(message, mess_props);
        let body = serde_json::to_vec(&message).expect("a ChatMessage always serialises");
        let group_room = self.group_room();
        self.inner
            .broker
            .publish(&self.inner.name, group_room, body)
            .await?;
        Ok(message)
    }

    /// Registers interest in the message with `id`: the receiver gets it once it is stored.
    pub fn register_waiter(&self, id: Uuid) -> oneshot::Receiver<ChatMessage> {
        let (tx, rx) = oneshot::channel();
        self.state().waiters.entry(id).or_default().push(tx);
        rx
    }

    /// Drops the interest of senders that gave up on a message (failed send or timeout).
    pub fn forget_waiter(&self, id: &Uuid) {
        let mut state = self.state();
        if let Some(waiting) = state.waiters.get_mut(id) {
            waiting.retain(|tx| !tx.is_closed());
            if waiting.is_empty() {
                state.waiters.remove(id);
            }
        }
    }

    // ----- store -----

    /// Saves the metadata if it changed, and every dirty cached message (numbering any that have
    /// no sequence number yet).
    pub async fn persist(&self) -> Result<(), RoomError> {
        let (meta, dirty_messages) = {
            let mut state = self.state();
            let meta = state.dirty.then(|| RoomMeta {
                name: self.inner.name.clone(),
                group_room: state.group_room,
                owner_alias: state.owner_alias.clone(),
                members: state.members.iter().cloned().collect(),
                create_time: state.create_time,
                modify_time: state.modify_time,
            });
            let mut next = state.last_sequence;
            let mut dirty = Vec::new();
            for message in state.cache.iter_mut().rev().filter(|m| m.dirty) {
                if message.mess_props.sequence_number.is_none() {
                    next += 1;
                    message.mess_props.sequence_number = Some(next);
                }
                dirty.push(message.clone());
            }
            state.last_sequence = next;
            (meta, dirty)
        };
        let store = &self.inner.store;
        if let Some(meta) = meta {
            store.save_room(&meta).await?;
            self.state().dirty = false;
        }
        for message in &dirty_messages {
            store.insert_message(message).await?;
            let mut state = self.state();
            if let Some(cached) = state
                .cache
                .iter_mut()
                .find(|m| m.mess_props.id == message.mess_props.id)
            {
                cached.dirty = false;
            }
        }
        Ok(())
    }

    /// Loads the room from the store: metadata, the newest `capacity` messages into the cache,
    /// and the sequence counter. Returns `false` (and changes nothing) if the store has no such
    /// room.
    pub async fn restore(&self) -> Result<bool, RoomError> {
        let store = &self.inner.store;
        let Some(meta) = store.load_room(&self.inner.name).await? else {
            return Ok(false);
        };
        let latest = store
            .latest_messages(&self.inner.name, self.inner.capacity)
            .await?;
        let last_sequence = store.last_sequence(&self.inner.name).await?;
        let mut state = self.state();
        state.group_room = meta.group_room;
        state.owner_alias = meta.owner_alias;
        state.members = meta.members.into_iter().collect();
        state.create_time = meta.create_time;
        state.modify_time = meta.modify_time;
        state.dirty = false;
        state.cache = latest.into_iter().rev().collect();
        state.last_sequence = last_sequence;
        Ok(true)
    }

    /// Up to `limit` stored messages numbered above `after`, oldest first.
    pub async fn messages_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, RoomError> {
        Ok(self
            .inner
            .store
            .messages_after(&self.inner.name, after, limit)
            .await?)
    }

    /// Up to `limit` stored messages containing `needle`, newest first.
    pub async fn search(&self, needle: &str, limit: usize) -> Result<Vec<ChatMessage>, RoomError> {
        Ok(self
            .inner
            .store
            .search_messages(&self.inner.name, needle, limit)
            .await?)
    }

    /// A feed of the room's messages as they are stored, in order, from now on. A receiver that
    /// falls more than [`LIVE_BUFFER`] messages behind gets `Lagged` and should catch up from the
    /// store.
    pub fn subscribe(&self) -> broadcast::Receiver<ChatMessage> {
        self.inner
            .live
            .get_or_init(|| broadcast::channel(LIVE_BUFFER).0)
            .subscribe()
    }

    /// Hands a stored message to the live subscribers, if any.
    fn publish_live(&self, message: &ChatMessage) {
        if let Some(live) = self.inner.live.get() {
            // No receiver left is fine.
            let _ = live.send(message.clone());
        }
    }

    /// Up to `limit` stored messages numbered below `before`, oldest first.
    pub async fn messages_before(
        &self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, RoomError> {
        Ok(self
            .inner
            .store
            .messages_before(&self.inner.name, before, limit)
            .await?)
    }
}

impl std::fmt::Debug for ChatRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatRoom")
            .field("name", &self.inner.name)
            .field("cached", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
