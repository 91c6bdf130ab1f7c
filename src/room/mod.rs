//! `ChatRoom`: one room's message cache (a deque), its metadata and membership, and the methods
//! that hide the broker and the store behind the seed's names.
//!
//! A `ChatRoom` is one instance's cheap-to-clone handle on a room whose truth is in the store: its
//! cache holds a contiguous run of the newest stored messages, fed in sequence order by
//! [`ChatRoom::apply`] (from the cluster events of whichever instance numbers the room), and its
//! metadata is refreshed from the store whenever it changes. The deque's *left* end holds the
//! newest message: `put` pushes there and `get` takes the oldest from the *right*, as in the seed;
//! the cache keeps at most `capacity` messages and the store keeps them all.
//!
//! The room's consumer, which numbers and stores its messages, is [`retrieve`]'s
//! `retrieve_messages`; the room list is [`RoomList`].

mod list;
pub mod retrieve;

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

pub use list::RoomList;

use crate::broker::{Broker, BrokerError};
use crate::model::{
    Alias, ChatMessage, MAX_MESSAGE_BYTES, MessageProperties, RoomMeta, RoomName, now,
};
use crate::store::{Store, StoreError};

/// Updates a live subscriber may fall behind before it must catch up from the store.
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
    /// The room is no longer in the store (deleted meanwhile).
    #[error("room {0} does not exist")]
    Gone(RoomName),
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

/// What a room's live subscribers hear, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomUpdate {
    /// The next stored message (sequence numbers increase by one, unless the cache had to start
    /// over after a gap it could not fill: subscribers then catch up from the store).
    Message(ChatMessage),
    /// The members changed; here they are now.
    Members(Vec<Alias>),
    /// The room was deleted: nothing more will come.
    Deleted,
}

/// Stored messages handed to [`ChatRoom::apply`] do not follow on from the cache: the messages
/// numbered `after + 1 ..= before - 1` must be read from the store first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The last message the cache holds.
    pub after: u64,
    /// The first message offered.
    pub before: u64,
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
    /// When the cache was last read or fed, on [`TOUCHES`]' count: the coldest caches are
    /// emptied first when all rooms' caches hold too much.
    touched: AtomicU64,
    /// Stored messages and membership changes, in order, for live subscribers; made by the first
    /// subscriber, so a room nobody watches costs nothing (a channel preallocates its buffer).
    live: OnceLock<broadcast::Sender<RoomUpdate>>,
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
    /// The sequence number of the newest stored message this room object knows of (the cache's
    /// newest, once it holds any).
    last_sequence: u64,
    /// The version of the metadata held (see [`RoomMeta::version`]).
    version: u64,
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
        let meta = RoomMeta {
            name,
            group_room,
            owner_alias,
            members: members.into_iter().collect(),
            create_time: created,
            modify_time: created,
            version: 0,
        };
        let room = Self::from_meta(meta, broker, store, capacity);
        room.state().dirty = true;
        room
    }

    /// A room object for stored metadata, with an empty cache (see [`ChatRoom::restore`]).
    pub fn from_meta(
        meta: RoomMeta,
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        capacity: usize,
    ) -> Self {
        let state = State {
            cache: VecDeque::new(),
            group_room: meta.group_room,
            owner_alias: meta.owner_alias,
            members: meta.members.into_iter().collect(),
            dirty: false,
            create_time: meta.create_time,
            modify_time: meta.modify_time,
            last_sequence: 0,
            version: meta.version,
        };
        Self {
            inner: Arc::new(Inner {
                name: meta.name,
                capacity: capacity.max(1),
                broker,
                store,
                state: Mutex::new(state),
                touched: AtomicU64::new(next_touch()),
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

    /// Whether `alias` is a member (as this room object last heard).
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

    /// The sequence number of the newest stored message this room object knows of.
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
            version: state.version,
        }
    }

    /// Takes the metadata as stored after a change (on any instance), unless this room holds a
    /// newer version already; tells live subscribers if the members changed.
    pub fn set_meta(&self, meta: RoomMeta) {
        let members: BTreeSet<Alias> = meta.members.into_iter().collect();
        let changed = {
            let mut state = self.state();
            if meta.version < state.version {
                return;
            }
            state.version = meta.version;
            let changed = state.members != members;
            state.group_room = meta.group_room;
            state.owner_alias = meta.owner_alias;
            state.members = members.clone();
            state.create_time = meta.create_time;
            state.modify_time = state.modify_time.max(meta.modify_time);
            changed
        };
        if changed {
            self.tell(RoomUpdate::Members(members.into_iter().collect()));
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
    /// (The service's caches are fed by [`ChatRoom::apply`], which keeps them in sequence order;
    /// `put` is the seed's plain deque operation and stores nothing.)
    pub fn put(&self, message: ChatMessage) {
        self.touch();
        let mut state = self.state();
        state.modify_time = now();
        state.dirty = true;
        push_newest(&mut state.cache, message, self.inner.capacity);
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
        self.touch();
        self.state().cache.iter().rev().cloned().collect()
    }

    /// When the cache was last read or fed (a count of such uses across all rooms: larger is
    /// more recent).
    pub fn touched(&self) -> u64 {
        self.inner.touched.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        self.inner.touched.store(next_touch(), Ordering::Relaxed);
    }

    /// Empties the cache of every stored message (a message `put` and not stored stays), giving
    /// its memory back; the store keeps them all, and reads past the cache go there. Returns how
    /// many messages left the cache.
    pub fn trim_cache(&self) -> usize {
        let mut state = self.state();
        let before = state.cache.len();
        state.cache.retain(|m| m.dirty);
        state.cache.shrink_to_fit();
        before - state.cache.len()
    }

    /// Feeds stored messages to the cache and the live subscribers, in sequence order: those at
    /// or below [`ChatRoom::last_sequence`] are already known and skipped; the rest must follow on
    /// without a gap, else nothing is taken and the [`Gap`] says what to read from the store
    /// first. Returns how many messages were new.
    pub fn apply(&self, messages: &[ChatMessage]) -> Result<usize, Gap> {
        self.touch();
        let mut fresh: Vec<&ChatMessage> = messages.iter().filter(|m| sequence(m) > 0).collect();
        fresh.sort_by_key(|m| sequence(m));
        fresh.dedup_by_key(|m| sequence(m));
        let applied: Vec<ChatMessage> = {
            let mut state = self.state();
            fresh.retain(|m| sequence(m) > state.last_sequence);
            let Some(first) = fresh.first() else {
                return Ok(0);
            };
            if sequence(first) != state.last_sequence + 1 {
                return Err(Gap {
                    after: state.last_sequence,
                    before: sequence(first),
                });
            }
            let mut applied = Vec::with_capacity(fresh.len());
            for message in fresh {
                if sequence(message) != state.last_sequence + 1 {
                    // A hole inside the batch: take what follows on; the rest comes again.
                    break;
                }
                state.last_sequence += 1;
                let when = message
                    .mess_props
                    .rec_time
                    .unwrap_or(message.mess_props.sent_time);
                state.modify_time = state.modify_time.max(when);
                let mut message = message.clone();
                message.dirty = false;
                push_newest(&mut state.cache, message.clone(), self.inner.capacity);
                applied.push(message);
            }
            applied
        };
        let count = applied.len();
        for message in applied {
            self.tell(RoomUpdate::Message(message));
        }
        Ok(count)
    }

    /// Starts the cache over just before `sequence_number` (after a gap that could not be read
    /// from the store): the cache empties, and [`ChatRoom::apply`] takes `sequence_number` next.
    /// Live subscribers notice the jump and catch up from the store themselves.
    pub fn restart_at(&self, sequence_number: u64) {
        let mut state = self.state();
        state.cache.clear();
        state.last_sequence = sequence_number.saturating_sub(1);
    }

    // ----- membership -----

    /// Adds `alias` to a group room: first in the store (an atomic add, so every instance sees
    /// it), then on the broker (its inbox bound to the room's exchange); if the broker fails, the
    /// store change is undone, so a refusal changes nothing. Returns `false` if it already was a
    /// member.
    pub async fn add_group_member(&self, alias: &Alias) -> Result<bool, RoomError> {
        if !self.group_room() {
            return Err(RoomError::NotAGroupRoom(self.inner.name.clone()));
        }
        let store = &self.inner.store;
        let change = store
            .add_member(&self.inner.name, alias)
            .await?
            .ok_or_else(|| RoomError::Gone(self.inner.name.clone()))?;
        if let Err(e) = self.inner.broker.bind_member(&self.inner.name, alias).await {
            if change.changed {
                self.undo(store.remove_member(&self.inner.name, alias).await);
            }
            return Err(e.into());
        }
        self.set_meta(change.meta);
        Ok(change.changed)
    }

    /// Removes `alias` from a group room: first in the store, then its inbox's binding on the
    /// broker; if the broker fails, the store change is undone. The owner cannot leave.
    pub async fn remove_group_member(&self, alias: &Alias) -> Result<(), RoomError> {
        if !self.group_room() {
            return Err(RoomError::NotAGroupRoom(self.inner.name.clone()));
        }
        if &self.owner_alias() == alias {
            return Err(RoomError::OwnerCannotLeave(alias.clone()));
        }
        let store = &self.inner.store;
        let change = store
            .remove_member(&self.inner.name, alias)
            .await?
            .ok_or_else(|| RoomError::Gone(self.inner.name.clone()))?;
        if !change.changed {
            self.set_meta(change.meta);
            return Err(RoomError::NotAMember {
                room: self.inner.name.clone(),
                alias: alias.clone(),
            });
        }
        if let Err(e) = self
            .inner
            .broker
            .unbind_member(&self.inner.name, alias)
            .await
        {
            self.undo(store.add_member(&self.inner.name, alias).await);
            return Err(e.into());
        }
        self.set_meta(change.meta);
        Ok(())
    }

    /// Logs an undo that failed: the store then keeps a change the caller was told failed.
    fn undo<T>(&self, result: Result<T, StoreError>) {
        if let Err(e) = result {
            tracing::error!(room = %self.inner.name, error = %e,
                "could not undo a membership change after the broker failed");
        }
    }

    // ----- broker -----

    /// Declares the room's broker topology: its queue, and for a group room its exchange and
    /// every member's bound inbox. Idempotent.
    pub async fn declare(&self) -> Result<(), RoomError> {
        let meta = self.meta();
        declare_topology(self.inner.broker.as_ref(), &meta).await?;
        Ok(())
    }

    /// Publishes a message to the room's queue, persistent, and returns it once the broker
    /// confirmed that the queue holds it. The sender must be a member; the room's consumer will
    /// number and store it.
    pub async fn send_message(
        &self,
        message: String,
        mess_props: MessageProperties,
    ) -> Result<ChatMessage, RoomError> {
        let message = self.checked(message, mess_props)?;
        self.keep_on_disk(&message).await?;
        Ok(message)
    }

    /// As [`ChatRoom::send_message`], but transient: the broker holds the message in memory
    /// only, and loses it if it restarts before the room's consumer took it. For a sender that
    /// answers its client only once the message is stored, or once [`ChatRoom::keep_on_disk`]
    /// made a persistent copy.
    pub async fn send_message_in_memory(
        &self,
        message: String,
        mess_props: MessageProperties,
    ) -> Result<ChatMessage, RoomError> {
        let message = self.checked(message, mess_props)?;
        let body = encode(&message);
        self.inner
            .broker
            .publish_in_memory(&self.inner.name, body)
            .await?;
        Ok(message)
    }

    /// Publishes a message to the room's queue persistent, and returns once the broker confirmed
    /// it: from then on the message survives a broker restart. [`ChatRoom::send_message`]'s own
    /// publish, and the persistent copy of a message sent with
    /// [`ChatRoom::send_message_in_memory`] (if both copies arrive, the consumer stores the first
    /// and recognises the other by its id).
    pub async fn keep_on_disk(&self, sent: &ChatMessage) -> Result<(), RoomError> {
        self.inner
            .broker
            .publish(&self.inner.name, encode(sent))
            .await?;
        Ok(())
    }

    /// A new message, once checked: not too long, for this room, from a member.
    fn checked(
        &self,
        message: String,
        mess_props: MessageProperties,
    ) -> Result<ChatMessage, RoomError> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(RoomError::MessageTooLarge(message.len()));
        }
        if mess_props.room_name != self.inner.name {
            return Err(RoomError::WrongRoom(mess_props.room_name));
        }
        if !self.is_member(&mess_props.from_user) {
            return Err(RoomError::NotAMember {
                room: self.inner.name.clone(),
                alias: mess_props.from_user,
            });
        }
        Ok(ChatMessage::new(message, mess_props))
    }

    // ----- store -----

    /// Saves the room's metadata (creating the room in the store if it is not there). Messages
    /// are stored only by the room's consumer, which numbers them; membership changes are saved
    /// as they happen.
    pub async fn persist(&self) -> Result<(), RoomError> {
        let meta = self.meta();
        self.inner.store.save_room(&meta).await?;
        self.state().dirty = false;
        Ok(())
    }

    /// The room as stored: metadata and the newest `capacity` messages (two reads); `None` if
    /// the store has no such room.
    pub async fn load(
        name: &RoomName,
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        capacity: usize,
    ) -> Result<Option<Self>, RoomError> {
        let Some(meta) = store.load_room(name).await? else {
            return Ok(None);
        };
        let room = Self::from_meta(meta.clone(), broker, store, capacity);
        room.fill_from(meta).await?;
        Ok(Some(room))
    }

    /// Loads the room from the store: metadata, the newest `capacity` messages into the cache,
    /// and the last sequence number. Returns `false` (and changes nothing) if the store has no
    /// such room.
    pub async fn restore(&self) -> Result<bool, RoomError> {
        let Some(meta) = self.inner.store.load_room(&self.inner.name).await? else {
            return Ok(false);
        };
        self.fill_from(meta).await?;
        Ok(true)
    }

    /// Takes stored metadata and reads the newest messages into the cache.
    async fn fill_from(&self, meta: RoomMeta) -> Result<(), RoomError> {
        let latest = self
            .inner
            .store
            .latest_messages(&self.inner.name, self.inner.capacity)
            .await?;
        let last_sequence = latest.last().map(sequence).unwrap_or(0);
        // The stored metadata moves with membership; messages move the room's time too.
        let newest = latest
            .last()
            .map(|m| m.mess_props.rec_time.unwrap_or(m.mess_props.sent_time));
        {
            let mut state = self.state();
            state.group_room = meta.group_room;
            state.owner_alias = meta.owner_alias;
            state.members = meta.members.into_iter().collect();
            state.version = meta.version;
            state.create_time = meta.create_time;
            state.modify_time = newest.map_or(meta.modify_time, |t| t.max(meta.modify_time));
            state.dirty = false;
            state.cache = latest.into_iter().rev().collect();
            state.last_sequence = last_sequence;
        }
        Ok(())
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

    /// Up to `limit` stored messages containing `needle`, newest first.
    pub async fn search(&self, needle: &str, limit: usize) -> Result<Vec<ChatMessage>, RoomError> {
        Ok(self
            .inner
            .store
            .search_messages(&self.inner.name, needle, limit)
            .await?)
    }

    // ----- live subscribers -----

    /// A feed of the room's stored messages (and membership changes) from now on, in order. A
    /// receiver that falls more than [`LIVE_BUFFER`] updates behind gets `Lagged` and should
    /// catch up from the store.
    pub fn subscribe(&self) -> broadcast::Receiver<RoomUpdate> {
        self.inner
            .live
            .get_or_init(|| broadcast::channel(LIVE_BUFFER).0)
            .subscribe()
    }

    /// Tells live subscribers that the room was deleted.
    pub fn close(&self) {
        self.tell(RoomUpdate::Deleted);
    }

    fn tell(&self, update: RoomUpdate) {
        if let Some(live) = self.inner.live.get() {
            // No receiver left is fine.
            let _ = live.send(update);
        }
    }
}

/// Uses of rooms' caches so far, across all rooms: each use takes the next count.
static TOUCHES: AtomicU64 = AtomicU64::new(0);

/// The next use's count.
fn next_touch() -> u64 {
    TOUCHES.fetch_add(1, Ordering::Relaxed) + 1
}

/// Declares a room's queue, and for a group room its exchange and its members' bound inboxes.
pub async fn declare_topology(broker: &dyn Broker, meta: &RoomMeta) -> Result<(), BrokerError> {
    broker.declare_room(&meta.name, meta.group_room).await?;
    if meta.group_room {
        for alias in &meta.members {
            broker.bind_member(&meta.name, alias).await?;
        }
    }
    Ok(())
}

/// A message as the room's queue carries it.
fn encode(message: &ChatMessage) -> Vec<u8> {
    serde_json::to_vec(message).expect("a ChatMessage always serialises")
}

fn push_newest(cache: &mut VecDeque<ChatMessage>, message: ChatMessage, capacity: usize) {
    cache.push_front(message);
    while cache.len() > capacity {
        cache.pop_back();
    }
}

/// A stored message's sequence number (0 for one that has none).
pub fn sequence(message: &ChatMessage) -> u64 {
    message.mess_props.sequence_number.unwrap_or(0)
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
