//! The store's layout across versions: a marker of the version the data follows, and the
//! conversion `mess-chat migrate` runs on an earlier version's messages (UUID ids and named
//! types) into this version's (integer ids and types).
//!
//! The conversion runs while no instance serves. Each message keeps its text, times and sequence
//! number and gets an id made from its `sent_time` (so ids stay time-ordered), unique across the
//! database. A message is converted in three steps that a crash can interrupt anywhere: the old
//! document gives up its sequence number (negated) and names its successor, the successor is
//! inserted, the old document goes. A run after a crash finishes what it finds half done.

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use uuid::Uuid;

use super::{
    LEGACY, MongoStore, SCHEMA_COLLECTION, SEQ, from_date, integer, is_duplicate_key, malformed,
    message_to_doc,
};
use crate::model::{Alias, ChatMessage, MessageId, MessageProperties, MessageType, RoomName};
use crate::store::migration::MigrationIds;
use crate::store::{SCHEMA_VERSION, Schema, StoreError};

const SCHEMA_ID: &str = "schema";
/// What marks a message being converted: the id of its successor.
const MIGRATING_TO: &str = "migrating_to";

impl MongoStore {
    /// What the database holds: the marker says, or, without one, whether anything is there.
    pub(super) async fn schema_state(&self) -> Result<Schema, StoreError> {
        let schema = self.db.collection::<Document>(SCHEMA_COLLECTION);
        if let Some(marker) = schema.find_one(doc! { "_id": SCHEMA_ID }).await? {
            let version = integer(&marker, "version").unwrap_or(0);
            return match version.cmp(&SCHEMA_VERSION) {
                std::cmp::Ordering::Equal => Ok(Schema::Current),
                std::cmp::Ordering::Less => Ok(Schema::Legacy),
                std::cmp::Ordering::Greater => Err(StoreError::Legacy(format!(
                    "the database was written by a newer mess-chat (layout {version}); this one \
                     reads layout {SCHEMA_VERSION}"
                ))),
            };
        }
        // Earlier versions wrote no marker: a database with anything in it is theirs.
        let names = self.db.list_collection_names().await?;
        if names.iter().any(|n| !n.starts_with("system.")) {
            return Ok(Schema::Legacy);
        }
        self.mark_current().await?;
        Ok(Schema::Empty)
    }

    async fn mark_current(&self) -> Result<(), StoreError> {
        self.db
            .collection::<Document>(SCHEMA_COLLECTION)
            .update_one(
                doc! { "_id": SCHEMA_ID },
                doc! { "$set": { "version": SCHEMA_VERSION } },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Converts every room's messages of an earlier version, then marks the database current.
    pub(super) async fn migrate_legacy(&self) -> Result<u64, StoreError> {
        let mut ids = MigrationIds::default();
        let mut converted = 0;
        let mut names = self.db.list_collection_names().await?;
        names.sort();
        for name in names {
            let Ok(room) = RoomName::new(name.clone()) else {
                continue; // the service's own collections (`_users`, ...) and system ones
            };
            let messages = self.room(&room);
            // What a crash left half done first.
            let half_done: Vec<Document> = messages
                .find(doc! { MIGRATING_TO: { "$exists": true } })
                .await?
                .try_collect()
                .await?;
            for old in half_done {
                let next = integer(&old, MIGRATING_TO).ok_or_else(|| malformed("migrating_to"))?;
                let mut message = legacy_message(&old)?;
                message.mess_props.id = MessageId(next as u64);
                message.mess_props.sequence_number =
                    message.mess_props.sequence_number.map(|s| s.wrapping_neg());
                self.replace_legacy(&old, &message).await?;
                converted += 1;
            }
            let legacy: Vec<Document> = messages
                .find(doc! { "mess_props.id": { "$type": "string" } })
                .sort(doc! { SEQ: 1 })
                .await?
                .try_collect()
                .await?;
            for old in legacy {
                let mut message = legacy_message(&old)?;
                let Some(seq) = message.mess_props.sequence_number else {
                    return Err(malformed("a stored message without a sequence number"));
                };
                message.mess_props.id =
                    ids.id_for(message.mess_props.sent_time.timestamp_millis())?;
                // 1. The old document gives up its number and names its successor.
                messages
                    .update_one(
                        doc! { "_id": old.get("_id").cloned().unwrap_or(Bson::Null) },
                        doc! { "$set": {
                            SEQ: -(seq as i64),
                            MIGRATING_TO: message.mess_props.id.0 as i64,
                        } },
                    )
                    .await?;
                // 2. and 3.
                self.replace_legacy(&old, &message).await?;
                converted += 1;
            }
            tracing::info!(%room, "messages converted to integer ids");
        }
        self.mark_current().await?;
        Ok(converted)
    }

    /// Inserts the converted message (unless a run before did) and deletes the old document.
    async fn replace_legacy(
        &self,
        old: &Document,
        message: &ChatMessage,
    ) -> Result<(), StoreError> {
        let messages = self.room(&message.mess_props.room_name);
        match messages.insert_one(message_to_doc(message)).await {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        messages
            .delete_one(doc! { "_id": old.get("_id").cloned().unwrap_or(Bson::Null) })
            .await?;
        Ok(())
    }
}

/// A message document of an earlier version (a UUID id, a named type), read as a message whose
/// id is still to be given.
fn legacy_message(d: &Document) -> Result<ChatMessage, StoreError> {
    let p = d.get_document("mess_props").map_err(malformed)?;
    let text = |key: &str| p.get_str(key).map_err(malformed);
    let mess_type = match p.get("mess_type") {
        Some(Bson::String(name)) if name == "sent" => MessageType::Sent,
        Some(Bson::String(name)) if name == "received" => MessageType::Received,
        _ => integer(p, "mess_type")
            .and_then(|c| MessageType::from_code(c as u64))
            .ok_or_else(|| malformed(format!("{LEGACY}: an unknown mess_type")))?,
    };
    // Checked, though the id itself is replaced.
    Uuid::parse_str(text("id")?).map_err(malformed)?;
    let rec_time = match p.get("rec_time") {
        Some(Bson::DateTime(t)) => Some(from_date(*t)?),
        _ => None,
    };
    Ok(ChatMessage {
        message: d.get_str("message").map_err(malformed)?.to_string(),
        mess_props: MessageProperties {
            mess_type,
            room_name: RoomName::new(text("room_name")?).map_err(malformed)?,
            to_user: text("to_user")?.to_string(),
            from_user: Alias::new(text("from_user")?).map_err(malformed)?,
            sent_time: from_date(*p.get_datetime("sent_time").map_err(malformed)?)?,
            rec_time,
            sequence_number: integer(p, "sequence_number").map(|n| n as u64),
            id: MessageId(0),
        },
        dirty: false,
    })
}
