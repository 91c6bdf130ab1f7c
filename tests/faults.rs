//! Faults, against the real servers: the service killed under load, RabbitMQ restarted, the store
//! stopped, a graceful SIGTERM. After each, every send that was answered 2xx is stored exactly
//! once, and each room's sequence numbers run 1..N without a gap or a duplicate.
//!
//! These tests stop shared services (RabbitMQ's app, SecantusDB), so they take turns.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, TestServer, alias, room};
use mess_chat::model::{ChatMessage, RoomName};
use mess_chat::service::ServiceConfig;
use mess_chat::store::Store;
use mess_chat::store::mongo::MongoStore;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// One fault test at a time: they stop services every test shares.
static TAKE_TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends answered 2xx: (room, text).
type Acked = Arc<Mutex<Vec<(RoomName, String)>>>;

/// A `mess-chat serve` child process.
struct Service {
    child: Child,
    base: String,
}

/// Starts the binary on an ephemeral port, on the real back ends (database `db`) or embedded
/// (store in `data_dir`).
async fn spawn_service(backend: Backend, db: &str, data_dir: &std::path::Path) -> Service {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mess-chat"));
    command
        .args(["serve", "--no-auth", "--listen", "127.0.0.1:0"])
        .env("MESS_CHAT_MONGO_DB", db)
        .env("MESS_CHAT_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    match backend {
        Backend::Real => {
            command
                .env("MESS_CHAT_AMQP_URL", common::amqp_url())
                .env("MESS_CHAT_MONGO_URL", common::mongo_url());
        }
        Backend::Embedded => {
            command
                .env_remove("MESS_CHAT_AMQP_URL")
                .env_remove("MESS_CHAT_MONGO_URL");
        }
    }
    let mut child = command.spawn().expect("mess-chat starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("mess-chat announces its address in time")
        .unwrap()
        .expect("a line on stdout");
    let base = line
        .strip_prefix("mess-chat listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Service { child, base }
}

fn send_url(base: &str, room: &RoomName, from: &str, text: &str) -> String {
    format!("{base}/send/?room_name={room}&from_alias={from}&group_room=true&message={text}")
}

/// `workers` tasks sending in turn to `rooms` until `stop`; records the sends answered 2xx.
fn load(
    base: Arc<Mutex<String>>,
    rooms: Vec<RoomName>,
    workers: usize,
    stop: CancellationToken,
) -> (Acked, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Acked = Arc::default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let tasks = (0..workers)
        .map(|w| {
            let (acked, http, rooms, stop, base) = (
                acked.clone(),
                http.clone(),
                rooms.clone(),
                stop.clone(),
                base.clone(),
            );
            let from = alias(&format!("w{w}"));
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.is_cancelled() {
                    i += 1;
                    let room = &rooms[i % rooms.len()];
                    let text = format!("{from}-{i}");
                    let url = send_url(&base.lock().unwrap().clone(), room, from.as_str(), &text);
                    match http.get(url).send().await {
                        Ok(r) if r.status().is_success() => {
                            acked.lock().unwrap().push((room.clone(), text));
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect();
    (acked, tasks)
}

async fn stop_load(stop: &CancellationToken, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Creates group rooms by a first send each, all owned by `owner`.
async fn create_rooms_owned_by(
    base: &str,
    n: usize,
    owner: &mess_chat::model::Alias,
) -> Vec<RoomName> {
    let mut rooms = Vec::new();
    for _ in 0..n {
        let r = room("fault");
        let response = reqwest::get(send_url(base, &r, owner.as_str(), "opening"))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        rooms.push(r);
    }
    rooms
}

/// Creates group rooms by a first send each.
async fn create_rooms(base: &str, n: usize) -> Vec<RoomName> {
    create_rooms_owned_by(base, n, &alias("owner")).await
}

/// Checks a room's stored history: numbers 1..N, texts unique, and every acked text present.
fn check_history(room: &RoomName, stored: &[ChatMessage], acked: &[String]) {
    let numbers: Vec<u64> = stored
        .iter()
        .map(|m| m.mess_props.sequence_number.unwrap())
        .collect();
    let expected: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "room {room}: numbers must be 1..N without gap or duplicate"
    );
    let mut count: HashMap<&str, usize> = HashMap::new();
    for m in stored {
        *count.entry(m.message.as_str()).or_default() += 1;
    }
    let duplicated: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "room {room}: stored twice: {duplicated:?}"
    );
    let missing: Vec<_> = acked
        .iter()
        .filter(|t| !count.contains_key(t.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "room {room}: acknowledged but lost: {missing:?}"
    );
}

fn by_room(acked: &Acked) -> BTreeMap<RoomName, Vec<String>> {
    let mut rooms: BTreeMap<RoomName, Vec<String>> = BTreeMap::new();
    for (room, text) in acked.lock().unwrap().iter() {
        rooms.entry(room.clone()).or_default().push(text.clone());
    }
    rooms
}

/// Waits (bounded) until the store holds every acked message, then checks every room.
async fn verify_store(store: &dyn Store, acked: &Acked) {
    let rooms = by_room(acked);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (room, texts) in &rooms {
        loop {
            let stored = store.latest_messages(room, 100_000).await.unwrap();
            let have: std::collections::HashSet<&str> =
                stored.iter().map(|m| m.message.as_str()).collect();
            if texts.iter().all(|t| have.contains(t.as_str())) || Instant::now() > deadline {
                check_history(room, &stored, texts);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks through the API that each room's history lists the stored texts in order.
async fn verify_api(base: &str, store: Option<&dyn Store>, acked: &Acked) {
    for (room, texts) in by_room(acked) {
        let url = format!("{base}/messages/?room_name={room}&limit=1000");
        let listed: Vec<String> = reqwest::get(url).await.unwrap().json().await.unwrap();
        match store {
            Some(store) => {
                let stored = store.latest_messages(&room, 1000).await.unwrap();
                let texts: Vec<String> = stored.into_iter().map(|m| m.message).collect();
                assert_eq!(listed, texts, "room {room}: API and store disagree");
            }
            None => {
                for text in &texts {
                    assert_eq!(
                        listed.iter().filter(|l| *l == text).count(),
                        1,
                        "room {room}: {text}"
                    );
                }
            }
        }
    }
}

async fn crash_under_load(backend: Backend) {
    let _turn = TAKE_TURNS.lock().await;
    let db = common::unique("mcfault").replace('-', "_");
    let data_dir = tempfile::tempdir().unwrap();
    let mut service = spawn_service(backend, &db, data_dir.path()).await;
    let rooms = create_rooms(&service.base, 3).await;
    let base = Arc::new(Mutex::new(service.base.clone()));
    let stop = CancellationToken::new();
    let (acked, tasks) = load(base.clone(), rooms.clone(), 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    service.child.start_kill().unwrap(); // SIGKILL, mid-load
    service.child.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = spawn_service(backend, &db, data_dir.path()).await;
    *base.lock().unwrap() = restarted.base.clone();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop_load(&stop, tasks).await;

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
            verify_api(&restarted.base, Some(&store), &acked).await;
            let env = common::Env::new(Backend::Real);
            let aliases: Vec<_> = Vec::new();
            let names: Vec<_> = rooms.iter().map(|r| (r.clone(), true)).collect();
            env.cleanup(&names, &aliases).await;
            store.drop_database().await.unwrap();
        }
        Backend::Embedded => {
            // The embedded store is the server's own file: check it through the API.
            for (room, texts) in by_room(&acked) {
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

async fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_a_broker_restart_and_the_service_reconnects() {
    let _turn = TAKE_TURNS.lock().await;
    let t = TestServer::start(Backend::Real).await;
    let base = t.client.base().to_string();
    let rooms = create_rooms(&base, 2).await;
    let stop = CancellationToken::new();
    let (acked, tasks) = load(
        Arc::new(Mutex::new(base.clone())),
        rooms.clone(),
        6,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;

    rabbitmqctl(&["stop_app"]).await;
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

    rabbitmqctl(&["start_app"]).await;
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
    stop_load(&stop, tasks).await;
    eprintln!("sends accepted again {ok_again:?} after start_app");

    let store = t.env.mongo().await;
    verify_store(&store, &acked).await;
    verify_api(&base, Some(&store), &acked).await;
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
            assert_eq!(response.status().as_u16(), 202, "send during the outage");
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
        acked
    }
    .await;
    drop(restart);
    let acked: Acked = Arc::new(Mutex::new(result));

    let store = t.env.mongo().await;
    verify_store(&store, &acked).await;
    verify_api(&base, Some(&store), &acked).await;
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    let _turn = TAKE_TURNS.lock().await;
    let db = common::unique("mcterm").replace('-', "_");
    let data_dir = tempfile::tempdir().unwrap();
    let mut service = spawn_service(Backend::Real, &db, data_dir.path()).await;
    let rooms = create_rooms(&service.base, 2).await;
    let stop = CancellationToken::new();
    let (acked, tasks) = load(
        Arc::new(Mutex::new(service.base.clone())),
        rooms.clone(),
        6,
        stop.clone(),
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
    stop_load(&stop, tasks).await;
    assert!(exit.success(), "exit status {exit:?}");

    // Everything acknowledged before the exit is stored, without waiting for another start.
    let store = MongoStore::connect(&common::mongo_url(), &db)
        .await
        .unwrap();
    for (room, texts) in by_room(&acked) {
        let stored = store.latest_messages(&room, 100_000).await.unwrap();
        check_history(&room, &stored, &texts);
    }
    let env = common::Env::new(Backend::Real);
    let names: Vec<_> = rooms.iter().map(|r| (r.clone(), true)).collect();
    env.cleanup(&names, &[]).await;
    store.drop_database().await.unwrap();
}
