//! The embedded store: the store's logical layout in one `redb` file, durable on every commit.
//!
//! Tables: `room_lists` (name → JSON), `rooms` (room → JSON metadata), `messages`
//! ((room, sequence number) → JSON message), `message_ids` ((room, id) → sequence number), which
//! makes writes idempotent by id, and `users` (alias → JSON record with the token's hash). redb is synchronous, so each call runs on tokio's
//! blocking pool.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{Inserted, Store, StoreError};
use crate::model::{Alias, ChatMessage, RoomListMeta, RoomMeta, RoomName, UserRecord};

const ROOM_LISTS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_lists");
const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const MESSAGE_IDS: TableDefinition<(&str, u128), u64> = TableDefinition::new("message_ids");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "mess-chat.redb";

/// A store in one file on local disk.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Malformed(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Malformed(e.to_string()))
}

/// Runs a redb error-returning expression, turning its error into ours.
macro_rules! redb {
    ($e:expr) => {
        $e.map_err(|e| StoreError::from(redb::Error::from(e)))?
    };
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`, creating the directory if needed.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let db = redb!(Database::create(data_dir.join(FILE_NAME)));
        let txn = redb!(db.begin_write());
        redb!(txn.open_table(ROOM_LISTS));
        redb!(txn.open_table(ROOMS));
        redb!(txn.open_table(MESSAGES));
        redb!(txn.open_table(MESSAGE_IDS));
        redb!(txn.open_table(USERS));
        redb!(txn.commit());
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs `work` on the blocking pool with the database.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

fn messages_in(
    db: &Database,
    room: &str,
    below: u64,
    limit: usize,
) -> Result<Vec<ChatMessage>, StoreError> {
    let txn = redb!(db.begin_read());
    let table = redb!(txn.open_table(MESSAGES));
    let mut newest_first = Vec::with_capacity(limit.min(1024));
    for entry in redb!(table.range((room, 1)..(room, below)))
        .rev()
        .take(limit)
    {
        let (_, value) = redb!(entry);
        newest_first.push(decode::<ChatMessage>(value.value())?);
    }
    newest_first.reverse();
    Ok(newest_first)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn save_room_list(&self, meta: &RoomListMeta) -> Result<(), StoreError> {
        let (name, bytes) = (meta.name.clone(), encode(meta)?);
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            redb!(redb!(txn.open_table(ROOM_LISTS)).insert(name.as_str(), bytes.as_slice()));
            redb!(txn.commit());
            Ok(())
        })
        .await
    }

    async fn load_room_list(&self, name: &str) -> Result<Option<RoomListMeta>, StoreError> {
        let name = name.to_string();
        self.blocking(move |db| {
            let txn = redb!(db.begin_read());
            let table = redb!(txn.open_table(ROOM_LISTS));
            match redb!(table.get(name.as_str())) {
                Some(value) => decode(value.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn save_room(&self, meta: &RoomMeta) -> Result<(), StoreError> {
        let (name, bytes) = (meta.name.clone(), encode(meta)?);
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            redb!(redb!(txn.open_table(ROOMS)).insert(name.as_str(), bytes.as_slice()));
            redb!(txn.commit());
            Ok(())
        })
        .await
    }

    async fn load_room(&self, room: &RoomName) -> Result<Option<RoomMeta>, StoreError> {
        let room = room.clone();
        self.blocking(move |db| {
            let txn = redb!(db.begin_read());
            let table = redb!(txn.open_table(ROOMS));
            match redb!(table.get(room.as_str())) {
                Some(value) => decode(value.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn delete_room(&self, room: &RoomName) -> Result<(), StoreError> {
        let room = room.clone();
        self.blocking(move |db| {
            let name = room.as_str();
            let txn = redb!(db.begin_write());
            redb!(redb!(txn.open_table(ROOMS)).remove(name));
            redb!(
                redb!(txn.open_table(MESSAGES))
                    .retain_in((name, 0)..=(name, u64::MAX), |_, _| false)
            );
            redb!(
                redb!(txn.open_table(MESSAGE_IDS))
                    .retain_in((name, 0)..=(name, u128::MAX), |_, _| false)
            );
            redb!(txn.commit());
            Ok(())
        })
        .await
    }

    async fn insert_message(&self, message: &ChatMessage) -> Result<Inserted, StoreError> {
        super::check_numbered(std::slice::from_ref(message))?;
        let room = message.mess_props.room_name.clone();
        let id = message.mess_props.id.as_u128();
        let seq = message.mess_props.sequence_number.unwrap_or(0);
        let bytes = encode(message)?;
        self.blocking(move |db| {
            let name = room.as_str();
            let txn = redb!(db.begin_write());
            {
                let mut ids = redb!(txn.open_table(MESSAGE_IDS));
                let existing = redb!(ids.get((name, id))).map(|v| v.value());
                if let Some(first_seq) = existing {
                    let messages = redb!(txn.open_table(MESSAGES));
                    let stored = redb!(messages.get((name, first_seq))).ok_or_else(|| {
                        StoreError::Malformed(format!("message id without message in {name}"))
                    })?;
                    return Ok(Inserted::Existing(decode(stored.value())?));
                }
                redb!(ids.insert((name, id), seq));
                redb!(redb!(txn.open_table(MESSAGES)).insert((name, seq), bytes.as_slice()));
            }
            redb!(txn.commit());
            Ok(Inserted::New)
        })
        .await
    }

    async fn existing_messages(
        &self,
        room: &RoomName,
        ids: &[Uuid],
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let (room, ids) = (room.clone(), ids.to_vec());
        self.blocking(move |db| {
            let name = room.as_str();
            let txn = redb!(db.begin_read());
            let id_table = redb!(txn.open_table(MESSAGE_IDS));
            let messages = redb!(txn.open_table(MESSAGES));
            let mut found = Vec::new();
            for id in ids {
                if let Some(seq) = redb!(id_table.get((name, id.as_u128()))) {
                    let stored = redb!(messages.get((name, seq.value())))
                        .ok_or_else(|| StoreError::Malformed(format!("dangling id in {name}")))?;
                    found.push(decode(stored.value())?);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn insert_messages(
        &self,
        room: &RoomName,
        messages: &[ChatMessage],
    ) -> Result<Option<usize>, StoreError> {
        super::check_numbered(messages)?;
        let room = room.clone();
        let rows = messages
            .iter()
            .map(|m| {
                let seq = m.mess_props.sequence_number.unwrap_or(0);
                Ok((m.mess_props.id.as_u128(), seq, encode(m)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.blocking(move |db| {
            let name = room.as_str();
            let txn = redb!(db.begin_write());
            let mut stopped = None;
            {
                let mut ids = redb!(txn.open_table(MESSAGE_IDS));
                let mut table = redb!(txn.open_table(MESSAGES));
                for (index, (id, seq, bytes)) in rows.iter().enumerate() {
                    if redb!(ids.get((name, *id))).is_some() {
                        stopped = Some(index);
                        break;
                    }
                    redb!(ids.insert((name, *id), *seq));
                    redb!(table.insert((name, *seq), bytes.as_slice()));
                }
            }
            redb!(txn.commit());
            Ok(stopped)
        })
        .await
    }

    async fn latest_messages(
        &self,
        room: &RoomName,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let room = room.clone();
        self.blocking(move |db| messages_in(db, room.as_str(), u64::MAX, limit))
            .await
    }

    async fn messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let room = room.clone();
        self.blocking(move |db| messages_in(db, room.as_str(), before, limit))
            .await
    }

    async fn messages_after(
        &self,
        room: &RoomName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let room = room.clone();
        self.blocking(move |db| {
            let name = room.as_str();
            let txn = redb!(db.begin_read());
            let table = redb!(txn.open_table(MESSAGES));
            let mut found = Vec::with_capacity(limit.min(1024));
            let Some(first) = after.checked_add(1) else {
                return Ok(found);
            };
            for entry in redb!(table.range((name, first)..=(name, u64::MAX))).take(limit) {
                let (_, value) = redb!(entry);
                found.push(decode::<ChatMessage>(value.value())?);
            }
            Ok(found)
        })
        .await
    }

    async fn search_messages(
        &self,
        room: &RoomName,
        needle: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let (room, needle) = (room.clone(), needle.to_string());
        self.blocking(move |db| {
            let name = room.as_str();
            let txn = redb!(db.begin_read());
            let table = redb!(txn.open_table(MESSAGES));
            let mut found = Vec::new();
            for entry in redb!(table.range((name, 1)..=(name, u64::MAX))).rev() {
                if found.len() >= limit {
                    break;
                }
                let (_, value) = redb!(entry);
                let message: ChatMessage = decode(value.value())?;
                if super::text_matches(&message.message, &needle) {
                    found.push(message);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn create_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        let (alias, bytes) = (user.alias.clone(), encode(user)?);
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            {
                let mut users = redb!(txn.open_table(USERS));
                if redb!(users.get(alias.as_str())).is_some() {
                    return Ok(false);
                }
                redb!(users.insert(alias.as_str(), bytes.as_slice()));
            }
            redb!(txn.commit());
            Ok(true)
        })
        .await
    }

    async fn load_user(&self, alias: &Alias) -> Result<Option<UserRecord>, StoreError> {
        let alias = alias.clone();
        self.blocking(move |db| {
            let txn = redb!(db.begin_read());
            let users = redb!(txn.open_table(USERS));
            match redb!(users.get(alias.as_str())) {
                Some(value) => decode(value.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn last_sequence(&self, room: &RoomName) -> Result<u64, StoreError> {
        let room = room.clone();
        self.blocking(move |db| {
            let name = room.as_str();
            let txn = redb!(db.begin_read());
            let table = redb!(txn.open_table(MESSAGES));
            let last = redb!(table.range((name, 1)..=(name, u64::MAX))).next_back();
            match last {
                Some(entry) => Ok(redb!(entry).0.value().1),
                None => Ok(0),
            }
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|db| {
            redb!(db.begin_read());
            Ok(())
        })
        .await
    }
}
