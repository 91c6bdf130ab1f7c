//! The broker layer against the real RabbitMQ (the seed's `rmq_test`). What the service declares
//! is checked from outside: by passive declares on a separate lapin connection and by
//! `rabbitmqctl`; delivery guarantees by running the service's consumer over a store that can be
//! made to fail.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{Backend, Env, TestServer, alias, room};
use lapin::options::{BasicGetOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use mess_chat::broker::rmq::RabbitBroker;
use mess_chat::broker::{Broker, BrokerError, QueueType};
use mess_chat::client::SendParams;
use mess_chat::model::{
    Alias, ChatMessage, MessageId, MessageProperties, MessageType, RoomListMeta, RoomMeta,
    RoomName, UserRecord,
};
use mess_chat::service::{ChatService, SendMode, SendOutcome, SendRequest, ServiceConfig};
use mess_chat::store::{Created, InsertStop, Inserted, MemberChange, Schema, Store, StoreError};
use uuid::Uuid;

/// A second, independent AMQP connection for looking at what the service declared.
async fn observer() -> Connection {
    Connection::connect(&common::amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is reachable")
}

fn passive_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

/// Whether a queue exists, and how many ready messages it holds.
async fn queue_ready_count(conn: &Connection, name: &str) -> Option<u32> {
    let channel = conn.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(name.into(), passive_queue(), FieldTable::default())
        .await;
    declared.ok().map(|q| q.message_count())
}

async fn exchange_exists(conn: &Connection, name: &str) -> bool {
    let channel = conn.create_channel().await.unwrap();
    let options = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            options,
            FieldTable::default(),
        )
        .await
        .is_ok()
}

/// `rabbitmqctl list_queues`' (ready, unacknowledged) counts for one queue.
async fn queue_counts(name: &str) -> (u64, u64) {
    let listing = common::rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ])
    .await;
    listing
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))
        .map(|cols| (cols[1].parse().unwrap(), cols[2].parse().unwrap()))
        .unwrap_or_else(|| panic!("queue {name} not listed"))
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_room_topology_is_declared_on_the_broker() {
    let t = TestServer::start(Backend::Real).await;
    let r = room("grouptopo");
    let (ann, bob) = (alias("ann"), alias("bob"));
    for a in [&ann, &bob] {
        let params = SendParams {
            room_name: r.to_string(),
            message: "hi".into(),
            from_alias: a.to_string(),
            to_alias: None,
            group_room: Some(true),
            idempotency_key: None,
        };
        t.client.send(&params).await.unwrap();
    }
    let conn = observer().await;
    assert!(
        exchange_exists(&conn, r.as_str()).await,
        "exchange named after the room"
    );
    assert!(
        exchange_exists(&conn, "mess-chat.events").await,
        "the cluster events exchange"
    );
    let (ann_inbox, bob_inbox) = (format!("inbox.{ann}"), format!("inbox.{bob}"));
    for queue in [r.as_str(), &ann_inbox, &bob_inbox] {
        assert!(
            queue_ready_count(&conn, queue).await.is_some(),
            "queue {queue}"
        );
    }
    // Each inbox gets every message stored after its alias joined (numbered, once stored):
    // ann both, bob his own.
    eventually("both inboxes have their copies", async || {
        queue_ready_count(&conn, &ann_inbox).await == Some(2)
            && queue_ready_count(&conn, &bob_inbox).await == Some(1)
    })
    .await;
    let channel = conn.create_channel().await.unwrap();
    let copy = channel
        .basic_get(ann_inbox.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a copy");
    let copy: ChatMessage = serde_json::from_slice(&copy.delivery.data).unwrap();
    assert_eq!(
        copy.mess_props.sequence_number,
        Some(1),
        "inbox copies are numbered"
    );
    let bindings = common::bindings().await;
    let bound = |destination: &str| {
        bindings
            .iter()
            .any(|(s, d)| s == r.as_str() && d == destination)
    };
    for destination in [&ann_inbox, &bob_inbox] {
        assert!(
            bound(destination),
            "binding {r} → {destination} missing in:\n{bindings:?}"
        );
    }
    assert!(
        !bound(r.as_str()),
        "sends go straight to the room's queue, not through its exchange"
    );
    let queues = common::rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "durable",
        "arguments",
    ])
    .await;
    let line = |name: &str| {
        queues
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed"))
            .to_string()
    };
    assert!(
        line(r.as_str()).contains("true") && line(r.as_str()).contains("x-single-active-consumer")
    );
    for inbox in [ann_inbox.as_str(), bob_inbox.as_str()] {
        let l = line(inbox);
        assert!(
            l.contains("x-max-length") && l.contains("x-message-ttl"),
            "{l}"
        );
    }
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_room_has_its_queue_and_no_exchange() {
    let t = TestServer::start(Backend::Real).await;
    let r = room("privtopo");
    let (ann, bob) = (alias("ann"), alias("bob"));
    let params = SendParams {
        room_name: r.to_string(),
        message: "psst".into(),
        from_alias: ann.to_string(),
        to_alias: Some(bob.to_string()),
        group_room: Some(false),
        idempotency_key: None,
    };
    t.client.send(&params).await.unwrap();
    let conn = observer().await;
    assert_eq!(
        queue_ready_count(&conn, r.as_str()).await,
        Some(0),
        "consumed and acked"
    );
    assert!(!exchange_exists(&conn, r.as_str()).await);
    assert!(
        queue_ready_count(&conn, &format!("inbox.{ann}"))
            .await
            .is_none(),
        "no inbox for private rooms"
    );
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_publish_is_persistent_and_waits_in_the_queue() {
    let broker = RabbitBroker::new(common::amqp_url());
    let r = room("confirm");
    broker.declare_room(&r, false).await.unwrap();
    broker.publish(&r, b"{\"hello\":1}".to_vec()).await.unwrap();
    // publish returned: the broker confirmed, so the message is in the queue right now.
    let (body, mode) = the_one_message(r.as_str()).await;
    assert_eq!(body, b"{\"hello\":1}");
    assert_eq!(mode, Some(2), "persistent");
    broker.delete_room(&r, false).await.unwrap();
}

/// The queue's only message, taken: its body and delivery mode.
async fn the_one_message(queue: &str) -> (Vec<u8>, Option<u8>) {
    let conn = observer().await;
    assert_eq!(queue_ready_count(&conn, queue).await, Some(1));
    let channel = conn.create_channel().await.unwrap();
    let got = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message");
    (got.delivery.data, *got.delivery.properties.delivery_mode())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_publish_is_confirmed_transient() {
    let broker = RabbitBroker::new(common::amqp_url());
    let r = room("transient");
    broker.declare_room(&r, false).await.unwrap();
    broker
        .publish_in_memory(&r, b"{\"hello\":2}".to_vec())
        .await
        .unwrap();
    let (body, mode) = the_one_message(r.as_str()).await;
    assert_eq!(body, b"{\"hello\":2}");
    assert_eq!(
        mode,
        Some(1),
        "transient: RabbitMQ does not write it to disk"
    );
    broker.delete_room(&r, false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_publish_is_refused() {
    let broker = RabbitBroker::new(common::amqp_url());
    let never_declared = room("nowhere");
    let err = broker
        .publish(&never_declared, b"lost?".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Unroutable(_)), "{err:?}");
    // The connection stays usable afterwards.
    broker.ping().await.unwrap();
}

/// A real store whose message writes can be made to fail, to watch when the consumer acks, and
/// whose reads of messages after a number can be made slow, to widen a race.
struct FlakyStore {
    inner: Arc<dyn Store>,
    failing: AtomicBool,
    slow_reads: AtomicBool,
}

/// How long a slow read takes.
const SLOW_READ: Duration = Duration::from_millis(500);

#[async_trait]
impl Store for FlakyStore {
    async fn save_room_list(&self, meta: &RoomListMeta) -> Result<(), StoreError> {
        self.inner.save_room_list(meta).await
    }
    async fn load_room_list(&self, name: &str) -> Result<Option<RoomListMeta>, StoreError> {
        self.inner.load_room_list(name).await
    }
    async fn save_room(&self, meta: &RoomMeta) -> Result<(), StoreError> {
        self.inner.save_room(meta).await
    }
    async fn load_room(&self, room: &RoomName) -> Result<Option<RoomMeta>, StoreError> {
        self.inner.load_room(room).await
    }
    async fn add_to_room_list(&self, list: &str, room: &RoomName) -> Result<(), StoreError> {
        self.inner.add_to_room_list(list, room).await
    }
    async fn remove_from_room_list(&self, list: &str, room: &RoomName) -> Result<(), StoreError> {
        self.inner.remove_from_room_list(list, room).await
    }
    async fn create_room(&self, meta: &RoomMeta) -> Result<Created, StoreError> {
        self.inner.create_room(meta).await
    }
    async fn add_member(
        &self,
        room: &RoomName,
        alias: &Alias,
    ) -> Result<Option<MemberChange>, StoreError> {
        self.inner.add_member(room, alias).await
    }
    async fn remove_member(
        &self,
        room: &RoomName,
        alias: &Alias,
    ) -> Result<Option<MemberChange>, StoreError> {
        self.inner.remove_member(room, alias).await
    }
    async fn rooms_of(&self, alias: &Alias) -> Result<Vec<RoomName>, StoreError> {
        self.inner.rooms_of(alias).await
    }
    async fn rooms_owned(&self, alias: &Alias) -> Result<u64, StoreError> {
        self.inner.rooms_owned(alias).await
    }
    async fn delete_room(&self, room: &RoomName) -> Result<(), StoreError> {
        self.inner.delete_room(room).await
    }
    async fn insert_message(&self, message: &ChatMessage) -> Result<Inserted, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected outage".into()));
        }
        self.inner.insert_message(message).await
    }
    async fn existing_messages(
        &self,
        room: &RoomName,
        ids: &[MessageId],
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.inner.existing_messages(room, ids).await
    }
    async fn insert_messages(
        &self,
        room: &RoomName,
        messages: &[ChatMessage],
    ) -> Result<Option<InsertStop>, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected outage".into()));
        }
        self.inner.insert_messages(room, messages).await
    }
    async fn latest_messages(
        &self,
        room: &RoomName,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.inner.latest_messages(room, limit).await
    }
    async fn messages_before(
        &self,
        room: &RoomName,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.inner.messages_before(room, before, limit).await
    }
    async fn last_sequence(&self, room: &RoomName) -> Result<u64, StoreError> {
        self.inner.last_sequence(room).await
    }
    async fn messages_after(
        &self,
        room: &RoomName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        if self.slow_reads.load(Ordering::SeqCst) {
            tokio::time::sleep(SLOW_READ).await;
        }
        self.inner.messages_after(room, after, limit).await
    }
    async fn search_messages(
        &self,
        room: &RoomName,
        needle: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.inner.search_messages(room, needle, limit).await
    }
    async fn create_user(&self, user: &UserRecord) -> Result<bool, StoreError> {
        self.inner.create_user(user).await
    }
    async fn load_user(&self, alias: &Alias) -> Result<Option<UserRecord>, StoreError> {
        self.inner.load_user(alias).await
    }
    async fn lease_instance(
        &self,
        holder: Uuid,
        numbers: u16,
        ttl: Duration,
    ) -> Result<Option<u16>, StoreError> {
        self.inner.lease_instance(holder, numbers, ttl).await
    }
    async fn renew_instance(
        &self,
        number: u16,
        holder: Uuid,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.renew_instance(number, holder, ttl).await
    }
    async fn release_instance(&self, number: u16, holder: Uuid) -> Result<(), StoreError> {
        self.inner.release_instance(number, holder).await
    }
    async fn claim_idempotency_name(
        &self,
        name: &str,
        id: MessageId,
    ) -> Result<MessageId, StoreError> {
        self.inner.claim_idempotency_name(name, id).await
    }
    async fn schema(&self) -> Result<Schema, StoreError> {
        self.inner.schema().await
    }
    async fn migrate(&self) -> Result<u64, StoreError> {
        self.inner.migrate().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        // A store that cannot take writes is down, whatever its connection says.
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected outage".into()));
        }
        self.inner.ping().await
    }
}

fn quick_config() -> ServiceConfig {
    ServiceConfig {
        store_wait: Duration::from_millis(300),
        ..ServiceConfig::default()
    }
}

fn group_request(r: &RoomName, from: &Alias, text: &str) -> SendRequest {
    SendRequest {
        room_name: r.clone(),
        message: text.into(),
        from_alias: from.clone(),
        to_alias: None,
        group_room: Some(true),
        idempotency_key: None,
        mode: SendMode::CreateOrJoin,
    }
}

/// A service on the real broker over a real store whose message writes fail until told not to.
async fn service_on_a_failing_store() -> (Env, Arc<FlakyStore>, ChatService) {
    service_on_a_flaky_store(true, quick_config()).await
}

/// A service with `config` on the real broker over a real [`FlakyStore`], `failing` or not.
async fn service_on_a_flaky_store(
    failing: bool,
    config: ServiceConfig,
) -> (Env, Arc<FlakyStore>, ChatService) {
    let env = Env::new(Backend::Real);
    let store = Arc::new(FlakyStore {
        inner: env.store().await,
        failing: AtomicBool::new(failing),
        slow_reads: AtomicBool::new(false),
    });
    let service = ChatService::start(env.broker.clone(), store.clone(), config)
        .await
        .unwrap();
    (env, store, service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_acks_only_after_the_store_write() {
    let (env, store, service) = service_on_a_failing_store().await;
    let (r, ann) = (room("ackafter"), alias("ann"));
    let outcome = service
        .send(None, group_request(&r, &ann, "wait for me"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, SendOutcome::Accepted(_)),
        "confirmed, not stored: {outcome:?}"
    );

    // While the store fails, the deliveries are held unacknowledged: nothing is lost. There
    // are two: the send went transient first, and got a persistent copy before its 202.
    eventually("both copies are delivered and unacked", async || {
        queue_counts(r.as_str()).await == (0, 2)
    })
    .await;
    assert!(
        env.store()
            .await
            .latest_messages(&r, 10)
            .await
            .unwrap()
            .is_empty()
    );

    store.failing.store(false, Ordering::SeqCst);
    let room = service.room(&r).await.unwrap();
    eventually("the message is stored", async || room.len() == 1).await;
    eventually("the delivery is acked", async || {
        queue_counts(r.as_str()).await == (0, 0)
    })
    .await;
    let stored = env.store().await.latest_messages(&r, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].mess_props.sequence_number, Some(1));
    service.shutdown().await;
    env.cleanup(&[(r, true)], &[ann]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_answered_stored_finds_its_message_in_the_next_read() {
    // A store wait well beyond the slowed read, so that the answer waits for the message.
    let config = ServiceConfig {
        store_wait: Duration::from_secs(3),
        ..ServiceConfig::default()
    };
    let (env, store, service) = service_on_a_flaky_store(false, config).await;
    let (r, ann) = (room("readback"), alias("ann"));
    let first = service
        .send(None, group_request(&r, &ann, "first"))
        .await
        .unwrap();
    assert!(matches!(first, SendOutcome::Stored(_)), "{first:?}");
    // Number 2 stored behind the service's back (as by a numberer this instance never heard
    // from): the next batch is numbered 3, and the room's cache must read 2 from the store
    // (slowly) before it can take 3.
    let id = MessageId((1 << 52) + u64::from(Uuid::new_v4().as_fields().0));
    let mut props = MessageProperties::new_sent(r.clone(), ann.clone(), r.to_string(), id);
    props.mess_type = MessageType::Received;
    props.rec_time = Some(props.sent_time);
    props.sequence_number = Some(2);
    let planted = ChatMessage {
        message: "planted".into(),
        mess_props: props,
        dirty: false,
    };
    env.store().await.insert_message(&planted).await.unwrap();
    store.slow_reads.store(true, Ordering::SeqCst);
    let third = service
        .send(None, group_request(&r, &ann, "third"))
        .await
        .unwrap();
    let SendOutcome::Stored(third) = third else {
        panic!("stored, not {third:?}");
    };
    assert_eq!(third.mess_props.sequence_number, Some(3));
    let read: Vec<String> = service
        .recent(None, &r, None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message)
        .collect();
    assert_eq!(
        read,
        ["first", "planted", "third"],
        "read right after the answer"
    );
    service.shutdown().await;
    env.cleanup(&[(r, true)], &[ann]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstored_message_survives_a_service_stop_and_is_stored_once() {
    let (env, _failing_store, service) = service_on_a_failing_store().await;
    let (r, ann) = (room("survive"), alias("ann"));
    service
        .send(None, group_request(&r, &ann, "still here"))
        .await
        .unwrap();
    service.shutdown().await;
    // The stopped consumer's channel closed: the broker holds the message (its transient and
    // its persistent copy) for the next one, which stores it once.
    eventually("the message is back in the queue", async || {
        queue_counts(r.as_str()).await == (2, 0)
    })
    .await;

    let service = ChatService::start(env.broker.clone(), env.store().await, quick_config())
        .await
        .unwrap();
    let room = service.room(&r).await.unwrap();
    eventually("the message is stored", async || room.len() == 1).await;
    let stored = env.store().await.latest_messages(&r, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].message, "still here");
    assert_eq!(stored[0].mess_props.sequence_number, Some(1));
    service.shutdown().await;
    env.cleanup(&[(r, true)], &[ann]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_message_is_stored_once_with_its_first_number() {
    let env = Env::new(Backend::Real);
    let service = ChatService::start(env.broker.clone(), env.store().await, quick_config())
        .await
        .unwrap();
    let (r, ann) = (room("redeliver"), alias("ann"));
    let first = service
        .send(None, group_request(&r, &ann, "first"))
        .await
        .unwrap();
    assert!(matches!(first, SendOutcome::Stored(_)));

    // The same message (same id) published twice, as a redelivery after a lost ack looks.
    let props = MessageProperties::new_sent(r.clone(), ann.clone(), r.to_string(), MessageId(7));
    let body = serde_json::to_vec(&ChatMessage::new("twice".into(), props)).unwrap();
    env.broker.publish(&r, body.clone()).await.unwrap();
    env.broker.publish(&r, body).await.unwrap();
    let after = service
        .send(None, group_request(&r, &ann, "after"))
        .await
        .unwrap();
    let SendOutcome::Stored(after) = after else {
        panic!("not stored: {after:?}")
    };
    assert_eq!(
        after.mess_props.sequence_number,
        Some(3),
        "the duplicate took no number"
    );

    let stored = env.store().await.latest_messages(&r, 10).await.unwrap();
    let texts: Vec<_> = stored.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(texts, ["first", "twice", "after"]);
    let numbers: Vec<_> = stored
        .iter()
        .map(|m| m.mess_props.sequence_number)
        .collect();
    assert_eq!(numbers, [Some(1), Some(2), Some(3)]);
    assert_eq!(service.room(&r).await.unwrap().len(), 3);
    eventually("everything is acked", async || {
        queue_counts(r.as_str()).await == (0, 0)
    })
    .await;
    service.shutdown().await;
    env.cleanup(&[(r, true)], &[ann]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_queue_deleted_behind_the_service_is_declared_again() {
    let t = TestServer::start(Backend::Real).await;
    let r = room("healing");
    let (ann, bob) = (alias("ann"), alias("bob"));
    let send = |text: &str| SendParams {
        room_name: r.to_string(),
        message: text.into(),
        from_alias: ann.to_string(),
        to_alias: Some(bob.to_string()),
        group_room: Some(false),
        idempotency_key: None,
    };
    t.client.send(&send("before")).await.unwrap();
    let conn = observer().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete(r.as_str().into(), Default::default())
        .await
        .unwrap();
    // Until the consumer notices (the broker cancels it) and declares the queue again, a send
    // is refused as unavailable (never a 500); then sends go through and are stored.
    let mut i = 0;
    eventually("sends succeed again", async || {
        i += 1;
        match t.client.send(&send(&format!("after-{i}"))).await {
            Ok(sent) => sent.status == "stored",
            Err(mess_chat::client::ClientError::Status { status, .. }) => {
                assert_eq!(
                    status, 503,
                    "an unroutable send is unavailable, not a server fault"
                );
                false
            }
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    let stored = t.client.messages(r.as_str(), None).await.unwrap();
    assert_eq!(stored.first().map(String::as_str), Some("before"));
    assert!(stored.last().unwrap().starts_with("after-"));
    t.cleanup().await;
}

/// The type `rabbitmqctl list_queues` gives each of these queues.
async fn queue_types(names: &[&str]) -> Vec<String> {
    let listing =
        common::rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name", "type"]).await;
    names
        .iter()
        .map(|name| {
            listing
                .lines()
                .map(|line| line.split_whitespace().collect::<Vec<_>>())
                .find(|cols| cols.first() == Some(name))
                .map(|cols| cols[1].to_string())
                .unwrap_or_else(|| panic!("queue {name} not listed"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_rooms_get_quorum_queues_and_a_classic_instance_refuses_to_start_on_them() {
    let env = Env::new(Backend::Real);
    let quorum = Arc::new(RabbitBroker::new(common::amqp_url()).with_queue_type(QueueType::Quorum));
    let service = ChatService::start(quorum.clone(), env.store().await, quick_config())
        .await
        .unwrap();
    let (r, ann) = (room("quorum"), alias("ann"));
    let outcome = service
        .send(None, group_request(&r, &ann, "replicated"))
        .await
        .unwrap();
    assert!(matches!(outcome, SendOutcome::Stored(_)), "{outcome:?}");
    let inbox = format!("inbox.{ann}");
    assert_eq!(
        queue_types(&[r.as_str(), &inbox]).await,
        ["quorum", "quorum"]
    );
    service.shutdown().await;

    // The same deployment started with classic queues: not a silent mix, an error naming the
    // queue and the configured type.
    let classic = Arc::new(RabbitBroker::new(common::amqp_url()));
    let refused = ChatService::start(classic, env.store().await, quick_config()).await;
    let Err(e) = refused else {
        panic!("a classic instance started on quorum queues")
    };
    let said = e.to_string();
    assert!(
        said.contains(r.as_str()) && said.contains("--queue-type classic"),
        "{said}"
    );
    // Started with the queues' own type, it serves the room again.
    let service = ChatService::start(quorum.clone(), env.store().await, quick_config())
        .await
        .unwrap();
    let again = service
        .send(None, group_request(&r, &ann, "again"))
        .await
        .unwrap();
    assert!(matches!(again, SendOutcome::Stored(_)), "{again:?}");
    service.shutdown().await;
    quorum.delete_room(&r, true).await.unwrap();
    quorum.delete_inbox(&ann).await.unwrap();
    env.cleanup(&[(r, true)], &[ann]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_declares_again_an_exchange_deleted_while_the_service_was_down_and_fans_out() {
    let mut t = TestServer::start(Backend::Real).await;
    let (r, ann) = (room("sweep"), alias("ann"));
    let params = SendParams {
        room_name: r.to_string(),
        message: "hi".into(),
        from_alias: ann.to_string(),
        group_room: Some(true),
        ..Default::default()
    };
    t.client.send(&params).await.unwrap();
    let inbox = format!("inbox.{ann}");
    assert!(common::is_bound(r.as_str(), &inbox).await);
    t.stop().await;
    let conn = observer().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_delete(r.as_str().into(), Default::default())
        .await
        .unwrap();
    assert!(!exchange_exists(&conn, r.as_str()).await);
    // A restarted instance subscribes its rooms first (declaring only their queues), then its
    // topology sweep declares every room's exchange and members' bindings again.
    t.restart().await;
    eventually("the exchange is back, the inbox bound to it", async || {
        exchange_exists(&conn, r.as_str()).await && common::is_bound(r.as_str(), &inbox).await
    })
    .await;
    // The room's consumer, started with the instance, read that the room is a group room when
    // its first batch came: the new message is copied to the inbox.
    let again = SendParams {
        message: "again".into(),
        ..params
    };
    t.client.send(&again).await.unwrap();
    eventually("the inbox holds both copies", async || {
        queue_ready_count(&conn, &inbox).await == Some(2)
    })
    .await;
    t.cleanup().await;
}

/// A quorum room deleted just as its consumer goes away is deleted. RabbitMQ 3.10 can answer the
/// consumer's cancel twice when its quorum queue is being deleted, and lapin then closes the
/// whole connection, the delete's too: the broker runs the delete again on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_rooms_deleted_as_their_consumers_go_away_are_deleted() {
    let env = Env::new(Backend::Real);
    let quorum = RabbitBroker::new(common::amqp_url()).with_queue_type(QueueType::Quorum);
    let conn = observer().await;
    let mut rooms = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..ROUNDS_OF_DELETE_AS_CANCEL {
        let r = room("qdel");
        rooms.push((r.clone(), true));
        quorum.declare_room(&r, true).await.unwrap();
        quorum.publish(&r, b"in flight".to_vec()).await.unwrap();
        let mut stream = quorum.consume(&r).await.unwrap();
        // The message is delivered, not acked: the queue still holds it for this consumer.
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a delivery in time");
        assert!(matches!(delivery, Some(Ok(_))), "{delivery:?}");
        drop(stream);
        if let Err(e) = quorum.delete_room(&r, true).await {
            failed.push(format!("{r}: {e}"));
        }
        if queue_ready_count(&conn, r.as_str()).await.is_some() {
            failed.push(format!("{r}: its queue is still there"));
        }
    }
    env.cleanup(&rooms, &[]).await;
    assert!(failed.is_empty(), "deletes lost: {failed:?}");
}

/// Rooms [`quorum_rooms_deleted_as_their_consumers_go_away_are_deleted`] deletes, each racing its
/// consumer's cancel.
const ROUNDS_OF_DELETE_AS_CANCEL: usize = 20;
