//! Several instances over one RabbitMQ and one MongoDB-protocol server behave as one: any
//! instance serves any room, a send answers "stored" wherever it was made, history, search,
//! membership, tokens, deletions and live push agree everywhere, concurrent creations make one
//! room, and losing the instance that numbers a room (or the broker) loses and renumbers nothing.
//!
//! Most tests run instances in this process (each with its own broker connection and store
//! client, as separate processes would have); the crash test runs `mess-chat serve` children, and
//! one test runs `scripts/cluster.sh` (instances behind HAProxy) as an operator would.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::load::{Load, create_rooms_owned_by, spawn_service, verify_api, verify_store};
use common::{Backend, Env, alias, room, unique};
use futures_util::StreamExt;
use mess_chat::broker::Broker;
use mess_chat::broker::rmq::RabbitBroker;
use mess_chat::client::{Client, ClientError, SendParams};
use mess_chat::model::{Alias, ChatMessage, RoomName};
use mess_chat::server::Server;
use mess_chat::service::ServiceConfig;
use mess_chat::store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Tests that stop the broker run alone; the others share it.
static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Longest wait for anything a test expects.
const WAIT: Duration = Duration::from_secs(15);

/// `n` instances in this process on one broker and one database, authentication on.
struct Cluster {
    env: Env,
    servers: Vec<Option<Server>>,
    bases: Vec<String>,
    /// Aliases registered through [`Cluster::member`], whose inboxes go at the end.
    aliases: Mutex<Vec<Alias>>,
}

/// A registered alias with a client of each instance carrying its token.
struct Member {
    alias: String,
    token: String,
    clients: Vec<Client>,
}

impl Member {
    fn on(&self, instance: usize) -> &Client {
        &self.clients[instance]
    }
}

impl Cluster {
    async fn start(n: usize) -> Self {
        common::init_logs();
        let env = Env::new(Backend::Real);
        let mut cluster = Self {
            env,
            servers: Vec::new(),
            bases: Vec::new(),
            aliases: Mutex::new(Vec::new()),
        };
        for _ in 0..n {
            cluster.add_instance().await;
        }
        cluster.wait_until_they_know_each_other().await;
        cluster
    }

    fn config() -> ServiceConfig {
        ServiceConfig {
            require_auth: true,
            cache_capacity: 5,
            ..ServiceConfig::default()
        }
    }

    async fn add_instance(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker: Arc<dyn Broker> = Arc::new(RabbitBroker::new(common::amqp_url()));
        let store: Arc<dyn Store> = Arc::new(self.env.mongo().await);
        let server = Server::start_with(listener, broker, store, Self::config())
            .await
            .expect("an instance starts");
        self.bases.push(format!("http://{}", server.addr()));
        self.servers.push(Some(server));
    }

    /// Until every instance has heard every other one (so barriers wait for all of them).
    async fn wait_until_they_know_each_other(&self) {
        let others = self.servers.iter().flatten().count() - 1;
        let deadline = Instant::now() + WAIT;
        for server in self.servers.iter().flatten() {
            while server.service().peers() < others {
                assert!(
                    Instant::now() < deadline,
                    "instances never heard each other"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn client(&self, instance: usize) -> Client {
        Client::new(self.bases[instance].clone())
    }

    /// Registers a fresh alias through `instance`.
    async fn member(&self, instance: usize, prefix: &str) -> Member {
        let registered = self
            .client(instance)
            .register(&unique(prefix))
            .await
            .unwrap();
        self.aliases
            .lock()
            .unwrap()
            .push(Alias::new(registered.alias.clone()).unwrap());
        Member {
            clients: (0..self.bases.len())
                .map(|i| self.client(i).with_token(Some(registered.token.clone())))
                .collect(),
            alias: registered.alias,
            token: registered.token,
        }
    }

    async fn stop(&mut self, instance: usize) {
        if let Some(server) = self.servers[instance].take() {
            server.stop().await.expect("graceful stop");
        }
    }

    /// Stops every instance, then deletes every room of the stored list (queues, exchanges,
    /// members' inboxes) and the database.
    async fn cleanup(mut self) {
        for i in 0..self.servers.len() {
            self.stop(i).await;
        }
        let store = self.env.mongo().await;
        let mut rooms = Vec::new();
        let mut aliases = self.aliases.lock().unwrap().clone();
        let names = store.load_room_list("main").await.unwrap();
        for name in names.map(|l| l.rooms).unwrap_or_default() {
            if let Some(meta) = store.load_room(&name).await.unwrap() {
                aliases.extend(meta.members);
                rooms.push((name, meta.group_room));
            }
        }
        aliases.sort();
        aliases.dedup();
        self.env.cleanup(&rooms, &aliases).await;
    }
}

fn status_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Status { status, body }) => (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn numbers(messages: &[ChatMessage]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m.mess_props.sequence_number.unwrap())
        .collect()
}

/// Polls `check` until it holds (bounded by [`WAIT`]).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A room's whole history as one instance serves it (REST pages, oldest first).
async fn history(client: &Client, room: &str) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    let mut after = 0;
    loop {
        let page = client.page(room, None, Some(after), 1000).await.unwrap();
        after = page
            .messages
            .last()
            .and_then(|m| m.mess_props.sequence_number)
            .unwrap_or(after);
        messages.extend(page.messages);
        if !page.more {
            return messages;
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a member's live socket on `base` for `room`, from `after`.
async fn socket(base: &str, room: &str, token: &str, after: u64) -> Socket {
    let url = format!(
        "{}/api/v1/rooms/{room}/live?after={after}&token={token}",
        base.replacen("http", "ws", 1)
    );
    let request = url.into_client_request().unwrap();
    let (socket, _) = timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("socket in time")
        .expect("socket opens");
    socket
}

/// The next message frame's sequence number and text.
async fn next_message(socket: &mut Socket) -> (u64, String) {
    loop {
        let frame = timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("no error");
        if let Message::Text(text) = frame {
            let m: ChatMessage = serde_json::from_str(text.as_str()).unwrap();
            return (m.mess_props.sequence_number.unwrap(), m.message);
        }
    }
}

/// The close code the server ends the socket with.
async fn close_code(socket: &mut Socket) -> u16 {
    loop {
        let frame = timeout(WAIT, socket.next()).await.expect("closed in time");
        match frame {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket failed instead of closing: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_through_any_instance_answers_stored_and_every_instance_serves_it() {
    let _shared = BROKER.read().await;
    let c = Cluster::start(3).await;
    let (ann, bob) = (c.member(0, "ann").await, c.member(1, "bob").await);
    let r = room("everywhere");
    ann.on(0).create_room(r.as_str(), None).await.unwrap();
    bob.on(1).add_member(r.as_str(), &bob.alias).await.unwrap();

    let mut slowest = Duration::ZERO;
    for i in 0..12usize {
        let sender = if i % 2 == 0 { &ann } else { &bob };
        let started = Instant::now();
        let sent = sender
            .on(i % 3)
            .post_message(r.as_str(), &format!("m{i}"))
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(sent.status, "stored", "send {i} through instance {}", i % 3);
        assert_eq!(sent.message.mess_props.sequence_number, Some(i as u64 + 1));
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a send waited {slowest:?}: it must not wait for the store-wait timeout"
    );
    let stored = c.env.mongo().await.latest_messages(&r, 100).await.unwrap();
    assert_eq!(numbers(&stored), (1..=12).collect::<Vec<_>>());
    // Ids are the seed's integers, made by each instance with a number of its own: one after
    // another, they increase; every instance's differ.
    let ids: Vec<u64> = stored.iter().map(|m| m.mess_props.id.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "time-ordered: {ids:?}");
    assert!(
        ids.iter().all(|id| *id < 1 << 53),
        "JavaScript reads them exactly"
    );
    let makers: std::collections::BTreeSet<u16> =
        stored.iter().map(|m| m.mess_props.id.instance()).collect();
    assert_eq!(makers.len(), 3, "one instance number each: {makers:?}");
    for i in 0..3 {
        eventually("every instance serves the whole history", async || {
            history(ann.on(i), r.as_str()).await == stored
        })
        .await;
        let texts = ann.on(i).messages(r.as_str(), Some(3)).await.unwrap();
        assert_eq!(texts, ["m9", "m10", "m11"], "the seed's /messages/ on {i}");
    }
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_members_search_and_tokens_are_the_same_on_every_instance() {
    let _shared = BROKER.read().await;
    let c = Cluster::start(3).await;
    // A token registered on one instance works on every other; an alias is registered once.
    let ann = c.member(0, "ann").await;
    let bob = c.member(2, "bob").await;
    assert_eq!(
        status_of(c.client(1).register(&ann.alias).await),
        (409, "name_taken".into())
    );
    // A room created on one instance is found on every other.
    let r = room("shared");
    let created = ann.on(1).create_room(r.as_str(), None).await.unwrap();
    assert_eq!(ann.on(0).room(r.as_str()).await.unwrap(), created);
    assert!(ann.on(2).rooms().await.unwrap().iter().any(|m| m.name == r));
    // A member added on one instance may act on every other at once.
    bob.on(2).add_member(r.as_str(), &bob.alias).await.unwrap();
    let sent = bob.on(0).post_message(r.as_str(), "a needle here").await;
    assert_eq!(sent.unwrap().status, "stored");
    let joined = ann.on(1).rooms().await.unwrap();
    let meta = joined.iter().find(|m| m.name == r).unwrap();
    assert_eq!(meta.members.len(), 2, "bob is a member on instance 1 too");
    // Search reads the one history.
    for i in 0..3 {
        let found = ann.on(i).search(r.as_str(), "NEEDLE").await.unwrap();
        assert_eq!(found.len(), 1, "search on {i}");
    }
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_room_made_on_one_instance_refuses_a_third_alias_on_another_at_once() {
    let _shared = BROKER.read().await;
    let c = Cluster::start(2).await;
    let (ann, bob, carl) = (
        c.member(0, "ann").await,
        c.member(0, "bob").await,
        c.member(1, "carl").await,
    );
    let r = room("pair");
    let send = |from: &Member, to: &Member| SendParams {
        room_name: r.to_string(),
        message: format!("from {}", from.alias),
        from_alias: from.alias.clone(),
        to_alias: Some(to.alias.clone()),
        group_room: Some(false),
        idempotency_key: None,
    };
    assert_eq!(
        ann.on(0).send(&send(&ann, &bob)).await.unwrap().status,
        "stored"
    );
    assert_eq!(
        status_of(carl.on(1).send(&send(&carl, &ann)).await),
        (403, "private_room_full".into())
    );
    // Its members use it on the other instance as on the first.
    assert_eq!(
        bob.on(1).send(&send(&bob, &ann)).await.unwrap().status,
        "stored"
    );
    assert_eq!(
        status_of(carl.on(1).messages(r.as_str(), None).await),
        (403, "not_a_member".into())
    );
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_push_on_one_instance_carries_what_is_sent_through_the_others() {
    let _shared = BROKER.read().await;
    let c = Cluster::start(3).await;
    let (ann, bob) = (c.member(0, "ann").await, c.member(1, "bob").await);
    let r = room("pushed");
    ann.on(0).create_room(r.as_str(), None).await.unwrap();
    bob.on(1).add_member(r.as_str(), &bob.alias).await.unwrap();
    ann.on(0).post_message(r.as_str(), "before").await.unwrap();
    // Bob listens on instance 1 from the start; messages go through 0 and 2.
    let mut live = socket(&c.bases[1], r.as_str(), &bob.token, 0).await;
    let sends: Vec<_> = (0..20)
        .map(|i| {
            let client = ann.on(if i % 2 == 0 { 0 } else { 2 }).clone();
            let r = r.clone();
            tokio::spawn(async move { client.post_message(r.as_str(), &format!("n{i}")).await })
        })
        .collect();
    for send in sends {
        assert_eq!(send.await.unwrap().unwrap().status, "stored");
    }
    let mut got = Vec::new();
    while got.len() < 21 {
        got.push(next_message(&mut live).await);
    }
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=21).collect::<Vec<_>>(),
        "each once, in order, no gap"
    );
    assert_eq!(got[0].1, "before");
    let texts: BTreeSet<String> = got[1..].iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(texts.len(), 20);
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_on_one_instance_is_refused_and_cut_off_on_every_other() {
    let _shared = BROKER.read().await;
    let c = Cluster::start(2).await;
    let (owner, m) = (c.member(0, "owner").await, c.member(1, "m").await);
    let r = room("removal");
    owner.on(0).create_room(r.as_str(), None).await.unwrap();
    m.on(1).add_member(r.as_str(), &m.alias).await.unwrap();
    let mut live = socket(&c.bases[1], r.as_str(), &m.token, 0).await;
    owner
        .on(0)
        .post_message(r.as_str(), "while m is in")
        .await
        .unwrap();
    assert_eq!(next_message(&mut live).await.1, "while m is in");

    owner
        .on(0)
        .remove_member(r.as_str(), &m.alias)
        .await
        .unwrap();
    // Seen on the other instance before the removal was answered: refused at once, and the
    // socket opened before is closed with "no longer a member".
    assert_eq!(
        status_of(m.on(1).post_message(r.as_str(), "still here?").await),
        (403, "not_a_member".into())
    );
    assert_eq!(close_code(&mut live).await, 4403);
    owner.on(0).post_message(r.as_str(), "after").await.unwrap();
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_deleted_on_one_instance_is_gone_on_every_other_at_once() {
    let _shared = BROKER.read().await;
    let c = Cluster::start(3).await;
    let (ann, bob) = (c.member(0, "ann").await, c.member(1, "bob").await);
    let r = room("doomed");
    ann.on(0).create_room(r.as_str(), None).await.unwrap();
    bob.on(1).add_member(r.as_str(), &bob.alias).await.unwrap();
    bob.on(1).post_message(r.as_str(), "hello").await.unwrap();
    // Every instance has the room loaded.
    for i in 0..3 {
        ann.on(i).messages(r.as_str(), None).await.unwrap();
    }
    let mut live = socket(&c.bases[2], r.as_str(), &bob.token, 0).await;
    assert_eq!(next_message(&mut live).await.1, "hello");

    ann.on(0).delete_room(r.as_str()).await.unwrap();
    assert_eq!(
        status_of(bob.on(1).post_message(r.as_str(), "anyone?").await),
        (404, "room_not_found".into())
    );
    assert_eq!(
        status_of(ann.on(2).room(r.as_str()).await),
        (404, "room_not_found".into())
    );
    // The seed's history of a room nobody sends to (any more) is empty, as its clients expect.
    assert!(
        ann.on(2)
            .messages(r.as_str(), None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(close_code(&mut live).await, 1000);
    // The name is free again, on any instance: a new room, numbered from 1.
    bob.on(2).create_room(r.as_str(), None).await.unwrap();
    let sent = bob.on(1).post_message(r.as_str(), "anew").await.unwrap();
    assert_eq!(sent.message.mess_props.sequence_number, Some(1));
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_room_created_at_once_on_two_instances_is_one_room() {
    let _shared = BROKER.read().await;
    let c = Cluster::start(2).await;
    let (ann, bob, carl) = (
        c.member(0, "ann").await,
        c.member(1, "bob").await,
        c.member(1, "carl").await,
    );
    for _ in 0..5 {
        // The same creator on both instances: one creates, the other gets that room.
        let r = room("twice");
        let (a, b) = tokio::join!(
            ann.on(0).create_room(r.as_str(), None),
            ann.on(1).create_room(r.as_str(), None)
        );
        assert_eq!(a.unwrap(), b.unwrap());
        // Different rooms under one name: one wins, the other hears 409.
        let r = room("contested");
        let (a, b) = tokio::join!(
            ann.on(0).create_room(r.as_str(), None),
            bob.on(1).create_room(r.as_str(), Some(&carl.alias))
        );
        let outcomes = [a.is_ok(), b.is_ok()];
        assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{outcomes:?}");
        let loser = if a.is_ok() {
            b.map(|_| ())
        } else {
            a.map(|_| ())
        };
        assert_eq!(status_of(loser).0, 409);
        // First sends of two aliases at once, on two instances: one group room, both members.
        let r = room("first");
        let send = |from: &Member| SendParams {
            room_name: r.to_string(),
            message: format!("from {}", from.alias),
            from_alias: from.alias.clone(),
            group_room: Some(true),
            ..SendParams::default()
        };
        let (from_ann, from_bob) = (send(&ann), send(&bob));
        let (a, b) = tokio::join!(ann.on(0).send(&from_ann), bob.on(1).send(&from_bob));
        let mut seqs = [a.unwrap(), b.unwrap()].map(|s| s.message.mess_props.sequence_number);
        seqs.sort();
        assert_eq!(seqs, [Some(1), Some(2)]);
        let meta = ann
            .on(1)
            .rooms()
            .await
            .unwrap()
            .into_iter()
            .find(|m| m.name == r)
            .unwrap();
        assert_eq!(meta.members.len(), 2);
    }
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_numbering_instance_under_load_loses_and_renumbers_nothing() {
    let _exclusive = BROKER.write().await;
    let db = unique("mccluster").replace('-', "_");
    let data_dir = tempfile::tempdir().unwrap();
    // The first instance creates the rooms, so it is their active consumer.
    let mut first = spawn_service(Backend::Real, &db, data_dir.path(), &[]).await;
    let owner = alias("owner");
    let rooms = create_rooms_owned_by(&first.base, 3, &owner).await;
    let second = spawn_service(Backend::Real, &db, data_dir.path(), &[]).await;
    let third = spawn_service(Backend::Real, &db, data_dir.path(), &[]).await;
    let bases = Arc::new(Mutex::new(vec![
        first.base.clone(),
        second.base.clone(),
        third.base.clone(),
    ]));
    let load = Load::start(bases.clone(), rooms.clone(), 9);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    first.child.start_kill().unwrap(); // SIGKILL, mid-load
    first.child.wait().await.unwrap();
    *bases.lock().unwrap() = vec![second.base.clone(), third.base.clone()];
    // The survivors take over within seconds: a send through them is stored again.
    let killed = Instant::now();
    let probe = Client::new(second.base.clone());
    eventually("a survivor stores sends again", async || {
        let params = SendParams {
            room_name: rooms[0].to_string(),
            message: format!("probe-{}", killed.elapsed().as_millis()),
            from_alias: "prober".into(),
            group_room: Some(true),
            ..SendParams::default()
        };
        matches!(probe.send(&params).await, Ok(sent) if sent.status == "stored")
    })
    .await;
    eprintln!("stored again {:?} after the kill", killed.elapsed());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (acked, mut senders) = load.stop().await;
    senders.extend([owner, Alias::new("prober").unwrap()]);
    assert!(
        acked.lock().unwrap().len() > 50,
        "too little load to mean anything"
    );

    let store = mess_chat::store::mongo::MongoStore::connect(&common::mongo_url(), &db)
        .await
        .unwrap();
    verify_store(&store, &acked).await;
    verify_api(&second.base, &store, &acked).await;
    verify_api(&third.base, &store, &acked).await;
    // Gone before the cleanup: a live consumer would declare a deleted room queue again.
    for mut survivor in [second, third] {
        survivor.child.kill().await.unwrap();
    }
    let mut env = Env::new(Backend::Real);
    env.mongo_db = db.clone();
    let names: Vec<_> = rooms.iter().map(|r| (r.clone(), true)).collect();
    env.cleanup(&names, &senders).await;
    store.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_load_on_two_instances_loses_and_renumbers_nothing() {
    let _exclusive = BROKER.write().await;
    let c = Cluster::start(2).await;
    let owner = c.member(0, "owner").await;
    let mut rooms = Vec::new();
    for _ in 0..2 {
        let r = room("restart");
        owner.on(0).create_room(r.as_str(), None).await.unwrap();
        rooms.push(r);
    }
    // The load uses the seed's endpoints, which need a token with auth on: give each sender one.
    let bases = Arc::new(Mutex::new(c.bases.clone()));
    let senders = AuthedLoad::start(&c, bases, rooms.clone(), 6).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    common::rabbitmqctl(&["stop_app"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    common::rabbitmqctl(&["start_app"]).await;
    // Both instances store sends again.
    for i in 0..2 {
        let mut attempt = 0;
        eventually("sends are stored again", async || {
            attempt += 1;
            let text = format!("probe-{i}-{attempt}");
            matches!(owner.on(i).post_message(rooms[0].as_str(), &text).await,
                Ok(sent) if sent.status == "stored")
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let acked = senders.stop().await;
    assert!(
        acked.lock().unwrap().len() > 20,
        "too little load to mean anything"
    );
    let store = c.env.mongo().await;
    verify_store(&store, &acked).await;
    for r in &rooms {
        let stored = store.latest_messages(r, 100_000).await.unwrap();
        assert_eq!(
            numbers(&stored),
            (1..=stored.len() as u64).collect::<Vec<_>>()
        );
    }
    c.cleanup().await;
}

/// Members of every room sending REST messages in turn through the instances, recording each
/// send answered 2xx.
struct AuthedLoad {
    acked: common::load::Acked,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AuthedLoad {
    async fn start(
        c: &Cluster,
        bases: Arc<Mutex<Vec<String>>>,
        rooms: Vec<RoomName>,
        workers: usize,
    ) -> Self {
        let acked: common::load::Acked = Arc::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let mut tasks = Vec::new();
        for w in 0..workers {
            let member = c.member(w % c.bases.len(), "w").await;
            for r in &rooms {
                member
                    .on(0)
                    .add_member(r.as_str(), &member.alias)
                    .await
                    .unwrap();
            }
            let (acked, stop, bases, rooms) =
                (acked.clone(), stop.clone(), bases.clone(), rooms.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.is_cancelled() {
                    i += 1;
                    let room = &rooms[i % rooms.len()];
                    let base = {
                        let bases = bases.lock().unwrap();
                        bases[(w + i) % bases.len()].clone()
                    };
                    let client = Client::new(base).with_token(Some(member.token.clone()));
                    let text = format!("{}-{i}", member.alias);
                    match timeout(
                        Duration::from_secs(10),
                        client.post_message(room.as_str(), &text),
                    )
                    .await
                    {
                        Ok(Ok(_)) => acked.lock().unwrap().push((room.clone(), text)),
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        Self { acked, stop, tasks }
    }

    async fn stop(self) -> common::load::Acked {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        self.acked
    }
}
