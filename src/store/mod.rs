//! The store layer: one [`Store`] trait, two back ends.
//!
//! - [`mongo::MongoStore`]: MongoDB through the official `mongodb` crate (the only module that
//!   imports it). One collection per room, named after the room, holding one metadata document
//!   (`_id: "meta"`) and one document per message; plus `_room_list` and `_users` collections.
//! - [`embedded::EmbeddedStore`]: the same logical layout in one `redb` file on disk.
//!
//! Message writes are idempotent by message id: writing a message whose id is already stored
//! changes nothing and returns the stored copy (with its first sequence number).

pub mod embedded;
pub mod mongo;

use async_trait::async_trait;
use uuid::Uuid;

use crate::model::{Alias, ChatMessage, RoomListMeta, RoomMeta, RoomName, UserRecord};

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
    Unnumbered(Uuid),
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
}

/// Durable storage for rooms, messages and the room list.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Saves (replaces) the room list's metadata.
    async fn save_room_list(&self, meta: &RoomListMeta) -> Result<(), StoreError>;

    /// Loads the room list's metadata, if it was ever saved.
    async fn load_room_list(&self, name: &str) -> Result<Option<RoomListMeta>, StoreError>;

    /// Saves (replaces) a room's metadata document.
    async fn save_room(&self, meta: &RoomMeta) -> Result<(), StoreError>;

    /// Loads a room's metadata document, if the room exists.
    async fn load_room(&self, room: &RoomName) -> Result<Option<RoomMeta>, StoreError>;

    /// Deletes a room: its metadata and all its messages.
    async fn delete_room(&self, room: &RoomName) -> Result<(), StoreError>;

    /// Stores one numbered message, idempotently by its id.
    async fn insert_message(&self, message: &ChatMessage) -> Result<Inserted, StoreError>;

    /// The stored copies of those of `ids` that the room already has.
    async fn existing_messages(
        &self,
        room: &RoomName,
        ids: &[Uuid],
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Stores a batch of numbered messages of one room, in order, in as few writes as the back
    /// end allows, and stops at the first message whose id is already stored: `None` when all
    /// were stored, `Some(i)` when `messages[i]` was found stored (those before it are stored,
    /// none after it were written). A failed write leaves at most a prefix stored.
    async fn insert_messages(
        &self,
        room: &RoomName,
        messages: &[ChatMessage],
    ) -> Result<Option<usize>, StoreError>;

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

    /// Checks that the store answers now.
    async fn ping(&self) -> Result<(), StoreError>;
}
