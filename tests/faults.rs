//! Faults, against the real servers: the service killed under load, RabbitMQ restarted, the store
//! stopped, a graceful SIGTERM. After each, every send that was answered 2xx is stored exactly
//! once, and each room's sequence numbers run 1..N without a gap or a duplicate.
//!
//! These tests stop shared services (RabbitMQ's app, SecantusDB), so they take turns.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::load::{
    Load, by_room, check_history, create_rooms_owned_by, send_url, spawn_service, verify_api,
    verify_store,
};
use common::{Backend, TestServer, alias};
use mess_chat::model::RoomName;
use mess_chat::service::ServiceConfig;
use mess_chat::store::Store;
use mess_chat::store::mongo::MongoStore;
use tokio::process::Command;

/// One fault test at a time: they stop services every test shares.
static TAKE_TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates group rooms by a first send each.
async fn create_rooms(base: &str, n: usize) -> Vec<RoomName> {
    create_rooms_owned_by(base, n, &alias("owner")).await
}

async fn crash_under_load(backend: Backend) {
    let _turn = TAKE_TURNS.lock().await;
    let db = common::unique("mcfault").replace('-', "_");
    let data_dir = tempfile::tempdir().unwrap();
    let mut service = spawn_service(backend, &db, data_dir.path(), &[]).await;
    let owner = alias("owner");
    // Eight rooms: each must stay under the 1,000 newest messages one read returns (three rooms
    // took 1,095 sends each on a quiet machine, and the check read as a loss).
    let rooms = create_rooms_owned_by(&service.base, 8, &owner).await;
    let bases = Arc::new(Mutex::new(vec![service.base.clone()]));
    let load = Load::start(bases.clone(), rooms.clone(), 8);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    service.child.start_kill().unwrap(); // SIGKILL, mid-load
    service.child.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = spawn_service(backend, &db, data_dir.path(), &[]).await;
    *bases.lock().unwrap() = vec![restarted.base.clone()];
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (acked, mut senders) = load.stop().await;
    senders.push(owner);

    let total = acked.lock().unwrap().len();
    assert!(
        total > 50,
        "the load made too few sends to mean anything: {total}"
    );
    match backend {
        Backend::Real => {
            let store = MongoStore::connect(&common::mongo_url(), &db)
                .await
                .unwrap();
            verify_store(&store, &acked).await;
            verify_api(&restarted.base, &store, &acked).await;
            // Gone before the cleanup: a live consumer would declare a deleted room queue again.
            let mut restarted = restarted;
            restarted.child.kill().await.unwrap();
            let mut env = common::Env::new(Backend::Real);
            env.mongo_db = db.clone();
            let names: Vec<_> = rooms.iter().map(|r| (r.clone(), true)).collect();
            env.cleanup(&names, &senders).await;
            store.drop_database().await.unwrap();
        }
        Backend::Embedded => {
            // The embedded store is the server's own file: check it through the API.
            for (room, texts) in by_room(&acked) {
                assert!(
                    texts.len() < 1000,
                    "{room}: {} sends, more than one read shows",
                    texts.len()
                );
                let url = format!("{}/messages/?room_name={room}&limit=1000", restarted.base);
                let listed: Vec<String> = reqwest::get(url).await.unwrap().json().await.unwrap();
                for text in &texts {
                    assert_eq!(
                        listed.iter().filter(|l| *l == text).count(),
                        1,
                        "{room}: {text}"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_a_crash_of_the_service() {
    crash_under_load(Backend::Real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_a_crash_of_the_embedded_service() {
    crash_under_load(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_a_broker_restart_and_the_service_reconnects() {
    let _turn = TAKE_TURNS.lock().await;
    let t = TestServer::start(Backend::Real).await;
    let base = t.client.base().to_string();
    let rooms = create_rooms(&base, 2).await;
    let load = Load::start(Arc::new(Mutex::new(vec![base.clone()])), rooms.clone(), 6);
    tokio::time::sleep(Duration::from_millis(800)).await;

    common::rabbitmqctl(&["stop_app"]).await;
    // While the broker is away, a send is refused quickly with a JSON 503.
    let probe = send_url(&base, &rooms[0], "prober", "during-outage");
    let started = Instant::now();
    let response = reqwest::get(&probe).await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 took {:?}",
        started.elapsed()
    );
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    common::rabbitmqctl(&["start_app"]).await;
    let back = Instant::now();
    let ok_again = loop {
        let probe = send_url(
            &base,
            &rooms[0],
            "prober",
            &format!("after-{}", back.elapsed().as_millis()),
        );
        if reqwest::get(&probe).await.unwrap().status().is_success() {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "sends still refused 20 s after the broker returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, _) = load.stop().await;
    eprintln!("sends accepted again {ok_again:?} after start_app");

    let store = t.env.mongo().await;
    verify_store(&store, &acked).await;
    verify_api(&base, &store, &acked).await;
    t.cleanup().await;
}

const SERVICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");

async fn services(command: &str) {
    let status = Command::new(SERVICES)
        .arg(command)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "services.sh {command}");
}

/// Starts the store again when dropped, even if the test panicked while it was stopped.
struct RestartStoreOnDrop;

impl Drop for RestartStoreOnDrop {
    fn drop(&mut self) {
        let status = std::process::Command::new(SERVICES)
            .arg("start-mongo")
            .stdout(Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "services.sh start-mongo");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_a_store_outage_are_stored_once_it_returns() {
    let _turn = TAKE_TURNS.lock().await;
    let config = ServiceConfig {
        store_wait: Duration::from_millis(500),
        ..ServiceConfig::default()
    };
    let t = TestServer::start_with(Backend::Real, config).await;
    let base = t.client.base().to_string();
    let member = alias("member");
    let rooms = create_rooms_owned_by(&base, 2, &member).await;

    services("stop-mongo").await;
    let restart = RestartStoreOnDrop;
    let result = async {
        let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(
            ready.status().as_u16(),
            503,
            "readyz must tell the store is down"
        );
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(
            (body["broker"].as_bool(), body["store"].as_bool()),
            (Some(true), Some(false))
        );
        // The broker holds what the store cannot take yet: sends are accepted (202).
        let mut acked = Vec::new();
        for i in 0..20 {
            let r = &rooms[i % 2];
            let text = format!("outage-{i}");
            let response = reqwest::get(send_url(&base, r, member.as_str(), &text))
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert_eq!(status, 202, "send during the outage: {body}");
            acked.push((r.clone(), text));
        }
        // Joining a room means saving its membership: refused while the store is away.
        let newcomer = reqwest::get(send_url(&base, &rooms[0], "newcomer", "hi"))
            .await
            .unwrap();
        assert_eq!(newcomer.status().as_u16(), 503);
        // The cache still answers reads.
        let cached = reqwest::get(format!("{base}/messages/?room_name={}&limit=1", rooms[0]))
            .await
            .unwrap();
        assert_eq!(cached.status().as_u16(), 200);
        // A send goes to the broker transient first; one answered 202 has a persistent copy
        // there, which a broker restart during the outage must not lose.
        let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap();
        let kept = mess_chat::metrics::value_in(
            &metrics.text().await.unwrap(),
            "mess_chat_sends_kept_on_disk_total",
        );
        assert!(kept >= Some(20.0), "persistent copies made: {kept:?}");
        common::rabbitmqctl(&["stop_app"]).await;
        common::rabbitmqctl(&["start_app"]).await;
        acked
    }
    .await;
    drop(restart);
    let acked = Arc::new(Mutex::new(result));

    let store = t.env.mongo().await;
    verify_store(&store, &acked).await;
    verify_api(&base, &store, &acked).await;
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    let _turn = TAKE_TURNS.lock().await;
    let db = common::unique("mcterm").replace('-', "_");
    let data_dir = tempfile::tempdir().unwrap();
    let mut service = spawn_service(Backend::Real, &db, data_dir.path(), &[]).await;
    let owner = alias("owner");
    let rooms = create_rooms_owned_by(&service.base, 2, &owner).await;
    let load = Load::start(
        Arc::new(Mutex::new(vec![service.base.clone()])),
        rooms.clone(),
        6,
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let pid = service.child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), service.child.wait())
        .await
        .expect("exits within 15 s of SIGTERM")
        .unwrap();
    let (acked, mut senders) = load.stop().await;
    senders.push(owner);
    assert!(exit.success(), "exit status {exit:?}");

    // Everything acknowledged before the exit is stored, without waiting for another start.
    let store = MongoStore::connect(&common::mongo_url(), &db)
        .await
        .unwrap();
    for (room, texts) in by_room(&acked) {
        let stored = store.latest_messages(&room, 100_000).await.unwrap();
        check_history(&room, &stored, &texts);
    }
    let mut env = common::Env::new(Backend::Real);
    env.mongo_db = db.clone();
    let names: Vec<_> = rooms.iter().map(|r| (r.clone(), true)).collect();
    env.cleanup(&names, &senders).await;
    store.drop_database().await.unwrap();
}
