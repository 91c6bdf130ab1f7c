//! The embedded store: the store's logical layout in one `redb` file, durable on every commit.
//!
//! Tables: `room_lists` (name → JSON), `rooms` (room → JSON metadata), `memberships` (alias →
//! JSON list of the rooms it was added to), `owned` (alias → JSON list of the rooms it owns),
//! `messages` ((room, sequence number) → JSON message),
//! which holds one message per number, `message_ids` ((room, id) → sequence number), which makes
//! writes idempotent by id, and `users` (alias → JSON record with the token's hash). redb is
//! synchronous, so each call runs on tokio's blocking pool; its write transactions are serial,
//! which makes every read-modify-write here atomic. Message batches go through one writer that
//! commits every room's waiting batch in one transaction, so that a busy store pays one durable
//! commit for many rooms rather than one each.
//!
//! redb locks its file: a second process opening the same data directory is refused, since the
//! embedded back ends serve one process (several instances need RabbitMQ and MongoDB).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::migration::MigrationIds;
use super::{
    Created, InsertStop, Inserted, MemberChange, SCHEMA_VERSION, Schema, Store, StoreError,
};
use crate::model::{
    Alias, ChatMessage, MessageId, MessageProperties, MessageType, RoomListMeta, RoomMeta,
    RoomName, UserRecord,
};

const ROOM_LISTS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_lists");
/// redb's page cache (its default, 1 GiB, let the service's memory grow with the data written).
const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// The rooms of each room list, one row each ((list, room) → when added, in milliseconds), so
/// that adding a room never rewrites a list that grows; a list's `rooms` in `room_lists` is
/// what an earlier version wrote, still read.
const LISTED: TableDefinition<(&str, &str), i64> = TableDefinition::new("listed_rooms");
const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const MESSAGE_IDS: TableDefinition<(&str, u128), u64> = TableDefinition::new("message_ids");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const MEMBERSHIPS: TableDefinition<&str, &[u8]> = TableDefinition::new("memberships");
const OWNED: TableDefinition<&str, &[u8]> = TableDefinition::new("owned");
const INSTANCES: TableDefinition<u16, &[u8]> = TableDefinition::new("instances");
const IDEMPOTENCY: TableDefinition<&str, u64> = TableDefinition::new("idempotency");
const SCHEMA: TableDefinition<&str, i64> = TableDefinition::new("schema");

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "mess-chat.redb";

/// A store in one file on local disk.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Message batches waiting for the writer, which commits them together.
    writes: Arc<Mutex<WriteQueue>>,
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
        let path = data_dir.join(FILE_NAME);
        let db = match Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Unavailable(format!(
                    "{} is in use by another mess-chat process: the embedded store serves one \
                     process (run several instances on RabbitMQ and MongoDB instead)",
                    path.display()
                )));
            }
            Err(e) => return Err(redb::Error::from(e).into()),
        };
        let txn = redb!(db.begin_write());
        redb!(txn.open_table(ROOM_LISTS));
        redb!(txn.open_table(LISTED));
        redb!(txn.open_table(ROOMS));
        redb!(txn.open_table(MESSAGES));
        redb!(txn.open_table(MESSAGE_IDS));
        redb!(txn.open_table(USERS));
        redb!(txn.open_table(MEMBERSHIPS));
        redb!(txn.open_table(OWNED));
        redb!(txn.open_table(INSTANCES));
        redb!(txn.open_table(IDEMPOTENCY));
        redb!(txn.open_table(SCHEMA));
        redb!(txn.commit());
        Ok(Self {
            db: Arc::new(db),
            writes: Arc::default(),
        })
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

/// Room batches waiting to be written, and whether a writer is at work on them. A std mutex:
/// held only to push or take jobs.
#[derive(Default)]
struct WriteQueue {
    jobs: Vec<WriteJob>,
    writing: bool,
}

/// One room's batch of messages (`(id, sequence number, encoded message)`, in order) and who
/// waits for the outcome.
struct WriteJob {
    room: RoomName,
    rows: Vec<(u128, u64, Vec<u8>)>,
    reply: tokio::sync::oneshot::Sender<Result<Option<InsertStop>, StoreError>>,
}

/// The writer: takes every batch queued, from every room, and writes them in one transaction
/// (one durable commit for all of them: redb commits one write transaction at a time, so a
/// commit per room's batch made the rooms queue on each other), until none is left. Each batch
/// stops at its first message already stored, as it would alone.
fn write_queued(db: &Database, writes: &Mutex<WriteQueue>) {
    loop {
        let jobs = {
            let mut queue = writes.lock().unwrap_or_else(|e| e.into_inner());
            if queue.jobs.is_empty() {
                queue.writing = false;
                return;
            }
            std::mem::take(&mut queue.jobs)
        };
        match write_jobs(db, &jobs) {
            Ok(stops) => {
                for (job, stop) in jobs.into_iter().zip(stops) {
                    let _ = job.reply.send(Ok(stop));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(StoreError::Unavailable(e.to_string())));
                }
            }
        }
    }
}

/// Writes the batches in one transaction; returns where each stopped, if it did.
fn write_jobs(db: &Database, jobs: &[WriteJob]) -> Result<Vec<Option<InsertStop>>, StoreError> {
    let txn = redb!(db.begin_write());
    let mut stops = Vec::with_capacity(jobs.len());
    {
        let mut ids = redb!(txn.open_table(MESSAGE_IDS));
        let mut table = redb!(txn.open_table(MESSAGES));
        for job in jobs {
            let name = job.room.as_str();
            let mut stopped = None;
            for (index, (id, seq, bytes)) in job.rows.iter().enumerate() {
                match collision(&ids, &table, name, *id, *seq)? {
                    Some(Inserted::Existing(_)) => {
                        stopped = Some(InsertStop::IdStored(index));
                        break;
                    }
                    Some(_) => {
                        stopped = Some(InsertStop::NumberTaken(index));
                        break;
                    }
                    None => {}
                }
                redb!(ids.insert((name, *id), *seq));
                redb!(table.insert((name, *seq), bytes.as_slice()));
            }
            stops.push(stopped);
        }
    }
    redb!(txn.commit());
    Ok(stops)
}

/// The key of the layout's version in the `schema` table.
const SCHEMA_KEY: &str = "version";

/// An instance number's lease.
#[derive(serde::Serialize, serde::Deserialize)]
struct Lease {
    holder: Uuid,
    /// Milliseconds since 1970.
    expires_ms: i64,
}

/// A message as earlier versions stored it: a UUID id (and a named type, which
/// [`MessageType`]'s reader takes as it is).
#[derive(serde::Deserialize)]
struct LegacyMessage {
    message: String,
    mess_props: LegacyProperties,
}

#[derive(serde::Deserialize)]
struct LegacyProperties {
    mess_type: MessageType,
    room_name: RoomName,
    to_user: String,
    from_user: Alias,
    sent_time: chrono::DateTime<chrono::Utc>,
    rec_time: Option<chrono::DateTime<chrono::Utc>>,
    sequence_number: Option<u64>,
    #[allow(dead_code)]
    id: Uuid,
}

impl LegacyMessage {
    fn into_current(self, id: MessageId) -> ChatMessage {
        let p = self.mess_props;
        ChatMessage {
            message: self.message,
            mess_props: MessageProperties {
                mess_type: p.mess_type,
                room_name: p.room_name,
                to_user: p.to_user,
                from_user: p.from_user,
                sent_time: p.sent_time,
                rec_time: p.rec_time,
                sequence_number: p.sequence_number,
                id,
            },
            dirty: false,
        }
    }
}

/// A JSON value of a table, if the key is there.
fn read_json<K, T>(
    table: &impl ReadableTable<K, &'static [u8]>,
    key: K::SelfType<'_>,
) -> Result<Option<T>, StoreError>
where
    K: redb::Key + 'static,
    T: DeserializeOwned,
{
    match redb!(table.get(key)) {
        Some(value) => decode(value.value()).map(Some),
        None => Ok(None),
    }
}

/// Changes the list of rooms `alias` was added to.
fn edit_memberships(
    txn: &redb::WriteTransaction,
    alias: &str,
    edit: impl FnOnce(&mut Vec<RoomName>),
) -> Result<(), StoreError> {
    edit_names(txn, MEMBERSHIPS, alias, edit)
}

/// Changes the list of rooms `alias` owns.
fn edit_owned(
    txn: &redb::WriteTransaction,
    alias: &str,
    edit: impl FnOnce(&mut Vec<RoomName>),
) -> Result<(), StoreError> {
    edit_names(txn, OWNED, alias, edit)
}

/// Changes a per-alias list of rooms in `table` (sorted, without duplicates; an empty list is
/// removed).
fn edit_names(
    txn: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    alias: &str,
    edit: impl FnOnce(&mut Vec<RoomName>),
) -> Result<(), StoreError> {
    let mut table = redb!(txn.open_table(table));
    let mut rooms: Vec<RoomName> = read_json(&table, alias)?.unwrap_or_default();
    edit(&mut rooms);
    rooms.sort();
    rooms.dedup();
    if rooms.is_empty() {
        redb!(table.remove(alias));
    } else {
        redb!(table.insert(alias, encode(&rooms)?.as_slice()));
    }
    Ok(())
}

/// A new, empty room list named `list`, made now.
fn empty_list(list: &str) -> RoomListMeta {
    let now = crate::model::now();
    RoomListMeta {
        name: list.to_string(),
        rooms: Vec::new(),
        create_time: now,
        modify_time: now,
    }
}

/// Changes a room's stored metadata in one write transaction; `None` if there is no such room.
fn edit_room(
    db: &Database,
    room: &RoomName,
    edit: impl FnOnce(&mut RoomMeta, &redb::WriteTransaction) -> Result<(), StoreError>,
) -> Result<Option<RoomMeta>, StoreError> {
    let txn = redb!(db.begin_write());
    let meta = {
        let mut rooms = redb!(txn.open_table(ROOMS));
        let Some(mut meta) = read_json::<&str, RoomMeta>(&rooms, room.as_str())? else {
            return Ok(None);
        };
        edit(&mut meta, &txn)?;
        meta.members.sort();
        meta.members.dedup();
        redb!(rooms.insert(room.as_str(), encode(&meta)?.as_slice()));
        meta
    };
    redb!(txn.commit());
    Ok(Some(meta))
}

/// Why a numbered message cannot be written at its place, if it cannot.
fn collision(
    ids: &impl ReadableTable<(&'static str, u128), u64>,
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    room: &str,
    id: u128,
    seq: u64,
) -> Result<Option<Inserted>, StoreError> {
    if let Some(first_seq) = redb!(ids.get((room, id))).map(|v| v.value()) {
        let stored = redb!(messages.get((room, first_seq))).ok_or_else(|| {
            StoreError::Malformed(format!("message id without message in {room}"))
        })?;
        return Ok(Some(Inserted::Existing(decode(stored.value())?)));
    }
    if redb!(messages.get((room, seq))).is_some() {
        return Ok(Some(Inserted::NumberTaken));
    }
    Ok(None)
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
        let meta = meta.clone();
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            {
                let mut lists = redb!(txn.open_table(ROOM_LISTS));
                let name = meta.name.as_str();
                let mut stored =
                    read_json::<_, RoomListMeta>(&lists, name)?.unwrap_or_else(|| RoomListMeta {
                        rooms: Vec::new(),
                        ..meta.clone()
                    });
                stored.modify_time = stored.modify_time.max(meta.modify_time);
                redb!(lists.insert(name, encode(&stored)?.as_slice()));
                let mut listed = redb!(txn.open_table(LISTED));
                let added = meta.modify_time.timestamp_millis();
                for room in &meta.rooms {
                    if redb!(listed.get((name, room.as_str()))).is_none() {
                        redb!(listed.insert((name, room.as_str()), added));
                    }
                }
            }
            redb!(txn.commit());
            Ok(())
        })
        .await
    }

    async fn load_room_list(&self, name: &str) -> Result<Option<RoomListMeta>, StoreError> {
        let name = name.to_string();
        self.blocking(move |db| {
            let txn = redb!(db.begin_read());
            let Some(mut meta) =
                read_json::<_, RoomListMeta>(&redb!(txn.open_table(ROOM_LISTS)), name.as_str())?
            else {
                return Ok(None);
            };
            let listed = redb!(txn.open_table(LISTED));
            for row in redb!(listed.range((name.as_str(), "")..)) {
                let (key, added) = redb!(row);
                let (list, room) = key.value();
                if list != name {
                    break;
                }
                meta.rooms
                    .push(RoomName::new(room).map_err(|e| StoreError::Malformed(e.to_string()))?);
                if let Some(added) = chrono::DateTime::from_timestamp_millis(added.value()) {
                    meta.modify_time = meta.modify_time.max(added);
                }
            }
            meta.rooms.sort();
            meta.rooms.dedup();
            Ok(Some(meta))
        })
        .await
    }

    async fn add_to_room_list(&self, list: &str, room: &RoomName) -> Result<(), StoreError> {
        let (list, room) = (list.to_string(), room.clone());
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            {
                let mut lists = redb!(txn.open_table(ROOM_LISTS));
                if redb!(lists.get(list.as_str())).is_none() {
                    redb!(lists.insert(list.as_str(), encode(&empty_list(&list))?.as_slice()));
                }
                let mut listed = redb!(txn.open_table(LISTED));
                let now = crate::model::now().timestamp_millis();
                redb!(listed.insert((list.as_str(), room.as_str()), now));
            }
            redb!(txn.commit());
            Ok(())
        })
        .await
    }

    async fn remove_from_room_list(&self, list: &str, room: &RoomName) -> Result<(), StoreError> {
        let (list, room) = (list.to_string(), room.clone());
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            {
                let mut listed = redb!(txn.open_table(LISTED));
                redb!(listed.remove((list.as_str(), room.as_str())));
                let mut lists = redb!(txn.open_table(ROOM_LISTS));
                let stored = read_json::<_, RoomListMeta>(&lists, list.as_str())?;
                if let Some(mut meta) = stored {
                    // A room an earlier version listed sits in the list's own rooms.
                    meta.rooms.retain(|r| *r != room);
                    meta.modify_time = crate::model::now();
                    redb!(lists.insert(list.as_str(), encode(&meta)?.as_slice()));
                }
            }
            redb!(txn.commit());
            Ok(())
        })
        .await
    }

    async fn create_room(&self, meta: &RoomMeta) -> Result<Created, StoreError> {
        let meta = meta.clone();
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            {
                let mut rooms = redb!(txn.open_table(ROOMS));
                if let Some(existing) = read_json(&rooms, meta.name.as_str())? {
                    return Ok(Created::Existing(existing));
                }
                redb!(rooms.insert(meta.name.as_str(), encode(&meta)?.as_slice()));
            }
            for alias in &meta.members {
                edit_memberships(&txn, alias.as_str(), |rooms| rooms.push(meta.name.clone()))?;
            }
            edit_owned(&txn, meta.owner_alias.as_str(), |rooms| {
                rooms.push(meta.name.clone())
            })?;
            redb!(txn.commit());
            Ok(Created::New)
        })
        .await
    }

    async fn save_room(&self, meta: &RoomMeta) -> Result<(), StoreError> {
        let meta = meta.clone();
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            let created = {
                let mut rooms = redb!(txn.open_table(ROOMS));
                let stored: Option<RoomMeta> = read_json(&rooms, meta.name.as_str())?;
                let (saved, created) = match stored {
                    Some(mut stored) => {
                        stored.modify_time = stored.modify_time.max(meta.modify_time);
                        (stored, false)
                    }
                    None => (meta.clone(), true),
                };
                redb!(rooms.insert(meta.name.as_str(), encode(&saved)?.as_slice()));
                created
            };
            if created {
                for alias in &meta.members {
                    edit_memberships(&txn, alias.as_str(), |rooms| rooms.push(meta.name.clone()))?;
                }
                edit_owned(&txn, meta.owner_alias.as_str(), |rooms| {
                    rooms.push(meta.name.clone())
                })?;
            }
            redb!(txn.commit());
            Ok(())
        })
        .await
    }

    async fn load_room(&self, room: &RoomName) -> Result<Option<RoomMeta>, StoreError> {
        let room = room.clone();
        self.blocking(move |db| {
            let txn = redb!(db.begin_read());
            read_json(&redb!(txn.open_table(ROOMS)), room.as_str())
        })
        .await
    }

    async fn add_member(
        &self,
        room: &RoomName,
        alias: &Alias,
    ) -> Result<Option<MemberChange>, StoreError> {
        let (room, alias) = (room.clone(), alias.clone());
        self.blocking(move |db| {
            let mut changed = false;
            let meta = edit_room(db, &room, |meta, txn| {
                changed = !meta.members.contains(&alias);
                if changed {
                    meta.members.push(alias.clone());
                    meta.version += 1;
                    meta.modify_time = meta.modify_time.max(crate::model::now());
                }
                edit_memberships(txn, alias.as_str(), |rooms| rooms.push(room.clone()))
            })?;
            Ok(meta.map(|meta| MemberChange { meta, changed }))
        })
        .await
    }

    async fn remove_member(
        &self,
        room: &RoomName,
        alias: &Alias,
    ) -> Result<Option<MemberChange>, StoreError> {
        let (room, alias) = (room.clone(), alias.clone());
        self.blocking(move |db| {
            let mut changed = false;
            let meta = edit_room(db, &room, |meta, txn| {
                changed = meta.members.contains(&alias);
                if changed {
                    meta.members.retain(|m| *m != alias);
                    meta.version += 1;
                    meta.modify_time = meta.modify_time.max(crate::model::now());
                }
                edit_memberships(txn, alias.as_str(), |rooms| rooms.retain(|r| *r != room))
            })?;
            Ok(meta.map(|meta| MemberChange { meta, changed }))
        })
        .await
    }

    async fn rooms_of(&self, alias: &Alias) -> Result<Vec<RoomName>, StoreError> {
        let alias = alias.clone();
        self.blocking(move |db| {
            let txn = redb!(db.begin_read());
            let rooms = read_json(&redb!(txn.open_table(MEMBERSHIPS)), alias.as_str())?;
            Ok(rooms.unwrap_or_default())
        })
        .await
    }

    async fn rooms_owned(&self, alias: &Alias) -> Result<u64, StoreError> {
        let alias = alias.clone();
        self.blocking(move |db| {
            let txn = redb!(db.begin_read());
            let rooms: Option<Vec<RoomName>> =
                read_json(&redb!(txn.open_table(OWNED)), alias.as_str())?;
            Ok(rooms.map_or(0, |r| r.len() as u64))
        })
        .await
    }

    async fn delete_room(&self, room: &RoomName) -> Result<(), StoreError> {
        let room = room.clone();
        self.blocking(move |db| {
            let name = room.as_str();
            let txn = redb!(db.begin_write());
            let meta: Option<RoomMeta> = {
                let mut rooms = redb!(txn.open_table(ROOMS));
                let meta = read_json(&rooms, name)?;
                redb!(rooms.remove(name));
                meta
            };
            if let Some(meta) = meta {
                for alias in &meta.members {
                    edit_memberships(&txn, alias.as_str(), |rooms| rooms.retain(|r| *r != room))?;
                }
                edit_owned(&txn, meta.owner_alias.as_str(), |rooms| {
                    rooms.retain(|r| *r != room)
                })?;
            }
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
        let id = u128::from(message.mess_props.id.0);
        let seq = message.mess_props.sequence_number.unwrap_or(0);
        let bytes = encode(message)?;
        self.blocking(move |db| {
            let name = room.as_str();
            let txn = redb!(db.begin_write());
            {
                let mut ids = redb!(txn.open_table(MESSAGE_IDS));
                let mut messages = redb!(txn.open_table(MESSAGES));
                if let Some(found) = collision(&ids, &messages, name, id, seq)? {
                    return Ok(found);
                }
                redb!(ids.insert((name, id), seq));
                redb!(messages.insert((name, seq), bytes.as_slice()));
            }
            redb!(txn.commit());
            Ok(Inserted::New)
        })
        .await
    }

    async fn existing_messages(
        &self,
        room: &RoomName,
        ids: &[MessageId],
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let (room, ids) = (room.clone(), ids.to_vec());
        self.blocking(move |db| {
            let name = room.as_str();
            let txn = redb!(db.begin_read());
            let id_table = redb!(txn.open_table(MESSAGE_IDS));
            let messages = redb!(txn.open_table(MESSAGES));
            let mut found = Vec::new();
            for id in ids {
                if let Some(seq) = redb!(id_table.get((name, u128::from(id.0)))) {
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
    ) -> Result<Option<InsertStop>, StoreError> {
        super::check_numbered(messages)?;
        let room = room.clone();
        let rows = messages
            .iter()
            .map(|m| {
                let seq = m.mess_props.sequence_number.unwrap_or(0);
                Ok((u128::from(m.mess_props.id.0), seq, encode(m)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let start_writer = {
            let mut queue = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            queue.jobs.push(WriteJob { room, rows, reply });
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            let (db, writes) = (self.db.clone(), self.writes.clone());
            tokio::task::spawn_blocking(move || write_queued(&db, &writes));
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer stopped".into()))?
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

    async fn lease_instance(
        &self,
        holder: Uuid,
        numbers: u16,
        ttl: Duration,
    ) -> Result<Option<u16>, StoreError> {
        self.blocking(move |db| {
            let now = crate::model::now().timestamp_millis();
            let txn = redb!(db.begin_write());
            let taken = {
                let mut leases = redb!(txn.open_table(INSTANCES));
                let mut taken = None;
                for number in 0..numbers {
                    let lease: Option<Lease> = read_json(&leases, number)?;
                    let free = lease.is_none_or(|l| l.expires_ms < now || l.holder == holder);
                    if free {
                        let lease = Lease {
                            holder,
                            expires_ms: now + ttl.as_millis() as i64,
                        };
                        redb!(leases.insert(number, encode(&lease)?.as_slice()));
                        taken = Some(number);
                        break;
                    }
                }
                taken
            };
            redb!(txn.commit());
            Ok(taken)
        })
        .await
    }

    async fn renew_instance(
        &self,
        number: u16,
        holder: Uuid,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            let renewed = {
                let mut leases = redb!(txn.open_table(INSTANCES));
                let lease: Option<Lease> = read_json(&leases, number)?;
                match lease {
                    Some(l) if l.holder == holder => {
                        let lease = Lease {
                            holder,
                            expires_ms: crate::model::now().timestamp_millis()
                                + ttl.as_millis() as i64,
                        };
                        redb!(leases.insert(number, encode(&lease)?.as_slice()));
                        true
                    }
                    _ => false,
                }
            };
            redb!(txn.commit());
            Ok(renewed)
        })
        .await
    }

    async fn release_instance(&self, number: u16, holder: Uuid) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            {
                let mut leases = redb!(txn.open_table(INSTANCES));
                let lease: Option<Lease> = read_json(&leases, number)?;
                if lease.is_some_and(|l| l.holder == holder) {
                    redb!(leases.remove(number));
                }
            }
            redb!(txn.commit());
            Ok(())
        })
        .await
    }

    async fn claim_idempotency_name(
        &self,
        name: &str,
        id: MessageId,
    ) -> Result<MessageId, StoreError> {
        let name = name.to_string();
        self.blocking(move |db| {
            let txn = redb!(db.begin_write());
            let claimed = {
                let mut names = redb!(txn.open_table(IDEMPOTENCY));
                let first = redb!(names.get(name.as_str())).map(|v| v.value());
                match first {
                    Some(first) => MessageId(first),
                    None => {
                        redb!(names.insert(name.as_str(), id.0));
                        id
                    }
                }
            };
            redb!(txn.commit());
            Ok(claimed)
        })
        .await
    }

    async fn schema(&self) -> Result<Schema, StoreError> {
        self.blocking(|db| {
            let txn = redb!(db.begin_write());
            let schema = {
                let mut marker = redb!(txn.open_table(SCHEMA));
                let version = redb!(marker.get(SCHEMA_KEY)).map(|v| v.value());
                match version {
                    Some(SCHEMA_VERSION) => Schema::Current,
                    Some(v) if v < SCHEMA_VERSION => Schema::Legacy,
                    Some(v) => {
                        return Err(StoreError::Legacy(format!(
                            "the data was written by a newer mess-chat (layout {v}); this one \
                             reads layout {SCHEMA_VERSION}"
                        )));
                    }
                    None => {
                        // Earlier versions wrote no marker: a store with rooms or users is theirs.
                        let rooms = redb!(txn.open_table(ROOMS));
                        let users = redb!(txn.open_table(USERS));
                        if redb!(rooms.is_empty()) && redb!(users.is_empty()) {
                            redb!(marker.insert(SCHEMA_KEY, SCHEMA_VERSION));
                            Schema::Empty
                        } else {
                            Schema::Legacy
                        }
                    }
                }
            };
            redb!(txn.commit());
            Ok(schema)
        })
        .await
    }

    async fn migrate(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let rooms: Vec<String> = {
                let txn = redb!(db.begin_read());
                let table = redb!(txn.open_table(ROOMS));
                let mut rooms = Vec::new();
                for entry in redb!(table.iter()) {
                    rooms.push(redb!(entry).0.value().to_string());
                }
                rooms
            };
            let mut ids = MigrationIds::default();
            let mut converted = 0;
            // One write transaction per room: a room is converted whole or not at all.
            for room in rooms {
                let name = room.as_str();
                let txn = redb!(db.begin_write());
                {
                    let mut messages = redb!(txn.open_table(MESSAGES));
                    let mut id_table = redb!(txn.open_table(MESSAGE_IDS));
                    let mut rows = Vec::new();
                    for entry in redb!(messages.range((name, 0)..=(name, u64::MAX))) {
                        let (key, value) = redb!(entry);
                        rows.push((key.value().1, value.value().to_vec()));
                    }
                    for (seq, bytes) in rows {
                        let Ok(legacy) = decode::<LegacyMessage>(&bytes) else {
                            continue; // converted already
                        };
                        let id = ids.id_for(legacy.mess_props.sent_time.timestamp_millis())?;
                        let message = legacy.into_current(id);
                        redb!(messages.insert((name, seq), encode(&message)?.as_slice()));
                        redb!(id_table.insert((name, u128::from(id.0)), seq));
                        converted += 1;
                    }
                    // The old ids were UUIDs, far above any 53-bit id.
                    redb!(
                        id_table.retain_in((name, 1u128 << 64)..=(name, u128::MAX), |_, _| false)
                    );
                }
                redb!(txn.commit());
            }
            let txn = redb!(db.begin_write());
            redb!(redb!(txn.open_table(SCHEMA)).insert(SCHEMA_KEY, SCHEMA_VERSION));
            redb!(txn.commit());
            Ok(converted)
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
