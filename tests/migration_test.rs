//! Stores written by the previous version (messages with UUID ids and named types): `serve`
//! refuses them with a message saying what to do, `mess-chat migrate` converts them, and their
//! history then reads as before, with the seed's integer ids (time-ordered) and types.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Backend, unique};
use mongodb::bson::{DateTime as BsonDate, doc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_mess-chat");
const TEXTS: [&str; 3] = ["first of old", "second of old", "third of old"];
/// When the old messages were sent: 2026-06-01, a millisecond apart.
const SENT_MS: i64 = 1_780_272_000_000;

/// The old layout of a message, as JSON (the embedded store's) .
fn old_message_json(room: &str, seq: u64) -> serde_json::Value {
    let sent = chrono::DateTime::from_timestamp_millis(SENT_MS + seq as i64).unwrap();
    serde_json::json!({
        "message": TEXTS[seq as usize - 1],
        "mess_props": {
            "mess_type": "received",
            "room_name": room,
            "to_user": room,
            "from_user": "ann",
            "sent_time": sent,
            "rec_time": sent,
            "sequence_number": seq,
            "id": uuid::Uuid::now_v7().to_string(),
        }
    })
}

fn old_meta(room: &str) -> serde_json::Value {
    serde_json::json!({
        "name": room, "group_room": true, "owner_alias": "ann", "members": ["ann"],
        "create_time": "2026-06-01T00:00:00Z", "modify_time": "2026-06-01T00:00:00Z",
    })
}

/// Writes an embedded store of the previous version into `dir`: one group room, three messages.
fn plant_embedded(dir: &Path, room: &str) {
    use redb::{Database, TableDefinition};
    const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
    const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
    const MESSAGE_IDS: TableDefinition<(&str, u128), u64> = TableDefinition::new("message_ids");
    const ROOM_LISTS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_lists");
    let db = Database::create(dir.join("mess-chat.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let meta = serde_json::to_vec(&old_meta(room)).unwrap();
        txn.open_table(ROOMS)
            .unwrap()
            .insert(room, meta.as_slice())
            .unwrap();
        let list = serde_json::to_vec(&serde_json::json!({
            "name": "main", "rooms": [room],
            "create_time": "2026-06-01T00:00:00Z", "modify_time": "2026-06-01T00:00:00Z",
        }))
        .unwrap();
        txn.open_table(ROOM_LISTS)
            .unwrap()
            .insert("main", list.as_slice())
            .unwrap();
        let mut messages = txn.open_table(MESSAGES).unwrap();
        let mut ids = txn.open_table(MESSAGE_IDS).unwrap();
        for seq in 1..=3u64 {
            let old = old_message_json(room, seq);
            let id = uuid::Uuid::parse_str(old["mess_props"]["id"].as_str().unwrap()).unwrap();
            let bytes = serde_json::to_vec(&old).unwrap();
            messages.insert((room, seq), bytes.as_slice()).unwrap();
            ids.insert((room, id.as_u128()), seq).unwrap();
        }
    }
    txn.commit().unwrap();
}

/// Writes a MongoDB database of the previous version: one group room, three messages.
async fn plant_mongo(db_name: &str, room: &str) {
    let client = mongodb::Client::with_uri_str(common::mongo_url())
        .await
        .unwrap();
    let db = client.database(db_name);
    let at = BsonDate::from_millis(SENT_MS);
    db.collection::<mongodb::bson::Document>(room)
        .insert_one(doc! {
            "_id": "meta", "kind": "meta", "name": room, "group_room": true,
            "owner_alias": "ann", "members": ["ann"], "create_time": at, "modify_time": at,
        })
        .await
        .unwrap();
    for seq in 1..=3i64 {
        let id = uuid::Uuid::now_v7().to_string();
        let sent = BsonDate::from_millis(SENT_MS + seq);
        db.collection::<mongodb::bson::Document>(room)
            .insert_one(doc! {
                "_id": &id,
                "message": TEXTS[seq as usize - 1],
                "mess_props": {
                    "mess_type": "received", "room_name": room, "to_user": room,
                    "from_user": "ann", "sent_time": sent, "rec_time": sent,
                    "sequence_number": seq, "id": &id,
                },
            })
            .await
            .unwrap();
    }
    db.collection::<mongodb::bson::Document>("_room_list")
        .insert_one(doc! {
            "_id": "main", "name": "main", "rooms": [room], "create_time": at, "modify_time": at,
        })
        .await
        .unwrap();
}

/// `mess-chat <args>` with the back end's settings; returns its exit status and stderr.
async fn run(backend: Backend, db: &str, dir: &Path, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(BINARY);
    settings(&mut command, backend, db, dir);
    let output = tokio::time::timeout(Duration::from_secs(60), command.args(args).output())
        .await
        .expect("finishes")
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn settings(command: &mut Command, backend: Backend, db: &str, dir: &Path) {
    command
        .env("MESS_CHAT_DATA_DIR", dir)
        .env("MESS_CHAT_MONGO_DB", db)
        .env_remove("MESS_CHAT_AMQP_URL")
        .stdin(Stdio::null());
    match backend {
        Backend::Real => command.env("MESS_CHAT_MONGO_URL", common::mongo_url()),
        Backend::Embedded => command.env_remove("MESS_CHAT_MONGO_URL"),
    };
}

async fn an_old_store_is_refused_then_migrated_and_reads_as_before(backend: Backend) {
    let db = unique("mcmigrate").replace('-', "_");
    let dir = tempfile::tempdir().unwrap();
    let room = unique("oldroom");
    match backend {
        Backend::Embedded => plant_embedded(dir.path(), &room),
        Backend::Real => plant_mongo(&db, &room).await,
    }
    // serve refuses it, saying what to do.
    let (ok, stderr) = run(
        backend,
        &db,
        dir.path(),
        &["serve", "--no-auth", "--listen", "127.0.0.1:0"],
    )
    .await;
    assert!(!ok, "an old store must not be served");
    assert!(stderr.contains("mess-chat migrate"), "{stderr}");
    // migrate converts it, once.
    let (ok, stderr) = run(backend, &db, dir.path(), &["migrate"]).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("converted 3 messages"), "{stderr}");
    let (ok, stderr) = run(backend, &db, dir.path(), &["migrate"]).await;
    assert!(ok && stderr.contains("nothing to do"), "{stderr}");
    // Served again: the history as before, with integer ids in time order and integer types.
    let mut command = Command::new(BINARY);
    settings(&mut command, backend, &db, dir.path());
    let mut child = command
        .args(["serve", "--no-auth", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("the converted store is served");
    let base = line
        .strip_prefix("mess-chat listening on ")
        .unwrap()
        .to_string();
    let texts: Vec<String> = reqwest::get(format!("{base}/messages/?room_name={room}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(texts, TEXTS);
    let client = mess_chat::client::Client::new(base.clone());
    // A new send continues the numbering, with an integer id later than the old ones.
    let sent = client
        .send(&mess_chat::client::SendParams {
            room_name: room.clone(),
            message: "new".into(),
            from_alias: "ann".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sent.message.mess_props.sequence_number, Some(4));
    let stored = match backend {
        Backend::Real => {
            let store = mess_chat::store::mongo::MongoStore::connect(&common::mongo_url(), &db)
                .await
                .unwrap();
            let stored = mess_chat::store::Store::latest_messages(
                &store,
                &mess_chat::model::RoomName::new(room.clone()).unwrap(),
                10,
            )
            .await
            .unwrap();
            store.drop_database().await.unwrap();
            stored
        }
        Backend::Embedded => {
            child.kill().await.unwrap();
            child.wait().await.unwrap();
            let store = mess_chat::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
            mess_chat::store::Store::latest_messages(
                &store,
                &mess_chat::model::RoomName::new(room.clone()).unwrap(),
                10,
            )
            .await
            .unwrap()
        }
    };
    let ids: Vec<u64> = stored.iter().map(|m| m.mess_props.id.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "time-ordered: {ids:?}");
    assert!(ids.iter().all(|id| *id < 1 << 53));
    assert_eq!(
        stored[0].mess_props.id.unix_ms(),
        SENT_MS + 1,
        "made of the sent time"
    );
    assert!(
        stored
            .iter()
            .all(|m| m.mess_props.mess_type == mess_chat::model::MESS_TYPE_RECEIVED)
    );
    assert_eq!(stored.len(), 4);
    let _ = child.kill().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_embedded_store_is_refused_then_migrated_and_reads_as_before() {
    an_old_store_is_refused_then_migrated_and_reads_as_before(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_mongodb_store_is_refused_then_migrated_and_reads_as_before() {
    an_old_store_is_refused_then_migrated_and_reads_as_before(Backend::Real).await;
}
