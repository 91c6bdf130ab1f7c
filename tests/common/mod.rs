//! Shared test harness: the back ends (embedded, or the real RabbitMQ and MongoDB-protocol
//! server), unique names so tests run in parallel, a server on an ephemeral port, and cleanup.
//!
//! The real back ends are found through `MESS_CHAT_AMQP_URL` and `MESS_CHAT_MONGO_URL`, which
//! `scripts/test.sh` sets after starting the services. A test that needs them and does not find
//! them fails: a missing service is never a skip.
#![allow(dead_code)]

pub mod load;

use std::sync::Arc;

use mess_chat::broker::memory::MemoryBroker;
use mess_chat::broker::rmq::RabbitBroker;
use mess_chat::broker::{Broker, QueueType};
use mess_chat::client::Client;
use mess_chat::model::{Alias, RoomName};
use mess_chat::server::Server;
use mess_chat::service::ServiceConfig;
use mess_chat::store::Store;
use mess_chat::store::embedded::EmbeddedStore;
use mess_chat::store::mongo::MongoStore;
use tempfile::TempDir;
use tokio::net::TcpListener;

const HOW_TO: &str = "run the suite with scripts/test.sh, which starts RabbitMQ and SecantusDB \
                      and exports their URLs";

/// Runs each named `async fn(Backend)` once per back end, as `embedded::<name>` and
/// `real::<name>` (multi-threaded runtimes, since most tests run a server beside the client).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { super::$name($crate::common::Backend::Embedded).await })*
        }
        mod real {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { super::$name($crate::common::Backend::Real).await })*
        }
    };
}

/// Shows the service's logs in test output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The queue type the real back end's rooms get: `MESS_CHAT_QUEUE_TYPE` (`classic` unless set;
/// `scripts/test.sh` runs the conformance and fault suites a second time with `quorum`). A
/// service the tests start as a process reads the same variable.
pub fn queue_type() -> QueueType {
    match std::env::var("MESS_CHAT_QUEUE_TYPE").as_deref() {
        Err(_) | Ok("") | Ok("classic") => QueueType::Classic,
        Ok("quorum") => QueueType::Quorum,
        Ok(other) => panic!("MESS_CHAT_QUEUE_TYPE={other}: classic or quorum"),
    }
}

/// Runs `rabbitmqctl` with `args` (on the default node unless they say `-n`), which must
/// succeed, and returns what it printed.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every binding on the default node, as (source, destination).
pub async fn bindings() -> Vec<(String, String)> {
    let listing = rabbitmqctl(&[
        "list_bindings",
        "-q",
        "--no-table-headers",
        "source_name",
        "destination_name",
    ])
    .await;
    listing
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.to_string(), cols.next()?.to_string()))
        })
        .collect()
}

/// Whether `source` is bound to `destination` on the default node.
pub async fn is_bound(source: &str, destination: &str) -> bool {
    bindings()
        .await
        .iter()
        .any(|(s, d)| s == source && d == destination)
}

/// The real RabbitMQ, declaring queues of [`queue_type`].
pub fn rabbit() -> RabbitBroker {
    RabbitBroker::new(amqp_url()).with_queue_type(queue_type())
}

/// URL of the real RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("MESS_CHAT_AMQP_URL")
        .unwrap_or_else(|_| panic!("MESS_CHAT_AMQP_URL unset: {HOW_TO}"))
}

/// URL of the real MongoDB-protocol server.
pub fn mongo_url() -> String {
    std::env::var("MESS_CHAT_MONGO_URL")
        .unwrap_or_else(|_| panic!("MESS_CHAT_MONGO_URL unset: {HOW_TO}"))
}

/// A name no other test uses: `prefix-` and 12 hex digits.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A unique, valid room name.
pub fn room(prefix: &str) -> RoomName {
    RoomName::new(unique(prefix)).expect("valid room name")
}

/// A unique, valid alias.
pub fn alias(prefix: &str) -> Alias {
    Alias::new(unique(prefix)).expect("valid alias")
}

/// Which back ends a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In-process broker and redb store in a temporary directory.
    Embedded,
    /// RabbitMQ and the MongoDB-protocol server, in a database of the test's own.
    Real,
}

/// One test's back ends. Restarting a server reopens the store and keeps the broker, as a real
/// deployment would.
pub struct Env {
    pub backend: Backend,
    /// The broker (the embedded one lives as long as the `Env`, like a broker process).
    pub broker: Arc<dyn Broker>,
    /// The test's own database (real back end).
    pub mongo_db: String,
    /// The embedded store's directory.
    pub data_dir: TempDir,
}

impl Env {
    pub fn new(backend: Backend) -> Self {
        let broker: Arc<dyn Broker> = match backend {
            Backend::Embedded => Arc::new(MemoryBroker::new()),
            Backend::Real => Arc::new(rabbit()),
        };
        Self {
            backend,
            broker,
            mongo_db: unique("mctest").replace('-', "_"),
            data_dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// Opens the store (a fresh handle each time).
    pub async fn store(&self) -> Arc<dyn Store> {
        match self.backend {
            Backend::Embedded => {
                Arc::new(EmbeddedStore::open(self.data_dir.path()).expect("embedded store"))
            }
            Backend::Real => Arc::new(self.mongo().await),
        }
    }

    /// A handle on the test's MongoDB database. With `MESS_CHAT_TEST_STORE_WRITES=alone` it
    /// writes each room's batch alone, as against a server before MongoDB 8.0 (`scripts/test.sh`
    /// runs the store conformance suite so once more).
    pub async fn mongo(&self) -> MongoStore {
        let store = match std::env::var("MESS_CHAT_TEST_STORE_WRITES").as_deref() {
            Err(_) | Ok("") | Ok("together") => {
                MongoStore::connect(&mongo_url(), &self.mongo_db).await
            }
            Ok("alone") => {
                MongoStore::connect_writing_rooms_alone(&mongo_url(), &self.mongo_db).await
            }
            Ok(other) => panic!("MESS_CHAT_TEST_STORE_WRITES={other}: together or alone"),
        };
        store.expect("MongoDB URL parses")
    }

    /// Removes what the test left on the shared servers: its queues and exchanges (`rooms` and
    /// `aliases`, and on the real back end every room of the test database's room list and every
    /// alias its memberships index saw), and its database. Stop the test's services first: a
    /// running consumer declares a deleted room queue again. A queue or exchange that cannot be
    /// deleted (the broker already runs a delete once more if its connection went down under
    /// it) fails the test, naming it, rather than staying behind on the shared broker.
    pub async fn cleanup(&self, rooms: &[(RoomName, bool)], aliases: &[Alias]) {
        let mut rooms = rooms.to_vec();
        let mut aliases = aliases.to_vec();
        if self.backend == Backend::Real {
            let store = self.mongo().await;
            aliases.extend(store.known_aliases().await.expect("read the memberships"));
            let listed = store
                .load_room_list("main")
                .await
                .expect("read the room list");
            for name in listed.map(|l| l.rooms).unwrap_or_default() {
                let meta = store.load_room(&name).await.expect("read a room");
                rooms.push((name, meta.is_none_or(|m| m.group_room)));
            }
        }
        rooms.sort();
        rooms.dedup();
        aliases.sort();
        aliases.dedup();
        let mut left = Vec::new();
        for (room, group_room) in &rooms {
            if let Err(e) = self.broker.delete_room(room, *group_room).await {
                left.push(format!("room {room}: {e}"));
            }
        }
        for alias in &aliases {
            if let Err(e) = self.broker.delete_inbox(alias).await {
                left.push(format!("inbox of {alias}: {e}"));
            }
        }
        if self.backend == Backend::Real {
            self.mongo()
                .await
                .drop_database()
                .await
                .expect("drop test database");
        }
        assert!(
            left.is_empty(),
            "cleanup could not delete from RabbitMQ: {}",
            left.join("; ")
        );
    }
}

/// A mess-chat server on an ephemeral port, with a client for it.
pub struct TestServer {
    pub env: Env,
    pub server: Option<Server>,
    pub client: Client,
    pub config: ServiceConfig,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, ServiceConfig::default()).await
    }

    /// A server with authentication on and a cache of 5 messages per room (so that reads cross
    /// from the cache into the store early).
    pub async fn start_authenticated(backend: Backend) -> Self {
        let config = ServiceConfig {
            require_auth: true,
            cache_capacity: 5,
            ..ServiceConfig::default()
        };
        Self::start_with(backend, config).await
    }

    pub async fn start_with(backend: Backend, config: ServiceConfig) -> Self {
        let env = Env::new(backend);
        let server = Self::spawn(&env, config.clone()).await;
        let client = Client::new(format!("http://{}", server.addr()));
        Self {
            env,
            server: Some(server),
            client,
            config,
        }
    }

    async fn spawn(env: &Env, config: ServiceConfig) -> Server {
        init_logs();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        Server::start_with(listener, env.broker.clone(), env.store().await, config)
            .await
            .expect("server starts")
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.client.base(), path_and_query)
    }

    /// Stops the server gracefully and starts a new one on the same back ends.
    pub async fn restart(&mut self) {
        self.stop().await;
        let server = Self::spawn(&self.env, self.config.clone()).await;
        self.client = Client::new(format!("http://{}", server.addr()));
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("graceful stop");
        }
    }

    /// Deletes every room the server knows (queues, exchanges, member inboxes) and the database.
    pub async fn cleanup(mut self) {
        let rooms = self.server().service().rooms().rooms();
        let names: Vec<(RoomName, bool)> = rooms
            .iter()
            .map(|r| (r.name().clone(), r.group_room()))
            .collect();
        let mut aliases: Vec<Alias> = rooms.iter().flat_map(|r| r.members()).collect();
        aliases.sort();
        aliases.dedup();
        self.stop().await;
        self.env.cleanup(&names, &aliases).await;
    }
}
