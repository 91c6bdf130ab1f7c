//! A deployment as an operator runs it — `scripts/cluster.sh start 3`: three `mess-chat serve`
//! processes on the real RabbitMQ and one MongoDB database, behind HAProxy — serves as one
//! service through the load balancer alone: registrations, a room, a membership and 30 sends
//! that HAProxy spreads over the instances (their own counters show it) are all answered
//! "stored", numbered 1..=30 once each, pushed in order over a live feed that goes through the
//! load balancer, and served as the same history by the load balancer and by every instance's
//! own port. Authentication is on; whatever happens, the deployment is stopped and the room's
//! queues, the aliases' inboxes and the database are removed.
//!
//! Needs RabbitMQ and SecantusDB (`scripts/test.sh` starts them) and HAProxy (the script
//! installs it); anything missing fails the test.

mod common;

use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use mess_chat::client::Client;
use mess_chat::model::{Alias, ChatMessage, RoomName};
use mess_chat::store::mongo::MongoStore;
use tempfile::TempDir;
use tokio::time::timeout;

/// Instances the deployment runs.
const INSTANCES: u16 = 3;
/// Messages the test sends.
const SENDS: u64 = 30;
/// Longest wait for one live message.
const WAIT: Duration = Duration::from_secs(15);
/// Longest wait for an instance's own port to serve the whole history.
const CONVERGE: Duration = Duration::from_secs(10);
/// Longest wait for the script to start everything (it may install HAProxy).
const START: Duration = Duration::from_secs(300);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh")
}

/// A loopback port for the load balancer whose next `INSTANCES` ports are free too.
fn free_port_block() -> u16 {
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .unwrap()
            .port();
        let Some(last) = port.checked_add(INSTANCES) else {
            continue;
        };
        if (port..=last).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return port;
        }
    }
    panic!("no block of {} free loopback ports", INSTANCES + 1);
}

/// The deployment started by `scripts/cluster.sh`; dropping it (even in a panic) stops it.
struct Deployment {
    dir: TempDir,
    port: u16,
    db: String,
    stopped: bool,
}

impl Deployment {
    /// A port block and a directory for the deployment; nothing runs yet.
    fn new(db: &str) -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            port: free_port_block(),
            db: db.to_string(),
            stopped: false,
        }
    }

    /// `scripts/cluster.sh start 3`, auth on; checks the load balancer URL it exports.
    async fn start(&self) {
        let run = tokio::process::Command::new(script())
            .args(["start", &INSTANCES.to_string()])
            .env("MESS_CHAT_BIN", env!("CARGO_BIN_EXE_mess-chat"))
            .env("MESS_CHAT_CLUSTER_PORT", self.port.to_string())
            .env("MESS_CHAT_CLUSTER_DIR", self.dir.path())
            .env("MESS_CHAT_MONGO_DB", &self.db)
            // The real back ends, as the rest of the suite finds them (a missing one fails here).
            .env("MESS_CHAT_AMQP_URL", common::amqp_url())
            .env("MESS_CHAT_MONGO_URL", common::mongo_url())
            .env_remove("MESS_CHAT_NO_AUTH")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            // Not `output()`, which would capture stderr too: the script's progress shows.
            .spawn()
            .expect("scripts/cluster.sh runs")
            .wait_with_output();
        let output = timeout(START, run)
            .await
            .expect("scripts/cluster.sh start finishes")
            .expect("scripts/cluster.sh start's output is read");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "scripts/cluster.sh start failed ({}); stdout: {stdout}",
            output.status
        );
        let server = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export MESS_CHAT_SERVER='"))
            .and_then(|rest| rest.strip_suffix('\''))
            .unwrap_or_else(|| panic!("no MESS_CHAT_SERVER export in: {stdout}"));
        assert_eq!(server, self.lb(), "the exported load balancer URL");
    }

    /// The load balancer's URL.
    fn lb(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Instance `i`'s own URL (1-based).
    fn instance(&self, i: u16) -> String {
        format!("http://127.0.0.1:{}", self.port + i)
    }

    /// `scripts/cluster.sh stop` (once); whether it succeeded.
    fn stop(&mut self) -> bool {
        if self.stopped {
            return true;
        }
        self.stopped = true;
        let status = std::process::Command::new(script())
            .arg("stop")
            .env("MESS_CHAT_CLUSTER_DIR", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("scripts/cluster.sh stop: {status:?}");
            return false;
        }
        true
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the test creates on the shared servers.
struct Names {
    db: String,
    room: RoomName,
    ann: Alias,
    bob: Alias,
}

/// The room's whole history (one page) through `client`.
async fn history(client: &Client, room: &RoomName) -> Vec<ChatMessage> {
    let page = client
        .page(room.as_str(), None, None, 100)
        .await
        .unwrap_or_else(|e| panic!("history of {room} through {}: {e}", client.base()));
    assert!(!page.more, "30 messages fit in one page of 100");
    page.messages
}

/// How many sends instance `base` answered "stored" (its own `/metrics`).
async fn stored_sends(base: &str) -> u64 {
    let url = format!("{base}/metrics");
    let response = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let text = response.text().await.expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("mess_chat_sends_total{outcome=\"stored\"} "))
        .map_or(0, |n| {
            n.trim()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{url}: {n}: {e}")) as u64
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_behind_haproxy_serves_as_one() {
    common::init_logs();
    let names = Names {
        db: common::unique("mcdeploy").replace('-', "_"),
        room: common::room("deploy"),
        ann: common::alias("ann"),
        bob: common::alias("bob"),
    };
    let mut deployment = Deployment::new(&names.db);
    // Whatever happens in the scenario, the deployment stops and the shared servers are cleaned.
    let outcome = AssertUnwindSafe(serve_as_one(&deployment, &names))
        .catch_unwind()
        .await;
    let stopped = deployment.stop();
    // What is left on the broker (the room's queue and exchange, the aliases' inboxes) and the
    // database.
    common::Env::new(common::Backend::Real)
        .cleanup(&[(names.room.clone(), true)], &[names.ann, names.bob])
        .await;
    MongoStore::connect(&common::mongo_url(), &names.db)
        .await
        .unwrap()
        .drop_database()
        .await
        .expect("drop the deployment's database");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert!(stopped, "scripts/cluster.sh stop failed");
}

/// The scenario, through the load balancer alone (and, for history, each instance's own port).
async fn serve_as_one(deployment: &Deployment, names: &Names) {
    deployment.start().await;
    let lb = Client::new(deployment.lb());

    // Two aliases, a group room and a membership, each request through the load balancer.
    let ann_token = lb
        .register(names.ann.as_str())
        .await
        .expect("ann registers");
    let bob_token = lb
        .register(names.bob.as_str())
        .await
        .expect("bob registers");
    assert_eq!(ann_token.alias, names.ann.as_str());
    let ann = Client::new(deployment.lb()).with_token(Some(ann_token.token.clone()));
    let bob = Client::new(deployment.lb()).with_token(Some(bob_token.token));
    let meta = ann
        .create_room(names.room.as_str(), None)
        .await
        .expect("ann creates a group room");
    assert!(meta.group_room);
    bob.add_member(names.room.as_str(), names.bob.as_str())
        .await
        .expect("bob joins");

    // Bob's live feed goes through the load balancer too (a WebSocket upgrade HAProxy passes).
    let mut feed = bob
        .live(names.room.as_str(), Some(0))
        .await
        .expect("bob's live feed opens through haproxy");

    let mut sent = Vec::new();
    for i in 1..=SENDS {
        let (client, from) = if i % 2 == 1 {
            (&ann, &names.ann)
        } else {
            (&bob, &names.bob)
        };
        let text = format!("message {i} from {from}");
        let answer = client
            .post_message(names.room.as_str(), &text)
            .await
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
        assert_eq!(answer.status, "stored", "send {i}: {answer:?}");
        assert_eq!(answer.message.message, text);
        sent.push((text, from.clone()));
    }

    // The load balancer spread them: the instances' own counters add up to 30, on more than one
    // instance (round robin; fewer than three only if a health check flapped).
    let mut per_instance = Vec::new();
    for i in 1..=INSTANCES {
        per_instance.push(stored_sends(&deployment.instance(i)).await);
    }
    assert_eq!(
        per_instance.iter().sum::<u64>(),
        SENDS,
        "sends stored per instance: {per_instance:?}"
    );
    assert!(
        per_instance.iter().filter(|n| **n > 0).count() >= 2,
        "haproxy sent every send to one instance: {per_instance:?}"
    );

    let mut live = Vec::new();
    for (i, (text, from)) in sent.iter().enumerate() {
        let message = timeout(WAIT, feed.next())
            .await
            .unwrap_or_else(|_| panic!("live message {} never came", i + 1))
            .expect("the live feed works")
            .expect("the live feed stays open");
        assert_eq!(
            message.mess_props.sequence_number,
            Some(i as u64 + 1),
            "live message {}: {message:?}",
            i + 1
        );
        assert_eq!(&message.message, text);
        assert_eq!(&message.mess_props.from_user, from);
        live.push(message);
    }
    assert!(
        timeout(Duration::from_secs(1), feed.next()).await.is_err(),
        "the live feed yields nothing beyond the 30 messages"
    );
    drop(feed);

    // The history through the load balancer is exactly what was pushed live.
    assert_eq!(
        history(&ann, &names.room).await,
        live,
        "history through haproxy"
    );

    // And every instance's own port serves the same history (the instance that numbered the
    // room at once, the others once they have caught up).
    for i in 1..=INSTANCES {
        let own = Client::new(deployment.instance(i)).with_token(Some(ann_token.token.clone()));
        let deadline = Instant::now() + CONVERGE;
        loop {
            let page = history(&own, &names.room).await;
            if page == live {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "instance {i} ({}) serves another history: {} messages, sequence numbers {:?}",
                own.base(),
                page.len(),
                page.iter()
                    .map(|m| m.mess_props.sequence_number)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The room goes through the API (its owner deletes it).
    ann.delete_room(names.room.as_str())
        .await
        .expect("ann deletes the room");
}
