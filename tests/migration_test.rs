//! Data written by the previous version (messages with UUID ids and named types; on RabbitMQ,
//! members' inboxes named after the aliases and a room's queue bound to its own exchange):
//! `serve` refuses it with a message saying what to do, `mess-chat migrate` converts it, and its
//! history then reads as before, with the seed's integer ids (time-ordered) and types.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Backend, alias, room, unique};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use mess_chat::model::{Alias, RoomName};
use mongodb::bson::{DateTime as BsonDate, doc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_mess-chat");
const TEXTS: [&str; 3] = ["first of old", "second of old", "third of old"];
/// When the old messages were sent: 2026-06-01, a millisecond apart.
const SENT_MS: i64 = 1_780_272_000_000;

/// One old deployment: a group room of two members, three messages.
struct Old {
    room: RoomName,
    ann: Alias,
    bob: Alias,
    /// The MongoDB database (real back ends).
    db: String,
    /// The embedded store's directory.
    dir: tempfile::TempDir,
}

impl Old {
    fn new() -> Self {
        Self {
            room: room("oldroom"),
            ann: alias("ann"),
            bob: alias("bob"),
            db: unique("mcmigrate").replace('-', "_"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn members(&self) -> [&str; 2] {
        [self.ann.as_str(), self.bob.as_str()]
    }

    /// The old layout of message `seq`, as JSON (the embedded store's).
    fn message_json(&self, seq: u64) -> serde_json::Value {
        let sent = chrono::DateTime::from_timestamp_millis(SENT_MS + seq as i64).unwrap();
        serde_json::json!({
            "message": TEXTS[seq as usize - 1],
            "mess_props": {
                "mess_type": "received",
                "room_name": self.room.as_str(),
                "to_user": self.room.as_str(),
                "from_user": self.ann.as_str(),
                "sent_time": sent,
                "rec_time": sent,
                "sequence_number": seq,
                "id": uuid::Uuid::now_v7().to_string(),
            }
        })
    }

    /// Writes an embedded store of the previous version.
    fn plant_embedded(&self) {
        use redb::{Database, TableDefinition};
        const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
        const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
        const MESSAGE_IDS: TableDefinition<(&str, u128), u64> = TableDefinition::new("message_ids");
        const ROOM_LISTS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_lists");
        let room = self.room.as_str();
        let db = Database::create(self.dir.path().join("mess-chat.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta = serde_json::to_vec(&serde_json::json!({
                "name": room, "group_room": true, "owner_alias": self.ann.as_str(),
                "members": self.members(),
                "create_time": "2026-06-01T00:00:00Z", "modify_time": "2026-06-01T00:00:00Z",
            }))
            .unwrap();
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
                let old = self.message_json(seq);
                let id = old["mess_props"]["id"].as_str().unwrap();
                let id = uuid::Uuid::parse_str(id).unwrap();
                let bytes = serde_json::to_vec(&old).unwrap();
                messages.insert((room, seq), bytes.as_slice()).unwrap();
                ids.insert((room, id.as_u128()), seq).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// Writes a MongoDB database of the previous version.
    async fn plant_mongo(&self) {
        let client = mongodb::Client::with_uri_str(common::mongo_url())
            .await
            .unwrap();
        let db = client.database(&self.db);
        let room = self.room.as_str();
        let at = BsonDate::from_millis(SENT_MS);
        let messages = db.collection::<mongodb::bson::Document>(room);
        messages
            .insert_one(doc! {
                "_id": "meta", "kind": "meta", "name": room, "group_room": true,
                "owner_alias": self.ann.as_str(), "members": self.members().to_vec(),
                "create_time": at, "modify_time": at,
            })
            .await
            .unwrap();
        for seq in 1..=3i64 {
            let id = uuid::Uuid::now_v7().to_string();
            let sent = BsonDate::from_millis(SENT_MS + seq);
            messages
                .insert_one(doc! {
                    "_id": &id,
                    "message": TEXTS[seq as usize - 1],
                    "mess_props": {
                        "mess_type": "received", "room_name": room, "to_user": room,
                        "from_user": self.ann.as_str(), "sent_time": sent, "rec_time": sent,
                        "sequence_number": seq, "id": &id,
                    },
                })
                .await
                .unwrap();
        }
        db.collection::<mongodb::bson::Document>("_room_list")
            .insert_one(doc! {
                "_id": "main", "name": "main", "rooms": [room],
                "create_time": at, "modify_time": at,
            })
            .await
            .unwrap();
    }

    /// Declares the previous version's topology on RabbitMQ: the room's fanout exchange bound to
    /// the room's queue and to an inbox per member named after the alias, holding a copy.
    async fn plant_rabbitmq(&self) {
        let (_conn, channel) = rabbitmq().await;
        let room = self.room.as_str();
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut room_args = FieldTable::default();
        room_args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        channel
            .queue_declare(room.into(), durable, room_args)
            .await
            .unwrap();
        let exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                room.into(),
                lapin::ExchangeKind::Fanout,
                exchange,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut inbox_args = FieldTable::default();
        inbox_args.insert("x-max-length".into(), AMQPValue::LongLongInt(10_000));
        for queue in [room, self.ann.as_str(), self.bob.as_str()] {
            if queue != room {
                channel
                    .queue_declare(queue.into(), durable, inbox_args.clone())
                    .await
                    .unwrap();
            }
            channel
                .queue_bind(
                    queue.into(),
                    room.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
    }
}

async fn rabbitmq() -> (lapin::Connection, lapin::Channel) {
    let conn =
        lapin::Connection::connect(&common::amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}

/// Whether a queue of that name exists.
async fn queue_exists(queue: &str) -> bool {
    let (_conn, channel) = rabbitmq().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_ok()
}

/// How many messages a confirmed publish to the room's exchange leaves in the room's own queue.
async fn copies_reaching_the_room_queue(room: &str) -> u32 {
    let (_conn, channel) = rabbitmq().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            room.into(),
            "".into(),
            BasicPublishOptions::default(),
            b"{}",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(room.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// `mess-chat <args>` with the back end's settings; returns its exit status and stderr.
async fn run(backend: Backend, old: &Old, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(BINARY);
    settings(&mut command, backend, old);
    let output = tokio::time::timeout(Duration::from_secs(60), command.args(args).output())
        .await
        .expect("finishes")
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn settings(command: &mut Command, backend: Backend, old: &Old) {
    command
        .env("MESS_CHAT_DATA_DIR", old.dir.path())
        .env("MESS_CHAT_MONGO_DB", &old.db)
        .stdin(Stdio::null());
    match backend {
        Backend::Real => command
            .env("MESS_CHAT_MONGO_URL", common::mongo_url())
            .env("MESS_CHAT_AMQP_URL", common::amqp_url()),
        Backend::Embedded => command
            .env_remove("MESS_CHAT_MONGO_URL")
            .env_remove("MESS_CHAT_AMQP_URL"),
    };
}

/// `mess-chat serve` on the old data: its base URL and the child (killed on drop).
async fn serve(backend: Backend, old: &Old) -> (String, tokio::process::Child) {
    let mut command = Command::new(BINARY);
    settings(&mut command, backend, old);
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
        .expect("the converted data is served");
    let base = line.strip_prefix("mess-chat listening on ").unwrap();
    (base.to_string(), child)
}

async fn old_data_is_refused_then_migrated_and_reads_as_before(backend: Backend) {
    let old = Old::new();
    match backend {
        Backend::Embedded => old.plant_embedded(),
        Backend::Real => {
            old.plant_mongo().await;
            old.plant_rabbitmq().await;
            assert_eq!(copies_reaching_the_room_queue(old.room.as_str()).await, 1);
        }
    }
    // serve refuses it, saying what to do.
    let (ok, stderr) = run(
        backend,
        &old,
        &["serve", "--no-auth", "--listen", "127.0.0.1:0"],
    )
    .await;
    assert!(!ok, "old data must not be served");
    assert!(stderr.contains("mess-chat migrate"), "{stderr}");
    // migrate converts it, once.
    let (ok, stderr) = run(backend, &old, &["migrate"]).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("converted 3 messages"), "{stderr}");
    if backend == Backend::Real {
        // The old inboxes are gone, and the room's exchange no longer feeds the room's queue
        // (the copy planted above is still there: one, not two).
        assert!(stderr.contains("deleted 2 old inbox queues"), "{stderr}");
        assert!(!queue_exists(old.ann.as_str()).await);
        assert!(!queue_exists(old.bob.as_str()).await);
        assert_eq!(copies_reaching_the_room_queue(old.room.as_str()).await, 1);
        let (_conn, channel) = rabbitmq().await;
        channel
            .queue_purge(old.room.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    let (ok, stderr) = run(backend, &old, &["migrate"]).await;
    assert!(ok && stderr.contains("nothing to do"), "{stderr}");
    // Served again: the history as before.
    let (base, mut child) = serve(backend, &old).await;
    let texts: Vec<String> = reqwest::get(format!("{base}/messages/?room_name={}", old.room))
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
            room_name: old.room.to_string(),
            message: "new".into(),
            from_alias: old.ann.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sent.message.mess_props.sequence_number, Some(4));
    // The course's private room named after its recipient, whose old inbox held that name.
    let private = client
        .send(&mess_chat::client::SendParams {
            room_name: old.bob.to_string(),
            message: "just us".into(),
            from_alias: old.ann.to_string(),
            to_alias: Some(old.bob.to_string()),
            group_room: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(private.status, "stored");
    let stored = match backend {
        Backend::Real => {
            let store = mess_chat::store::mongo::MongoStore::connect(&common::mongo_url(), &old.db)
                .await
                .unwrap();
            mess_chat::store::Store::latest_messages(&store, &old.room, 10)
                .await
                .unwrap()
        }
        Backend::Embedded => {
            child.kill().await.unwrap();
            child.wait().await.unwrap();
            let store = mess_chat::store::embedded::EmbeddedStore::open(old.dir.path()).unwrap();
            mess_chat::store::Store::latest_messages(&store, &old.room, 10)
                .await
                .unwrap()
        }
    };
    assert_eq!(stored.len(), 4);
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
    let _ = child.kill().await;
    let _ = child.wait().await;
    if backend == Backend::Real {
        let mut env = common::Env::new(Backend::Real);
        env.mongo_db = old.db.clone();
        env.cleanup(&[], &[]).await;
        // Whatever a failed run left of the old topology.
        let (_conn, channel) = rabbitmq().await;
        for queue in old.members() {
            let _ = channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_embedded_store_is_refused_then_migrated_and_reads_as_before() {
    old_data_is_refused_then_migrated_and_reads_as_before(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_mongodb_store_and_rabbitmq_topology_are_refused_then_migrated() {
    old_data_is_refused_then_migrated_and_reads_as_before(Backend::Real).await;
}
