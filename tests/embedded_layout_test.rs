//! An embedded store written by the previous release (layout 2: message ids keyed by room
//! first) is moved to ids-first keys when opened, and still recognises every stored id: a
//! redelivered or retried message must not be stored twice across the upgrade.

mod common;

use common::{alias, room};
use mess_chat::model::{ChatMessage, MessageId, MessageProperties, MessageType, RoomName};
use mess_chat::store::embedded::{EmbeddedStore, FILE_NAME};
use mess_chat::store::{InsertStop, Schema, Store};
use redb::{Database, ReadableDatabase, TableDefinition, TableHandle};

const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const ROOM_MESSAGE_IDS: TableDefinition<(&str, u128), u64> = TableDefinition::new("message_ids");
const SCHEMA: TableDefinition<&str, i64> = TableDefinition::new("schema");

/// A stored message of `room`, numbered `sequence`, with id `id`.
fn stored(room: &RoomName, sequence: u64, id: u64) -> ChatMessage {
    let mut props =
        MessageProperties::new_sent(room.clone(), alias("ann"), "bob".into(), MessageId(id));
    props.mess_type = MessageType::Received;
    props.rec_time = Some(props.sent_time);
    props.sequence_number = Some(sequence);
    ChatMessage {
        message: format!("message {sequence}"),
        mess_props: props,
        dirty: false,
    }
}

/// Writes three messages of `room` as layout 2 did: the messages by (room, number), their ids by
/// (room, id), and the layout's version.
fn plant_layout_2(dir: &std::path::Path, messages: &[ChatMessage]) {
    let db = Database::create(dir.join(FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(MESSAGES).unwrap();
        let mut ids = txn.open_table(ROOM_MESSAGE_IDS).unwrap();
        for message in messages {
            let props = &message.mess_props;
            let (room, seq) = (props.room_name.as_str(), props.sequence_number.unwrap());
            let bytes = serde_json::to_vec(message).unwrap();
            table.insert((room, seq), bytes.as_slice()).unwrap();
            ids.insert((room, u128::from(props.id.0)), seq).unwrap();
        }
        txn.open_table(SCHEMA)
            .unwrap()
            .insert("version", 2)
            .unwrap();
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_layout_2_store_is_moved_to_ids_first_and_still_knows_every_stored_id() {
    let dir = tempfile::tempdir().unwrap();
    let r = room("layout");
    let old: Vec<ChatMessage> = (1..=3).map(|seq| stored(&r, seq, 1_000 + seq)).collect();
    plant_layout_2(dir.path(), &old);

    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.schema().await.unwrap(), Schema::Current);
    let ids: Vec<MessageId> = old.iter().map(|m| m.mess_props.id).collect();
    let found = store.existing_messages(&r, &ids).await.unwrap();
    assert_eq!(found, old, "every stored id is found after the move");

    // A redelivery of message 2, numbered 4 by a consumer that did not know: not stored again.
    let mut again = old[1].clone();
    again.mess_props.sequence_number = Some(4);
    let fresh = stored(&r, 4, 2_000);
    let stop = store
        .insert_messages(&r, &[again, fresh.clone()])
        .await
        .unwrap();
    assert_eq!(stop, Some(InsertStop::IdStored(0)));
    assert_eq!(store.insert_messages(&r, &[fresh]).await.unwrap(), None);
    assert_eq!(store.latest_messages(&r, 10).await.unwrap().len(), 4);

    // Deleting the room deletes its ids too: the same id is new in the room made again.
    store.delete_room(&r).await.unwrap();
    assert!(store.existing_messages(&r, &ids).await.unwrap().is_empty());
    assert_eq!(store.insert_messages(&r, &old[..1]).await.unwrap(), None);
    drop(store);

    // The old table is gone and the file says layout 3: an older mess-chat refuses it rather
    // than read an empty id table.
    // (The store's last blocking task may still hold the file for a moment.)
    let mut opened = Database::open(dir.path().join(FILE_NAME));
    for _ in 0..100 {
        if opened.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        opened = Database::open(dir.path().join(FILE_NAME));
    }
    let db = opened.unwrap();
    let txn = db.begin_read().unwrap();
    let tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    assert!(!tables.contains(&"message_ids".to_string()), "{tables:?}");
    let version = txn.open_table(SCHEMA).unwrap().get("version").unwrap();
    assert_eq!(version.map(|v| v.value()), Some(3));
}
