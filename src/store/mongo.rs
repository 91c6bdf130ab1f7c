//! MongoDB back end: the only module that imports `mongodb`.
//!
//! Layout (seed semantics): database `mess_chat` (configurable); one collection per room, named
//! after the room, with one metadata document `{_id: "meta", kind: "meta", ...}` and one document
//! per message `{_id: <id>, message, mess_props: {mess_type, room_name, to_user, from_user,
//! sent_time, rec_time, sequence_number, id}}`, `_id` being the message id, with a unique index on
//! `mess_props.sequence_number` (so a stale numberer's write fails instead of storing a duplicate
//! number); a `_room_list` collection with one document per room list; a `_memberships`
//! collection, one document per alias naming the rooms it was added to and those it owns (the
//! count of rooms owned is one lookup); and a `_users`
//! collection, one document per registered alias. Room names cannot start with `_`, so no room
//! can collide with these.
//!
//! Every change that decides something is one atomic write: a room is created by inserting its
//! metadata document, members change by `$addToSet` / `$pull`, the room list likewise.

pub mod baseline;
mod combine;
mod migrate;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, FindOneOptions, FindOptions, IndexOptions, ReadConcern,
    ReturnDocument, WriteConcern, WriteModel,
};
use mongodb::{Client, Collection, Database, IndexModel};
use uuid::Uuid;

use super::{Created, InsertStop, Inserted, MemberChange, Schema, Store, StoreError};
use crate::model::{
    Alias, ChatMessage, MessageId, MessageProperties, MessageType, RoomListMeta, RoomMeta,
    RoomName, UserRecord,
};

/// Collection holding the room lists' metadata (earlier versions also kept each list's rooms
/// there, in one growing array: still read, no longer written).
pub const ROOM_LIST_COLLECTION: &str = "_room_list";
/// Collection holding the rooms of the room lists, one document per room (`{_id: room, list,
/// added}`): adding a room is one small insert, however many rooms there are (an update of one
/// shared array slowed to 26 rooms/s at 2,500 rooms).
pub const LISTED_ROOMS_COLLECTION: &str = "_room_list_rooms";
/// Collection holding registered users (alias and token hash).
pub const USERS_COLLECTION: &str = "_users";
/// Collection holding, per alias, the rooms it was added to and those it owns
/// (`{_id: alias, rooms: [...], owned: [...]}`).
pub const MEMBERSHIPS_COLLECTION: &str = "_memberships";
/// Collection holding the instance-number leases (`{_id: number, holder, expires}`).
pub const INSTANCES_COLLECTION: &str = "_instances";
/// Collection holding the ids of messages sent with an idempotency key (`{_id: name, id}`).
pub const IDEMPOTENCY_COLLECTION: &str = "_idempotency";
/// Collection holding the layout's version (`{_id: "schema", version}`).
pub const SCHEMA_COLLECTION: &str = "_schema";
/// What a reader of data of an earlier version is told.
const LEGACY: &str = "the database holds messages of an earlier mess-chat (UUID ids, named \
    types): stop every instance and run `mess-chat migrate` with the same --mongo-url, \
    --mongo-db and --amqp-url, then start again";
/// How long an operation waits for a usable server before the store counts as unavailable.
pub const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);
const META_ID: &str = "meta";
const SEQ: &str = "mess_props.sequence_number";
const DUPLICATE_KEY: i32 = 11000;
/// The unique index on the sequence number (sparse: the metadata document has none).
const SEQ_INDEX: &str = "sequence_number_unique";
/// Indexes of earlier versions: a unique index on `mess_props.id` (it only repeated `_id`) and a
/// non-unique one on the sequence number. Dropped when a room is first used.
const LEGACY_INDEXES: [&str; 2] = ["message_id", "sequence_number"];
/// MongoDB's code for "index not found" (dropping a legacy index that is not there).
const INDEX_NOT_FOUND: i32 = 27;

/// A store in one MongoDB database.
pub struct MongoStore {
    db: Database,
    /// Rooms whose indexes this process has already ensured. A std mutex: never held across await.
    indexed: Mutex<HashSet<RoomName>>,
    /// Room lists whose own document this process has seen (written once, not per room).
    lists: Mutex<HashSet<String>>,
    /// Writes the batches of many rooms together (messages, and a creation's small writes).
    combiner: combine::Combiner,
}

impl From<mongodb::error::Error> for StoreError {
    fn from(e: mongodb::error::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// The unique index on a room's sequence numbers: no two messages of a room hold one number.
fn sequence_index() -> IndexModel {
    IndexModel::builder()
        .keys(doc! { SEQ: 1 })
        .options(
            IndexOptions::builder()
                .name(SEQ_INDEX.to_string())
                .unique(true)
                .sparse(true)
                .build(),
        )
        .build()
}

/// Checks a database name against MongoDB's rules (and our stricter alphabet).
pub fn validate_database_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid database name {name:?}: use 1-63 ASCII letters, digits, '_' or '-'"
        ))
    }
}

/// The host and port of the first server a MongoDB URL names (none for a `mongodb+srv` URL,
/// whose servers only DNS knows).
pub fn first_server_address(url: &str) -> Option<(String, u16)> {
    use mongodb::options::{ConnectionString, HostInfo, ServerAddress};
    let HostInfo::HostIdentifiers(hosts) = ConnectionString::parse(url).ok()?.host_info else {
        return None;
    };
    match hosts.into_iter().next()? {
        ServerAddress::Tcp { host, port } => Some((host, port.unwrap_or(27017))),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

impl MongoStore {
    /// Connects lazily to `url` and uses database `db_name`. Fails only on a malformed URL or name.
    pub async fn connect(url: &str, db_name: &str) -> Result<Self, StoreError> {
        Self::open(url, db_name, combine::Rooms::Together).await
    }

    /// Like [`connect`](Self::connect), writing each room's batch alone, as against a server
    /// before MongoDB 8.0 (which has no client-level `bulkWrite`); the test suite runs the store
    /// conformance tests through it too.
    pub async fn connect_writing_rooms_alone(url: &str, db_name: &str) -> Result<Self, StoreError> {
        Self::open(url, db_name, combine::Rooms::Alone).await
    }

    async fn open(url: &str, db_name: &str, rooms: combine::Rooms) -> Result<Self, StoreError> {
        validate_database_name(db_name).map_err(StoreError::Unavailable)?;
        let mut options = ClientOptions::parse(url).await?;
        options.app_name = Some("mess-chat".into());
        options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
        options.connect_timeout = Some(SERVER_SELECTION_TIMEOUT);
        // On a replica set, a write is acknowledged once a majority of members journaled it (so
        // no election can roll it back: a message is acked to the broker, and a send answered
        // "stored", only after that), and reads see only such writes. The URL may say otherwise
        // (`w=`, `journal=`, `readConcernLevel=`).
        if options.write_concern.is_none() {
            options.write_concern = Some(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            );
        }
        if options.read_concern.is_none() {
            options.read_concern = Some(ReadConcern::majority());
        }
        let client = Client::with_options(options)?;
        let db = client.database(db_name);
        let combiner = combine::Combiner::start(db.clone(), db.write_concern().cloned(), rooms);
        Ok(Self {
            db,
            indexed: Mutex::new(HashSet::new()),
            lists: Mutex::new(HashSet::new()),
            combiner,
        })
    }

    /// Every alias the memberships index has seen, whether or not it is in a room now: what an
    /// operator (or a test cleaning up) needs to find every inbox queue the database's rooms
    /// made.
    pub async fn known_aliases(&self) -> Result<Vec<Alias>, StoreError> {
        use futures_util::TryStreamExt;
        let docs: Vec<Document> = self
            .memberships()
            .find(doc! {})
            .await?
            .try_collect()
            .await?;
        let mut aliases: Vec<Alias> = docs
            .iter()
            .filter_map(|d| d.get_str("_id").ok().and_then(|a| Alias::new(a).ok()))
            .collect();
        aliases.sort();
        Ok(aliases)
    }

    /// Drops the whole database (used by tests to leave nothing behind).
    pub async fn drop_database(&self) -> Result<(), StoreError> {
        Ok(self.db.drop().await?)
    }

    fn room(&self, room: &RoomName) -> Collection<Document> {
        self.db.collection(room.as_str())
    }

    /// Lists `room` in `list` (one document of its own; idempotent).
    async fn list_room(
        &self,
        list: &str,
        room: &RoomName,
        added: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let update = doc! { "$setOnInsert": { "list": list, "added": date(added) } };
        let filter = doc! { "_id": room.as_str() };
        let write = self
            .combiner
            .upsert(LISTED_ROOMS_COLLECTION, filter, update);
        self.upsert_all(vec![write]).await
    }

    /// Writes `upserts` (idempotent: `$setOnInsert`, `$addToSet`) until every one is done. Two
    /// upserts of one new document at once can meet a duplicate key (both tried the insert);
    /// the loser's write then stopped there, and redoing the batch finds the document.
    async fn upsert_all(&self, upserts: Vec<WriteModel>) -> Result<(), StoreError> {
        const TRIES: usize = 3;
        for _ in 0..TRIES {
            if self.combiner.write(upserts.clone()).await?.is_none() {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "{TRIES} tries of an idempotent upsert each met a duplicate key"
        )))
    }

    async fn ensure_indexes(&self, room: &RoomName) -> Result<(), StoreError> {
        let done = |set: &HashSet<RoomName>| set.contains(room);
        if done(&self.indexed.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(());
        }
        let collection = self.room(room);
        // One read says what is there (every room's first use after a start pays it, so it
        // does not try each change blindly).
        let names = match collection.list_index_names().await {
            Ok(names) => names,
            // A collection that does not exist yet has no index.
            Err(e) if command_code(&e) == Some(NAMESPACE_NOT_FOUND) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for legacy in LEGACY_INDEXES
            .into_iter()
            .filter(|l| names.iter().any(|n| n == l))
        {
            match collection.drop_index(legacy).await {
                Ok(()) => tracing::info!(%room, index = legacy, "dropped a legacy index"),
                Err(e) if command_code(&e) == Some(INDEX_NOT_FOUND) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !names.iter().any(|n| n == SEQ_INDEX) {
            collection.create_index(sequence_index()).await?;
        }
        self.indexed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.clone());
        Ok(())
    }

    /// Applies a membership `update` to the room's metadata if `filter` (which says the change is
    /// still to be made) matches; otherwise reports the metadata unchanged, or `None` if there is
    /// no such room.
    async fn change_members(
        &self,
        room: &RoomName,
        filter: Document,
        update: Document,
    ) -> Result<Option<MemberChange>, StoreError> {
        let after = self
            .room(room)
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(after) = after {
            return Ok(Some(MemberChange {
                meta: meta_from_doc(&after)?,
                changed: true,
            }));
        }
        let current = self.room(room).find_one(doc! { "_id": META_ID }).await?;
        current
            .map(|d| {
                Ok(MemberChange {
                    meta: meta_from_doc(&d)?,
                    changed: false,
                })
            })
            .transpose()
    }

    fn memberships(&self) -> Collection<Document> {
        self.db.collection(MEMBERSHIPS_COLLECTION)
    }

    /// Records that each of `aliases` was added to `room`, and that `owner` (one of them, for a
    /// new room) owns it, for [`Store::rooms_owned`] (upserting their membership documents).
    /// Done before the room's own change, so a failure leaves at most an index entry naming a
    /// room the alias is not in, which readers filter out.
    async fn index_members(
        &self,
        room: &RoomName,
        aliases: &[Alias],
        owner: Option<&Alias>,
    ) -> Result<(), StoreError> {
        let mut updates: Vec<(&Alias, Document)> = aliases
            .iter()
            .map(|alias| match owner == Some(alias) {
                true => (
                    alias,
                    doc! { "rooms": room.as_str(), "owned": room.as_str() },
                ),
                false => (alias, doc! { "rooms": room.as_str() }),
            })
            .collect();
        // An owner who is not a member (a room saved by `persist` so) still owns it.
        if let Some(owner) = owner.filter(|o| !aliases.contains(o)) {
            updates.push((owner, doc! { "owned": room.as_str() }));
        }
        let writes = updates
            .into_iter()
            .map(|(alias, added)| {
                let filter = doc! { "_id": alias.as_str() };
                let update = doc! { "$addToSet": added };
                self.combiner.upsert(MEMBERSHIPS_COLLECTION, filter, update)
            })
            .collect();
        self.upsert_all(writes).await
    }

    /// Up to `limit` messages matching `filter`, the highest numbers first when `newest` (then
    /// returned oldest first), else the lowest; always returned oldest first.
    async fn find_messages(
        &self,
        room: &RoomName,
        filter: Document,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        use futures_util::TryStreamExt;
        if limit == 0 {
            // MongoDB reads a limit of 0 as "no limit".
            return Ok(Vec::new());
        }
        let options = FindOptions::builder()
            .sort(doc! { SEQ: if newest { -1 } else { 1 } })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .build();
        let docs: Vec<Document> = self
            .room(room)
            .find(filter)
            .with_options(options)
            .await?
            .try_collect()
            .await?;
        let mut messages = docs
            .iter()
            .map(message_from_doc)
            .collect::<Result<Vec<_>, _>>()?;
        if newest {
            messages.reverse();
        }
        Ok(messages)
    }
}

fn date(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(t.timestamp_millis())
}

fn from_date(d: bson::DateTime) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(d.timestamp_millis())
        .ok_or_else(|| StoreError::Malformed("date out of range".into()))
}

fn malformed(what: impl std::fmt::Display) -> StoreError {
    StoreError::Malformed(what.to_string())
}

fn message_to_doc(m: &ChatMessage) -> Document {
    let p = &m.mess_props;
    let id = p.id.0 as i64;
    doc! {
        "_id": id,
        "message": &m.message,
        "mess_props": {
            "mess_type": i32::from(p.mess_type.code()),
            "room_name": p.room_name.as_str(),
            "to_user": &p.to_user,
            "from_user": p.from_user.as_str(),
            "sent_time": date(p.sent_time),
            "rec_time": p.rec_time.map(date),
            "sequence_number": p.sequence_number.map(|s| s as i64),
            "id": id,
        },
    }
}

/// An integer field of a document (stored as Int64, or Int32 by other writers).
fn integer(d: &Document, key: &str) -> Option<i64> {
    match d.get(key) {
        Some(Bson::Int64(n)) => Some(*n),
        Some(Bson::Int32(n)) => Some(i64::from(*n)),
        _ => None,
    }
}

fn message_from_doc(d: &Document) -> Result<ChatMessage, StoreError> {
    let p = d.get_document("mess_props").map_err(malformed)?;
    let text = |key: &str| p.get_str(key).map_err(malformed);
    let Some(id) = integer(p, "id") else {
        return Err(StoreError::Legacy(LEGACY.into()));
    };
    let mess_type = integer(p, "mess_type")
        .and_then(|code| MessageType::from_code(code as u64))
        .ok_or_else(|| malformed("mess_type is not 1 or 2"))?;
    let rec_time = match p.get("rec_time") {
        Some(Bson::DateTime(t)) => Some(from_date(*t)?),
        _ => None,
    };
    let sequence_number = integer(p, "sequence_number").map(|n| n as u64);
    let mess_props = MessageProperties {
        mess_type,
        room_name: RoomName::new(text("room_name")?).map_err(malformed)?,
        to_user: text("to_user")?.to_string(),
        from_user: Alias::new(text("from_user")?).map_err(malformed)?,
        sent_time: from_date(*p.get_datetime("sent_time").map_err(malformed)?)?,
        rec_time,
        sequence_number,
        id: MessageId(id as u64),
    };
    Ok(ChatMessage {
        message: d.get_str("message").map_err(malformed)?.to_string(),
        mess_props,
        dirty: false,
    })
}

fn meta_to_doc(meta: &RoomMeta) -> Document {
    doc! {
        "_id": META_ID,
        "kind": "meta",
        "name": meta.name.as_str(),
        "group_room": meta.group_room,
        "owner_alias": meta.owner_alias.as_str(),
        "members": names_to_bson(&meta.members),
        "create_time": date(meta.create_time),
        "modify_time": date(meta.modify_time),
        "version": meta.version as i64,
    }
}

fn meta_from_doc(d: &Document) -> Result<RoomMeta, StoreError> {
    let mut members: Vec<Alias> = names_from_doc(d, "members")?;
    members.sort();
    members.dedup();
    Ok(RoomMeta {
        name: RoomName::new(d.get_str("name").map_err(malformed)?).map_err(malformed)?,
        group_room: d.get_bool("group_room").map_err(malformed)?,
        owner_alias: Alias::new(d.get_str("owner_alias").map_err(malformed)?).map_err(malformed)?,
        members,
        create_time: from_date(*d.get_datetime("create_time").map_err(malformed)?)?,
        modify_time: from_date(*d.get_datetime("modify_time").map_err(malformed)?)?,
        version: match d.get("version") {
            Some(Bson::Int64(v)) => *v as u64,
            Some(Bson::Int32(v)) => *v as u64,
            _ => 0,
        },
    })
}

fn names_to_bson<T: AsRef<str>>(names: &[T]) -> Vec<Bson> {
    names
        .iter()
        .map(|n| Bson::String(n.as_ref().into()))
        .collect()
}

fn names_from_doc<T>(d: &Document, key: &str) -> Result<Vec<T>, StoreError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    d.get_array(key)
        .map_err(malformed)?
        .iter()
        .map(|b| {
            b.as_str()
                .ok_or_else(|| malformed(format!("{key} holds a non-string")))?
                .parse()
                .map_err(malformed)
        })
        .collect()
}

/// `text` as a regular expression matching itself.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// MongoDB's code for "namespace not found" (an operation on a collection not created yet).
const NAMESPACE_NOT_FOUND: i32 = 26;

/// The server's error code of a failed command, if that is what `e` is.
fn command_code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY)
}

/// Where an ordered bulk insert stopped because an id was already stored, if that is why.
fn first_duplicate(e: &mongodb::error::Error) -> Option<usize> {
    match &*e.kind {
        ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => {
            match failure.write_errors.as_deref() {
                Some([only]) if only.code == DUPLICATE_KEY => Some(only.index),
                _ => None,
            }
        }
        _ => None,
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn save_room_list(&self, meta: &RoomListMeta) -> Result<(), StoreError> {
        let update = doc! {
            "$setOnInsert": { "name": &meta.name, "create_time": date(meta.create_time) },
            "$max": { "modify_time": date(meta.modify_time) },
        };
        self.db
            .collection::<Document>(ROOM_LIST_COLLECTION)
            .update_one(doc! { "_id": &meta.name }, update)
            .upsert(true)
            .await?;
        for room in &meta.rooms {
            self.list_room(&meta.name, room, meta.modify_time).await?;
        }
        Ok(())
    }

    async fn load_room_list(&self, name: &str) -> Result<Option<RoomListMeta>, StoreError> {
        let found = self
            .db
            .collection::<Document>(ROOM_LIST_COLLECTION)
            .find_one(doc! { "_id": name })
            .await?;
        let Some(d) = found else { return Ok(None) };
        let mut rooms: Vec<RoomName> = if d.contains_key("rooms") {
            names_from_doc(&d, "rooms")?
        } else {
            Vec::new()
        };
        let mut modify_time = from_date(*d.get_datetime("modify_time").map_err(malformed)?)?;
        use futures_util::TryStreamExt;
        let mut listed = self
            .db
            .collection::<Document>(LISTED_ROOMS_COLLECTION)
            .find(doc! { "list": name })
            .await?;
        while let Some(entry) = listed.try_next().await? {
            rooms.push(
                entry
                    .get_str("_id")
                    .map_err(malformed)?
                    .parse()
                    .map_err(malformed)?,
            );
            let added = from_date(*entry.get_datetime("added").map_err(malformed)?)?;
            modify_time = modify_time.max(added);
        }
        rooms.sort();
        rooms.dedup();
        Ok(Some(RoomListMeta {
            name: d.get_str("name").map_err(malformed)?.to_string(),
            rooms,
            create_time: from_date(*d.get_datetime("create_time").map_err(malformed)?)?,
            modify_time,
        }))
    }

    async fn add_to_room_list(&self, list: &str, room: &RoomName) -> Result<(), StoreError> {
        let now = crate::model::now();
        // The list's own document is written once, not on every room.
        let known = |lists: &HashSet<String>| lists.contains(list);
        if !known(&self.lists.lock().unwrap_or_else(|e| e.into_inner())) {
            let update = doc! {
                "$setOnInsert": { "name": list, "create_time": date(now), "modify_time": date(now) },
            };
            self.db
                .collection::<Document>(ROOM_LIST_COLLECTION)
                .update_one(doc! { "_id": list }, update)
                .upsert(true)
                .await?;
            self.lists
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(list.to_string());
        }
        self.list_room(list, room, now).await
    }

    async fn remove_from_room_list(&self, list: &str, room: &RoomName) -> Result<(), StoreError> {
        self.db
            .collection::<Document>(LISTED_ROOMS_COLLECTION)
            .delete_one(doc! { "_id": room.as_str(), "list": list })
            .await?;
        // A room listed by an earlier version sits in the list's array.
        let update = doc! {
            "$set": { "modify_time": date(crate::model::now()) },
            "$pull": { "rooms": room.as_str() },
        };
        self.db
            .collection::<Document>(ROOM_LIST_COLLECTION)
            .update_one(doc! { "_id": list, "rooms": room.as_str() }, update)
            .await?;
        Ok(())
    }

    async fn create_room(&self, meta: &RoomMeta) -> Result<Created, StoreError> {
        // A new room's collection has no index of an earlier version to drop (an existing one
        // has its indexes seen to on first use), so only the sequence index is made here.
        self.room(&meta.name).create_index(sequence_index()).await?;
        let insert = self.combiner.insert(meta.name.as_str(), meta_to_doc(meta));
        match self.combiner.write(vec![insert]).await? {
            None => {
                self.indexed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(meta.name.clone());
                let owner = Some(&meta.owner_alias);
                if let Err(e) = self.index_members(&meta.name, &meta.members, owner).await {
                    // Undone, so that a failed creation leaves no room behind, nor counts as
                    // one its owner owns.
                    let _ = self
                        .room(&meta.name)
                        .delete_one(doc! { "_id": META_ID })
                        .await;
                    let _ = self
                        .memberships()
                        .update_one(
                            doc! { "_id": meta.owner_alias.as_str() },
                            doc! { "$pull": { "owned": meta.name.as_str() } },
                        )
                        .await;
                    return Err(e);
                }
                Ok(Created::New)
            }
            Some(_) => match self.load_room(&meta.name).await? {
                Some(existing) => Ok(Created::Existing(existing)),
                // Deleted between the two calls: the caller may try again.
                None => Err(StoreError::Unavailable(format!(
                    "room {} was deleted while being created",
                    meta.name
                ))),
            },
        }
    }

    async fn save_room(&self, meta: &RoomMeta) -> Result<(), StoreError> {
        self.ensure_indexes(&meta.name).await?;
        let mut created = meta_to_doc(meta);
        created.remove("_id");
        let modify_time = created
            .remove("modify_time")
            .unwrap_or(Bson::DateTime(date(meta.modify_time)));
        let update = doc! {
            "$setOnInsert": created,
            "$max": { "modify_time": modify_time },
        };
        let result = self
            .room(&meta.name)
            .update_one(doc! { "_id": META_ID }, update)
            .upsert(true)
            .await?;
        if result.upserted_id.is_some() {
            let owner = Some(&meta.owner_alias);
            self.index_members(&meta.name, &meta.members, owner).await?;
        }
        Ok(())
    }

    async fn load_room(&self, room: &RoomName) -> Result<Option<RoomMeta>, StoreError> {
        let Some(d) = self.room(room).find_one(doc! { "_id": META_ID }).await? else {
            return Ok(None);
        };
        self.ensure_indexes(room).await?;
        meta_from_doc(&d).map(Some)
    }

    async fn add_member(
        &self,
        room: &RoomName,
        alias: &Alias,
    ) -> Result<Option<MemberChange>, StoreError> {
        self.index_members(room, std::slice::from_ref(alias), None)
            .await?;
        let update = doc! {
            "$addToSet": { "members": alias.as_str() },
            "$inc": { "version": 1_i64 },
            "$max": { "modify_time": date(crate::model::now()) },
        };
        let filter = doc! { "_id": META_ID, "members": { "$ne": alias.as_str() } };
        self.change_members(room, filter, update).await
    }

    async fn remove_member(
        &self,
        room: &RoomName,
        alias: &Alias,
    ) -> Result<Option<MemberChange>, StoreError> {
        let update = doc! {
            "$pull": { "members": alias.as_str() },
            "$inc": { "version": 1_i64 },
            "$max": { "modify_time": date(crate::model::now()) },
        };
        let filter = doc! { "_id": META_ID, "members": alias.as_str() };
        let change = self.change_members(room, filter, update).await?;
        // The index entry only spares a scan; a stale one is filtered out by readers.
        if let Err(e) = self
            .memberships()
            .update_one(
                doc! { "_id": alias.as_str() },
                doc! { "$pull": { "rooms": room.as_str() } },
            )
            .await
        {
            tracing::warn!(%room, %alias, error = %e, "membership index not updated");
        }
        Ok(change)
    }

    async fn rooms_of(&self, alias: &Alias) -> Result<Vec<RoomName>, StoreError> {
        let Some(d) = self
            .memberships()
            .find_one(doc! { "_id": alias.as_str() })
            .await?
        else {
            return Ok(Vec::new());
        };
        let mut rooms: Vec<RoomName> = names_from_doc(&d, "rooms")?;
        rooms.sort();
        Ok(rooms)
    }

    async fn rooms_owned(&self, alias: &Alias) -> Result<u64, StoreError> {
        let found = self
            .memberships()
            .find_one(doc! { "_id": alias.as_str() })
            .projection(doc! { "owned": 1 })
            .await?;
        Ok(found
            .and_then(|d| d.get_array("owned").ok().map(|owned| owned.len() as u64))
            .unwrap_or(0))
    }

    async fn delete_room(&self, room: &RoomName) -> Result<(), StoreError> {
        self.room(room).drop().await?;
        self.indexed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room);
        if let Err(e) = self
            .memberships()
            .update_many(
                doc! { "$or": [{ "rooms": room.as_str() }, { "owned": room.as_str() }] },
                doc! { "$pull": { "rooms": room.as_str(), "owned": room.as_str() } },
            )
            .await
        {
            tracing::warn!(%room, error = %e, "membership index not updated");
        }
        Ok(())
    }

    async fn insert_message(&self, message: &ChatMessage) -> Result<Inserted, StoreError> {
        super::check_numbered(std::slice::from_ref(message))?;
        let room = &message.mess_props.room_name;
        self.ensure_indexes(room).await?;
        match self.room(room).insert_one(message_to_doc(message)).await {
            Ok(_) => Ok(Inserted::New),
            Err(e) if is_duplicate_key(&e) => {
                let id = message.mess_props.id.0 as i64;
                match self.room(room).find_one(doc! { "_id": id }).await? {
                    Some(stored) => Ok(Inserted::Existing(message_from_doc(&stored)?)),
                    None => Ok(Inserted::NumberTaken),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn existing_messages(
        &self,
        room: &RoomName,
        ids: &[MessageId],
    ) -> Result<Vec<ChatMessage>, StoreError> {
        use futures_util::TryStreamExt;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0 as i64).collect();
        let docs: Vec<Document> = self
            .room(room)
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?;
        docs.iter().map(message_from_doc).collect()
    }

    async fn insert_messages(
        &self,
        room: &RoomName,
        messages: &[ChatMessage],
    ) -> Result<Option<InsertStop>, StoreError> {
        super::check_numbered(messages)?;
        if messages.is_empty() {
            return Ok(None);
        }
        self.ensure_indexes(room).await?;
        // Ordered: the server stops at the first failure, so what is stored is always a prefix.
        let collection = room.as_str();
        let writes = messages
            .iter()
            .map(|m| self.combiner.insert(collection, message_to_doc(m)))
            .collect();
        let Some(index) = self.combiner.write(writes).await? else {
            return Ok(None);
        };
        // Two unique keys can collide: `_id` (this message is stored already) or the sequence
        // number (another message holds it). The message's own id decides which.
        let id = messages[index].mess_props.id;
        let stored = self.existing_messages(room, &[id]).await?;
        Ok(Some(if stored.is_empty() {
            InsertStop::NumberTaken(index)
        } else {
            InsertStop::IdStored(index)
        }))
    }

    async fn latest_messages(
        &self,
        room: &RoomName,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.find_messages(room, doc! { SEQ: { "$gte": 1_i64 } }, limit, true)
            .await
    }

    async fn messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let filter = doc! { SEQ: { "$gte": 1_i64, "$lt": before } };
        self.find_messages(room, filter, limit, true).await
    }

    async fn messages_after(
        &self,
        room: &RoomName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let filter = doc! { SEQ: { "$gt": after } };
        self.find_messages(room, filter, limit, false).await
    }

    async fn search_messages(
        &self,
        room: &RoomName,
        needle: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        // The regex narrows the candidates on the server; the shared rule decides.
        let filter = doc! {
            SEQ: { "$gte": 1_i64 },
            "message": { "$regex": regex_escape(needle), "$options": "i" },
        };
        let mut found = self.find_messages(room, filter, limit, true).await?;
        found.retain(|m| super::text_matches(&m.message, needle));
        found.reverse();
        Ok(found)
    }

    async fn create_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        let document = doc! {
            "_id": user.alias.as_str(),
            "alias": user.alias.as_str(),
            "token_hash": &user.token_hash,
            "create_time": date(user.create_time),
        };
        let users = self.db.collection::<Document>(USERS_COLLECTION);
        match users.insert_one(document).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn load_user(&self, alias: &Alias) -> Result<Option<UserRecord>, StoreError> {
        let users = self.db.collection::<Document>(USERS_COLLECTION);
        let Some(d) = users.find_one(doc! { "_id": alias.as_str() }).await? else {
            return Ok(None);
        };
        Ok(Some(UserRecord {
            alias: alias.clone(),
            token_hash: d.get_str("token_hash").map_err(malformed)?.to_string(),
            create_time: from_date(*d.get_datetime("create_time").map_err(malformed)?)?,
        }))
    }

    async fn last_sequence(&self, room: &RoomName) -> Result<u64, StoreError> {
        let options = FindOneOptions::builder()
            .sort(doc! { SEQ: -1 })
            .projection(doc! { SEQ: 1 })
            .build();
        let found = self
            .room(room)
            .find_one(doc! { SEQ: { "$gte": 1_i64 } })
            .with_options(options)
            .await?;
        let Some(d) = found else { return Ok(0) };
        let seq = d
            .get_document("mess_props")
            .and_then(|p| p.get_i64("sequence_number"))
            .map_err(malformed)?;
        Ok(seq as u64)
    }

    async fn lease_instance(
        &self,
        holder: Uuid,
        numbers: u16,
        ttl: Duration,
    ) -> Result<Option<u16>, StoreError> {
        let now = crate::model::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or_default();
        let leases = self.db.collection::<Document>(INSTANCES_COLLECTION);
        for number in 0..numbers {
            // Free (no document), expired, or already ours: the filter matches or the upsert
            // inserts; held by someone else: the upsert collides with their document.
            let filter = doc! {
                "_id": i32::from(number),
                "$or": [
                    { "expires": { "$lt": date(now) } },
                    { "holder": holder.to_string() },
                ],
            };
            let update = doc! {
                "$set": { "holder": holder.to_string(), "expires": date(expires) },
            };
            match leases.update_one(filter, update).upsert(true).await {
                Ok(_) => return Ok(Some(number)),
                Err(e) if is_duplicate_key(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    async fn renew_instance(
        &self,
        number: u16,
        holder: Uuid,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let expires = crate::model::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
        let renewed = self
            .db
            .collection::<Document>(INSTANCES_COLLECTION)
            .update_one(
                doc! { "_id": i32::from(number), "holder": holder.to_string() },
                doc! { "$set": { "expires": date(expires) } },
            )
            .await?;
        Ok(renewed.matched_count == 1)
    }

    async fn release_instance(&self, number: u16, holder: Uuid) -> Result<(), StoreError> {
        self.db
            .collection::<Document>(INSTANCES_COLLECTION)
            .delete_one(doc! { "_id": i32::from(number), "holder": holder.to_string() })
            .await?;
        Ok(())
    }

    async fn claim_idempotency_name(
        &self,
        name: &str,
        id: MessageId,
    ) -> Result<MessageId, StoreError> {
        let names = self.db.collection::<Document>(IDEMPOTENCY_COLLECTION);
        match names
            .insert_one(doc! { "_id": name, "id": id.0 as i64 })
            .await
        {
            Ok(_) => Ok(id),
            Err(e) if is_duplicate_key(&e) => {
                let found = names
                    .find_one(doc! { "_id": name })
                    .await?
                    .ok_or_else(|| malformed("an idempotency name vanished"))?;
                let first = integer(&found, "id").ok_or_else(|| malformed("id is not a number"))?;
                Ok(MessageId(first as u64))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn schema(&self) -> Result<Schema, StoreError> {
        self.schema_state().await
    }

    async fn migrate(&self) -> Result<u64, StoreError> {
        self.migrate_legacy().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }
}

#[cfg(test)]
mod address_tests {
    use super::first_server_address;

    #[test]
    fn the_first_servers_address_is_read_with_mongodbs_default_port() {
        assert_eq!(
            first_server_address("mongodb://127.0.0.1:27018,b/?retryWrites=false"),
            Some(("127.0.0.1".to_string(), 27018))
        );
        assert_eq!(
            first_server_address("mongodb://localhost/"),
            Some(("localhost".to_string(), 27017))
        );
        assert_eq!(first_server_address("not a url"), None);
    }
}
