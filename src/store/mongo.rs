//! MongoDB back end: the only module that imports `mongodb`.
//!
//! Layout (seed semantics): database `mess_chat` (configurable); one collection per room, named
//! after the room, with one metadata document `{_id: "meta", kind: "meta", ...}` and one document
//! per message `{_id: <id>, message, mess_props: {mess_type, room_name, to_user, from_user,
//! sent_time, rec_time, sequence_number, id}}`, indexed uniquely on `mess_props.id` and on
//! `mess_props.sequence_number`; a `_room_list` collection with one document per room list; and a
//! `_users` collection, one document per registered alias. Room names cannot start with `_`, so
//! no room can collide with these.

pub mod baseline;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, FindOneOptions, FindOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use uuid::Uuid;

use super::{Inserted, Store, StoreError};
use crate::model::{
    Alias, ChatMessage, MessageProperties, MessageType, RoomListMeta, RoomMeta, RoomName,
    UserRecord,
};

/// Collection holding the room lists' metadata.
pub const ROOM_LIST_COLLECTION: &str = "_room_list";
/// Collection holding registered users (alias and token hash).
pub const USERS_COLLECTION: &str = "_users";
/// How long an operation waits for a usable server before the store counts as unavailable.
pub const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);
const META_ID: &str = "meta";
const SEQ: &str = "mess_props.sequence_number";
const DUPLICATE_KEY: i32 = 11000;

/// A store in one MongoDB database.
pub struct MongoStore {
    db: Database,
    /// Rooms whose indexes this process has already ensured. A std mutex: never held across await.
    indexed: Mutex<HashSet<RoomName>>,
}

impl From<mongodb::error::Error> for StoreError {
    fn from(e: mongodb::error::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
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

impl MongoStore {
    /// Connects lazily to `url` and uses database `db_name`. Fails only on a malformed URL or name.
    pub async fn connect(url: &str, db_name: &str) -> Result<Self, StoreError> {
        validate_database_name(db_name).map_err(StoreError::Unavailable)?;
        let mut options = ClientOptions::parse(url).await?;
        options.app_name = Some("mess-chat".into());
        options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
        options.connect_timeout = Some(SERVER_SELECTION_TIMEOUT);
        let client = Client::with_options(options)?;
        Ok(Self {
            db: client.database(db_name),
            indexed: Mutex::new(HashSet::new()),
        })
    }

    /// Drops the whole database (used by tests to leave nothing behind).
    pub async fn drop_database(&self) -> Result<(), StoreError> {
        Ok(self.db.drop().await?)
    }

    fn room(&self, room: &RoomName) -> Collection<Document> {
        self.db.collection(room.as_str())
    }

    async fn ensure_indexes(&self, room: &RoomName) -> Result<(), StoreError> {
        let done = |set: &HashSet<RoomName>| set.contains(room);
        if done(&self.indexed.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(());
        }
        let by_id = IndexModel::builder()
            .keys(doc! { "mess_props.id": 1 })
            .options(
                IndexOptions::builder()
                    .name("message_id".to_string())
                    .unique(true)
                    .sparse(true)
                    .build(),
            )
            .build();
        let by_seq = IndexModel::builder()
            .keys(doc! { SEQ: 1 })
            .options(
                IndexOptions::builder()
                    .name("sequence_number".to_string())
                    .build(),
            )
            .build();
        self.room(room).create_indexes([by_id, by_seq]).await?;
        self.indexed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.clone());
        Ok(())
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
    let mess_type = match p.mess_type {
        MessageType::Sent => "sent",
        MessageType::Received => "received",
    };
    doc! {
        "_id": p.id.to_string(),
        "message": &m.message,
        "mess_props": {
            "mess_type": mess_type,
            "room_name": p.room_name.as_str(),
            "to_user": &p.to_user,
            "from_user": p.from_user.as_str(),
            "sent_time": date(p.sent_time),
            "rec_time": p.rec_time.map(date),
            "sequence_number": p.sequence_number.map(|s| s as i64),
            "id": p.id.to_string(),
        },
    }
}

fn message_from_doc(d: &Document) -> Result<ChatMessage, StoreError> {
    let p = d.get_document("mess_props").map_err(malformed)?;
    let text = |key: &str| p.get_str(key).map_err(malformed);
    let mess_type = match text("mess_type")? {
        "sent" => MessageType::Sent,
        "received" => MessageType::Received,
        other => return Err(malformed(format!("unknown mess_type {other:?}"))),
    };
    let rec_time = match p.get("rec_time") {
        Some(Bson::DateTime(t)) => Some(from_date(*t)?),
        _ => None,
    };
    let sequence_number = match p.get("sequence_number") {
        Some(Bson::Int64(n)) => Some(*n as u64),
        Some(Bson::Int32(n)) => Some(*n as u64),
        _ => None,
    };
    let mess_props = MessageProperties {
        mess_type,
        room_name: RoomName::new(text("room_name")?).map_err(malformed)?,
        to_user: text("to_user")?.to_string(),
        from_user: Alias::new(text("from_user")?).map_err(malformed)?,
        sent_time: from_date(*p.get_datetime("sent_time").map_err(malformed)?)?,
        rec_time,
        sequence_number,
        id: Uuid::parse_str(text("id")?).map_err(malformed)?,
    };
    Ok(ChatMessage {
        message: d.get_str("message").map_err(malformed)?.to_string(),
        mess_props,
        dirty: false,
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
        let document = doc! {
            "_id": &meta.name,
            "name": &meta.name,
            "rooms": names_to_bson(&meta.rooms),
            "create_time": date(meta.create_time),
            "modify_time": date(meta.modify_time),
        };
        self.db
            .collection::<Document>(ROOM_LIST_COLLECTION)
            .replace_one(doc! { "_id": &meta.name }, document)
            .upsert(true)
            .await?;
        Ok(())
    }

    async fn load_room_list(&self, name: &str) -> Result<Option<RoomListMeta>, StoreError> {
        let found = self
            .db
            .collection::<Document>(ROOM_LIST_COLLECTION)
            .find_one(doc! { "_id": name })
            .await?;
        let Some(d) = found else { return Ok(None) };
        Ok(Some(RoomListMeta {
            name: d.get_str("name").map_err(malformed)?.to_string(),
            rooms: names_from_doc(&d, "rooms")?,
            create_time: from_date(*d.get_datetime("create_time").map_err(malformed)?)?,
            modify_time: from_date(*d.get_datetime("modify_time").map_err(malformed)?)?,
        }))
    }

    async fn save_room(&self, meta: &RoomMeta) -> Result<(), StoreError> {
        self.ensure_indexes(&meta.name).await?;
        let document = doc! {
            "_id": META_ID,
            "kind": "meta",
            "name": meta.name.as_str(),
            "group_room": meta.group_room,
            "owner_alias": meta.owner_alias.as_str(),
            "members": names_to_bson(&meta.members),
            "create_time": date(meta.create_time),
            "modify_time": date(meta.modify_time),
        };
        self.room(&meta.name)
            .replace_one(doc! { "_id": META_ID }, document)
            .upsert(true)
            .await?;
        Ok(())
    }

    async fn load_room(&self, room: &RoomName) -> Result<Option<RoomMeta>, StoreError> {
        let Some(d) = self.room(room).find_one(doc! { "_id": META_ID }).await? else {
            return Ok(None);
        };
        self.ensure_indexes(room).await?;
        Ok(Some(RoomMeta {
            name: RoomName::new(d.get_str("name").map_err(malformed)?).map_err(malformed)?,
            group_room: d.get_bool("group_room").map_err(malformed)?,
            owner_alias: Alias::new(d.get_str("owner_alias").map_err(malformed)?)
                .map_err(malformed)?,
            members: names_from_doc(&d, "members")?,
            create_time: from_date(*d.get_datetime("create_time").map_err(malformed)?)?,
            modify_time: from_date(*d.get_datetime("modify_time").map_err(malformed)?)?,
        }))
    }

    async fn delete_room(&self, room: &RoomName) -> Result<(), StoreError> {
        self.room(room).drop().await?;
        self.indexed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room);
        Ok(())
    }

    async fn insert_message(&self, message: &ChatMessage) -> Result<Inserted, StoreError> {
        super::check_numbered(std::slice::from_ref(message))?;
        let room = &message.mess_props.room_name;
        self.ensure_indexes(room).await?;
        match self.room(room).insert_one(message_to_doc(message)).await {
            Ok(_) => Ok(Inserted::New),
            Err(e) if is_duplicate_key(&e) => {
                let id = message.mess_props.id.to_string();
                let stored = self
                    .room(room)
                    .find_one(doc! { "_id": id })
                    .await?
                    .ok_or_else(|| malformed("duplicate id reported but not found"))?;
                Ok(Inserted::Existing(message_from_doc(&stored)?))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn existing_messages(
        &self,
        room: &RoomName,
        ids: &[Uuid],
    ) -> Result<Vec<ChatMessage>, StoreError> {
        use futures_util::TryStreamExt;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
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
    ) -> Result<Option<usize>, StoreError> {
        super::check_numbered(messages)?;
        if messages.is_empty() {
            return Ok(None);
        }
        self.ensure_indexes(room).await?;
        // Ordered: the server stops at the first failure, so what is stored is always a prefix.
        let docs = messages.iter().map(message_to_doc);
        match self.room(room).insert_many(docs).ordered(true).await {
            Ok(_) => Ok(None),
            Err(e) => match first_duplicate(&e) {
                Some(index) => Ok(Some(index)),
                None => Err(e.into()),
            },
        }
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

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }
}
