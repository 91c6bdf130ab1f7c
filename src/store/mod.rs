//! The store layer: one [`Store`] trait, two back ends.
//!
//! - [`mongo::MongoStore`]: MongoDB through the official `mongodb` crate (the only module that
//!   imports it). One collection per room, named after the room, holding one metadata document
//!   (`_id: "meta"`) and one document per message; plus `_room_list`, `_memberships` and
//!   `_users` collections.
//! - [`embedded::EmbeddedStore`]: the same logical layout in one `redb` file on disk.
//!
//! Message writes are idempotent by message id: writing a message whose id is already stored
//! changes nothing and returns the stored copy (with its first sequence number). And no two
//! messages of a room can hold one sequence number: a stale numberer's write is refused
//! ([`InsertStop::NumberTaken`]) instead of storing a duplicate.

pub mod embedded;
pub mod migration;
pub mod mongo;

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::model::{Alias, ChatMessage, MessageId, RoomListMeta, RoomMeta, RoomName, UserRecord};

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed the operation; try again later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored document does not have the shape this service writes.
    #[error("stored document is malformed: {0}")]
    Malformed(String),
    /// Only numbered messages can be stored.
    #[error("message {0} has no sequence number")]
    Unnumbered(MessageId),
    /// The store holds data of an earlier version that this one does not read.
    #[error("{0}")]
    Legacy(String),
}

/// Whether `text` contains `needle`, ASCII letters compared without case (the rule of
/// [`Store::search_messages`] on every back end).
pub fn text_matches(text: &str, needle: &str) -> bool {
    text.to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// Checks that every message of a batch has its sequence number.
pub fn check_numbered(messages: &[ChatMessage]) -> Result<(), StoreError> {
    match messages
        .iter()
        .find(|m| m.mess_props.sequence_number.is_none())
    {
        Some(m) => Err(StoreError::Unnumbered(m.mess_props.id)),
        None => Ok(()),
    }
}

/// The outcome of an idempotent message write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The message was new and is now stored.
    New,
    /// A message with this id was already stored; here it is, as first stored.
    Existing(ChatMessage),
    /// Another message holds this sequence number; nothing was written.
    NumberTaken,
}

/// Why [`Store::insert_messages`] stopped before the end of a batch. The messages before the
/// index given are stored; none after it were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertStop {
    /// `messages[i]`'s id is already stored (a redelivery, or a client's retry).
    IdStored(usize),
    /// `messages[i]`'s sequence number is already taken by another message: the numbering was
    /// stale (another instance numbered the room meanwhile). Reload the last number, renumber.
    NumberTaken(usize),
}

/// The outcome of [`Store::add_member`] or [`Store::remove_member`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// The room's metadata after the change.
    pub meta: RoomMeta,
    /// Whether the call changed the membership (`false`: the alias already was, or was not, a
    /// member).
    pub changed: bool,
}

/// What a store holds, as far as this version is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Nothing yet: a new store (marked current at once).
    Empty,
    /// Data written by this version's layout.
    Current,
    /// Data of an earlier version (messages with UUID ids and named types): `mess-chat migrate`
    /// converts it.
    Legacy,
}

/// The version of the store's layout this code writes (2: integer message ids and types).
pub const SCHEMA_VERSION: i64 = 2;

/// The outcome of [`Store::create_room`], the one atomic write that decides a room's creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// This call created the room.
    New,
    /// The room existed already; here is its metadata.
    Existing(RoomMeta),
}

/// Durable storage for rooms, messages, the room list and users. It is the registry every
/// instance reads: rooms and members are decided here by atomic writes, never by an instance's
/// memory.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Saves the room list's metadata without losing anything another instance added: creates
    /// the list if it is new, adds the rooms it names, and never removes one.
    async fn save_room_list(&self, meta: &RoomListMeta) -> Result<(), StoreError>;

    /// Loads the room list's metadata, if it was ever saved.
    async fn load_room_list(&self, name: &str) -> Result<Option<RoomListMeta>, StoreError>;

    /// Adds one room to the list (creating the list if need be), atomically.
    async fn add_to_room_list(&self, list: &str, room: &RoomName) -> Result<(), StoreError>;

    /// Removes one room from the list, atomically.
    async fn remove_from_room_list(&self, list: &str, room: &RoomName) -> Result<(), StoreError>;

    /// Creates a room by inserting its metadata document: of two concurrent creations of one
    /// name (from any instances), exactly one gets [`Created::New`].
    async fn create_room(&self, meta: &RoomMeta) -> Result<Created, StoreError>;

    /// Saves a room's metadata (the seed's `persist`): creates the room if it is not stored,
    /// otherwise only moves its `modify_time` forward. Membership is never overwritten here:
    /// it changes only through [`Store::add_member`] and [`Store::remove_member`].
    async fn save_room(&self, meta: &RoomMeta) -> Result<(), StoreError>;

    /// Loads a room's metadata document, if the room exists.
    async fn load_room(&self, room: &RoomName) -> Result<Option<RoomMeta>, StoreError>;

    /// Adds `alias` to the room's members (an atomic add-to-set). `None` if there is no such
    /// room.
    async fn add_member(
        &self,
        room: &RoomName,
        alias: &Alias,
    ) -> Result<Option<MemberChange>, StoreError>;

    /// Removes `alias` from the room's members (an atomic pull). `None` if there is no such room.
    async fn remove_member(
        &self,
        room: &RoomName,
        alias: &Alias,
    ) -> Result<Option<MemberChange>, StoreError>;

    /// The rooms `alias` was added to (an index kept beside the rooms; a room deleted meanwhile
    /// may still be named, so callers check each room's metadata).
    async fn rooms_of(&self, alias: &Alias) -> Result<Vec<RoomName>, StoreError>;

    /// How many rooms `alias` owns: those created with it as owner and not deleted since (an
    /// index kept beside the rooms, read in one lookup; rooms created before this index existed
    /// are not counted).
    async fn rooms_owned(&self, alias: &Alias) -> Result<u64, StoreError>;

    /// Deletes a room: its metadata and all its messages.
    async fn delete_room(&self, room: &RoomName) -> Result<(), StoreError>;

    /// Stores one numbered message, idempotently by its id.
    async fn insert_message(&self, message: &ChatMessage) -> Result<Inserted, StoreError>;

    /// The stored copies of those of `ids` that the room already has.
    async fn existing_messages(
        &self,
        room: &RoomName,
        ids: &[MessageId],
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Stores a batch of numbered messages of one room, in order, in as few writes as the back
    /// end allows. `None` when all were stored; otherwise where and why it stopped (an id
    /// already stored, or a sequence number already taken). A failed write leaves at most a
    /// prefix stored.
    async fn insert_messages(
        &self,
        room: &RoomName,
        messages: &[ChatMessage],
    ) -> Result<Option<InsertStop>, StoreError>;

    /// The room's `limit` messages with the highest sequence numbers, oldest first.
    async fn latest_messages(
        &self,
        room: &RoomName,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Up to `limit` messages numbered below `before`, the closest to it, oldest first.
    async fn messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Up to `limit` messages numbered above `after`, the closest to it, oldest first.
    async fn messages_after(
        &self,
        room: &RoomName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Up to `limit` of the room's messages whose text contains `needle` (ASCII letters
    /// compared without case), newest first.
    async fn search_messages(
        &self,
        room: &RoomName,
        needle: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Registers a user; `false` (and nothing changed) if the alias is already registered.
    async fn create_user(&self, user: &UserRecord) -> Result<bool, StoreError>;

    /// The registered user with this alias.
    async fn load_user(&self, alias: &Alias) -> Result<Option<UserRecord>, StoreError>;

    /// The highest sequence number stored for the room (0 when it has no messages).
    async fn last_sequence(&self, room: &RoomName) -> Result<u64, StoreError>;

    /// Takes an instance number (0 ..< `numbers`) for `holder` until `ttl` from now: a free one,
    /// one whose holder let it expire, or the holder's own. `None` if every number is held.
    async fn lease_instance(
        &self,
        holder: Uuid,
        numbers: u16,
        ttl: Duration,
    ) -> Result<Option<u16>, StoreError>;

    /// Extends `holder`'s lease of `number` to `ttl` from now; `false` if it is no longer its.
    async fn renew_instance(
        &self,
        number: u16,
        holder: Uuid,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Gives `number` back, if `holder` holds it.
    async fn release_instance(&self, number: u16, holder: Uuid) -> Result<(), StoreError>;

    /// Records that the message sent under the idempotency name `name` has id `id`, unless a
    /// message was recorded under it already; returns the id recorded (ours, or the first).
    async fn claim_idempotency_name(
        &self,
        name: &str,
        id: MessageId,
    ) -> Result<MessageId, StoreError>;

    /// What the store holds; an empty store is marked current.
    async fn schema(&self) -> Result<Schema, StoreError>;

    /// Converts data of earlier versions to this version's layout (run while no instance
    /// serves); returns how many messages it converted.
    async fn migrate(&self) -> Result<u64, StoreError>;

    /// Checks that the store answers now.
    async fn ping(&self) -> Result<(), StoreError>;
}
