//! mess-chat on a three-node RabbitMQ cluster with quorum queues (`scripts/rabbit-cluster.sh`,
//! started by `scripts/test.sh`, which exports `MESS_CHAT_CLUSTER_AMQP_URLS`). Under send load
//! through two instances, one node goes: first the node an instance is connected to is stopped
//! (`rabbitmqctl stop`), then the node leading the rooms' queues is killed (SIGKILL, as a host
//! dies). Sends are refused with 503 for a few
//! seconds at most, every send answered 2xx is stored exactly once and numbered 1..N without a
//! gap, and the node, revived, rejoins the cluster.
//!
//! These tests kill nodes every test of this file shares, so they take turns.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::load::{Load, Service, create_rooms_owned_by, send_url, spawn_service};
use common::load::{verify_api, verify_store};
use common::{Backend, alias};
use mess_chat::broker::QueueType;
use mess_chat::broker::rmq::{RabbitBroker, node_urls};
use mess_chat::model::RoomName;
use mess_chat::store::mongo::MongoStore;

/// One test at a time: they kill the nodes they share.
static TAKE_TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbit-cluster.sh");

/// Nodes in the cluster.
const NODES: usize = 3;

/// How long sends may be refused after a node dies.
const REFUSED_AT_MOST: Duration = Duration::from_secs(15);

/// The cluster's node URLs, node 1 first.
fn cluster_urls() -> Vec<String> {
    let urls = std::env::var("MESS_CHAT_CLUSTER_AMQP_URLS").unwrap_or_else(|_| {
        panic!(
            "MESS_CHAT_CLUSTER_AMQP_URLS unset: run the suite with scripts/test.sh, which starts \
             the cluster with scripts/rabbit-cluster.sh and exports the nodes' URLs"
        )
    });
    let urls = node_urls(&urls);
    assert_eq!(urls.len(), NODES, "{urls:?}");
    urls
}

/// The `--amqp-url` value naming every node, node `first` (1-based) first: an instance so started
/// connects to that node while it lives.
fn urls_from(first: usize) -> String {
    let mut urls = cluster_urls();
    urls.rotate_left(first - 1);
    urls.join(",")
}

/// Runs the cluster script, which must succeed.
async fn cluster(args: &[&str]) -> String {
    let output = tokio::process::Command::new(CLUSTER)
        .args(args)
        .output()
        .await
        .expect("scripts/rabbit-cluster.sh runs");
    assert!(
        output.status.success(),
        "rabbit-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `rabbitmqctl` against node `node` (1-based).
async fn rabbitmqctl(node: usize, args: &[&str]) -> String {
    let name = format!("mc{node}@localhost");
    let args: Vec<&str> = ["-n", name.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    common::rabbitmqctl(&args).await
}

/// The node (1-based) leading the quorum queue `queue`, asked of node `ask`.
async fn leader_of(queue: &str, ask: usize) -> usize {
    let listing = rabbitmqctl(
        ask,
        &["list_queues", "-q", "--no-table-headers", "name", "leader"],
    )
    .await;
    let leader = listing
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&queue))
        .and_then(|cols| cols.get(1).map(|l| l.to_string()))
        .unwrap_or_else(|| panic!("queue {queue} has no leader listed: {listing}"));
    (1..=NODES)
        .find(|n| leader == format!("mc{n}@localhost"))
        .unwrap_or_else(|| panic!("leader {leader} is not a cluster node"))
}

/// The running nodes node `ask` sees in its cluster.
async fn running_nodes(ask: usize) -> usize {
    let status = rabbitmqctl(ask, &["cluster_status", "--formatter", "json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("cluster_status json");
    status["running_nodes"]
        .as_array()
        .map_or(0, |nodes| nodes.len())
}

/// Sends through `base` until one is answered 2xx; returns how long that took. Every refusal
/// must be a 503.
async fn until_accepted(base: &str, room: &RoomName) -> Duration {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    for i in 0.. {
        let url = send_url(base, room, "prober", &format!("probe-{i}"));
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => return started.elapsed(),
            Ok(r) => assert_eq!(r.status().as_u16(), 503, "a refusal is a 503"),
            Err(e) => panic!("the instance did not answer: {e}"),
        }
        assert!(
            started.elapsed() < REFUSED_AT_MOST,
            "sends still refused {REFUSED_AT_MOST:?} after the node died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// Which node to kill, given the node leading the rooms' queues.
#[derive(Clone, Copy)]
enum Victim {
    /// The node the first instance is connected to (no room's queue leader), stopped.
    Connected,
    /// The node leading the rooms' queues (no instance connected to it), killed.
    Leader,
}

/// Two instances with quorum queues under send load; `victim` is killed; the checks.
async fn lose_a_node_under_load(victim: Victim) {
    let _turn = TAKE_TURNS.lock().await;
    cluster(&["start"]).await;
    let db = common::unique("mcrabbit").replace('-', "_");
    let data_dir = tempfile::tempdir().unwrap();
    let serve = |first: usize| {
        let (db, dir) = (db.clone(), data_dir.path().to_path_buf());
        async move {
            let urls = urls_from(first);
            let args = ["--amqp-url", &urls, "--queue-type", "quorum"];
            spawn_service(Backend::Real, &db, &dir, &args).await
        }
    };
    // The rooms are made through an instance on node 3, so their queues' leaders live there (or
    // wherever the broker put them: the test asks).
    let owner = alias("owner");
    let maker = serve(3).await;
    let rooms = create_rooms_owned_by(&maker.base, 3, &owner).await;
    drop(maker);
    let leader = leader_of(rooms[0].as_str(), 1).await;
    let others: Vec<usize> = (1..=NODES).filter(|n| *n != leader).collect();
    let (a, b) = (serve(others[0]).await, serve(others[1]).await);
    let (killed, how) = match victim {
        Victim::Connected => (others[0], "stop-node"),
        Victim::Leader => (leader, "kill"),
    };

    let bases = Arc::new(Mutex::new(vec![a.base.clone(), b.base.clone()]));
    let load = Load::start(bases, rooms.clone(), 6);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster(&[how, &killed.to_string()]).await;
    let refused_a = until_accepted(&a.base, &rooms[0]).await;
    let refused_b = until_accepted(&b.base, &rooms[1]).await;
    eprintln!(
        "node {killed} gone ({how}): sends accepted again after {refused_a:?} (a), {refused_b:?} (b)"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (acked, mut senders) = load.stop().await;
    senders.extend([owner, alias("prober")]);
    let total = acked.lock().unwrap().len();
    assert!(total > 50, "too few sends to mean anything: {total}");

    let store = MongoStore::connect(&common::mongo_url(), &db)
        .await
        .unwrap();
    verify_store(&store, &acked).await;
    verify_api(&a.base, &store, &acked).await;
    verify_api(&b.base, &store, &acked).await;

    cluster(&["revive", &killed.to_string()]).await;
    let ask = others.iter().copied().find(|n| *n != killed).unwrap();
    assert_eq!(running_nodes(ask).await, NODES, "the revived node rejoined");

    // Stopped before the clean-up: a live consumer would declare a deleted queue again.
    stop(a).await;
    stop(b).await;
    let mut env = common::Env::new(Backend::Real);
    env.mongo_db = db;
    env.broker = Arc::new(RabbitBroker::new(urls_from(1)).with_queue_type(QueueType::Quorum));
    let names: Vec<_> = rooms.iter().map(|r| (r.clone(), true)).collect();
    env.cleanup(&names, &senders).await;
}

async fn stop(mut service: Service) {
    service.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_node_an_instance_is_connected_to_loses_no_acknowledged_send() {
    lose_a_node_under_load(Victim::Connected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_leading_the_rooms_queues_loses_no_acknowledged_send() {
    lose_a_node_under_load(Victim::Leader).await;
}
