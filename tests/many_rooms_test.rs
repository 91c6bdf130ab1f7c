//! Many rooms on one instance: more rooms than RabbitMQ allows channels on a connection (2,047),
//! each answered "stored"; the consumers share channels; after a restart the instance serves a
//! room at once and is ready (every consumer subscribed) within 10 s. On both back ends, one after the other (the gauges
//! of `/metrics` are the process's own); and on two instances of the real back ends, rooms made
//! through both and sent to through the other.

mod common;

use std::time::{Duration, Instant};

use std::sync::Arc;

use common::{Backend, Env, TestServer, alias, room};
use futures_util::{FutureExt, StreamExt};
use mess_chat::broker::Broker;
use mess_chat::broker::rmq::RabbitBroker;
use mess_chat::model::{Alias, RoomName};
use mess_chat::server::Server;
use mess_chat::service::ServiceConfig;
use std::panic::AssertUnwindSafe;
use tokio::net::TcpListener;

/// Past RabbitMQ's default of 2,047 channels per connection: with a channel per room, every room
/// from the 2,047th on was never stored.
const ROOMS: usize = 2_200;
/// Sends in flight at once.
const CONCURRENCY: usize = 32;
/// How long a restarted instance may take to be ready: every room's consumer subscribed (each
/// declares its room's queue and consumes; about 1.6 s measured on the real back ends in a debug
/// build).
const READY_WITHIN: Duration = Duration::from_secs(10);

/// One back end at a time: both read the process's gauges.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_every_one_of_many_rooms_is_stored_and_ready_soon_after_a_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    every_one_of_many_rooms_is_stored_and_ready_soon_after_a_restart(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_every_one_of_many_rooms_is_stored_and_ready_soon_after_a_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    every_one_of_many_rooms_is_stored_and_ready_soon_after_a_restart(Backend::Real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_many_rooms_made_through_two_instances_are_each_stored_through_either() {
    let _one = ONE_AT_A_TIME.lock().await;
    common::init_logs();
    let env = Env::new(Backend::Real);
    let mut servers = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker: Arc<dyn Broker> = Arc::new(RabbitBroker::new(common::amqp_url()));
        let store = Arc::new(env.mongo().await);
        let server = Server::start_with(listener, broker, store, ServiceConfig::default())
            .await
            .expect("an instance starts");
        servers.push(server);
    }
    let bases: Vec<String> = servers
        .iter()
        .map(|s| format!("http://{}", s.addr()))
        .collect();
    let outcome = AssertUnwindSafe(across_two(&servers, &bases))
        .catch_unwind()
        .await;
    for server in servers {
        server.stop().await.expect("graceful stop");
    }
    env.cleanup(&[], &[]).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn across_two(servers: &[Server], bases: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while servers.iter().any(|s| s.service().peers() < 1) {
        assert!(
            Instant::now() < deadline,
            "the instances never heard each other"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let owner = alias("owner");
    let rooms: Vec<RoomName> = (0..ROOMS).map(|_| room("pair")).collect();
    // Half the rooms are made through each instance (whose consumer, subscribing first, is the
    // room's active one); then each room is sent to through the other instance.
    let through = |i: usize, turn: usize| bases[(i + turn) % 2].as_str();
    let first = send_all_through(&rooms, &owner, "first", |i| through(i, 0)).await;
    assert!(
        refused(&first).is_empty(),
        "{:?}",
        &refused(&first)[..5.min(refused(&first).len())]
    );
    let second = send_all_through(&rooms, &owner, "second", |i| through(i, 1)).await;
    assert!(
        refused(&second).is_empty(),
        "{:?}",
        &refused(&second)[..5.min(refused(&second).len())]
    );
    for base in bases {
        let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(
            ready.status().as_u16(),
            200,
            "{}",
            ready.text().await.unwrap()
        );
    }
    let http = mess_chat::client::http_builder().build().unwrap();
    let histories: Vec<(RoomName, Vec<String>)> = futures_util::stream::iter(rooms.iter().cloned())
        .enumerate()
        .map(|(i, r)| {
            let url = format!("{}/messages/?room_name={r}", bases[i % 2]);
            let http = http.clone();
            async move { (r, http.get(url).send().await.unwrap().json().await.unwrap()) }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (r, texts) in histories {
        assert_eq!(texts, ["first", "second"], "{r}");
    }
    // Single active consumer spread the rooms: each was numbered by one instance, the one it
    // was made through as a rule (its consumer subscribed first).
    let numbering: Vec<usize> = servers
        .iter()
        .map(|s| s.service().rooms_numbering())
        .collect();
    assert_eq!(numbering.iter().sum::<usize>(), ROOMS, "{numbering:?}");
    assert!(
        numbering.iter().all(|&n| n >= ROOMS / 4),
        "rooms numbered by each instance: {numbering:?}"
    );
}

/// Sends `text` to every room through the instance `base_of` names for its index, `CONCURRENCY`
/// at a time; returns each answer's status with its room.
async fn send_all_through<'a>(
    rooms: &[RoomName],
    from: &Alias,
    text: &str,
    base_of: impl Fn(usize) -> &'a str,
) -> Vec<(RoomName, u16)> {
    let http = mess_chat::client::http_builder().build().unwrap();
    futures_util::stream::iter(rooms.iter().cloned().enumerate())
        .map(|(i, r)| {
            let url = common::load::send_url(base_of(i), &r, from.as_str(), text);
            let http = http.clone();
            async move {
                let status = http.get(url).send().await.unwrap().status().as_u16();
                (r, status)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Sends `text` to every room through `t` (creating those that do not exist).
async fn send_to_all(
    t: &TestServer,
    rooms: &[RoomName],
    from: &Alias,
    text: &str,
) -> Vec<(RoomName, u16)> {
    send_all_through(rooms, from, text, |_| t.client.base()).await
}

fn refused(answers: &[(RoomName, u16)]) -> Vec<&(RoomName, u16)> {
    answers
        .iter()
        .filter(|(_, status)| *status != 200)
        .collect()
}

/// On the real back ends, the store's combined writes so far and the batches they carried.
async fn store_rounds(t: &TestServer, backend: Backend) -> Option<(f64, f64)> {
    if backend != Backend::Real {
        return None;
    }
    Some((
        gauge(t, "mess_chat_store_rounds_total").await,
        gauge(t, "mess_chat_store_round_batches_total").await,
    ))
}

/// A gauge's value in `/metrics`.
async fn gauge(t: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(t.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    mess_chat::metrics::value_in(&text, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Runs the scenario, then removes what it made from the shared servers even if it failed (a
/// failed run would otherwise leave 2,200 queues and exchanges behind).
async fn every_one_of_many_rooms_is_stored_and_ready_soon_after_a_restart(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let outcome = AssertUnwindSafe(scenario(&mut t, backend))
        .catch_unwind()
        .await;
    t.stop().await;
    t.env.cleanup(&[], &[]).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(t: &mut TestServer, backend: Backend) {
    let owner = alias("owner");
    let rooms: Vec<RoomName> = (0..ROOMS).map(|_| room("many")).collect();

    let created = Instant::now();
    let first = send_to_all(t, &rooms, &owner, "first").await;
    let created = created.elapsed();
    assert!(
        refused(&first).is_empty(),
        "{:?}",
        &refused(&first)[..5.min(refused(&first).len())]
    );
    let before = store_rounds(t, backend).await;
    let second = send_to_all(t, &rooms, &owner, "second").await;
    if let (Some((rounds_before, batches_before)), Some((rounds_after, batches_after))) =
        (before, store_rounds(t, backend).await)
    {
        // Each of these sends is a batch of its own room, 32 at a time: the store writes them
        // together, several rooms' batches to a command.
        let (rounds, batches) = (rounds_after - rounds_before, batches_after - batches_before);
        eprintln!("{batches} batches in {rounds} combined writes");
        assert!(
            rounds >= 1.0 && batches >= 2.0 * rounds,
            "{batches} batches in {rounds} combined writes"
        );
    }
    assert!(
        refused(&second).is_empty(),
        "{:?}",
        &refused(&second)[..5.min(refused(&second).len())]
    );
    eprintln!(
        "{backend:?}: {ROOMS} rooms created by a first send in {created:?} ({:.0} rooms/s)",
        ROOMS as f64 / created.as_secs_f64()
    );
    let ready = reqwest::get(t.url("/readyz")).await.unwrap();
    assert_eq!(
        ready.status().as_u16(),
        200,
        "{}",
        ready.text().await.unwrap()
    );
    assert!(gauge(t, "mess_chat_rooms_consuming").await >= ROOMS as f64);
    if backend == Backend::Real {
        // Consumers share channels, 256 to a channel: a channel each would be past the broker's
        // limit, and many small channels cost the client a check of each before every frame.
        let channels = gauge(t, "mess_chat_broker_consumer_channels").await;
        let most = ROOMS.div_ceil(256) + 2;
        assert!(
            channels >= 1.0 && channels <= most as f64,
            "{channels} consumer channels for {ROOMS} rooms (at most {most} wanted)"
        );
    }

    // A restart: the instance serves a room at once and is ready soon.
    let restarted = Instant::now();
    t.restart().await;
    let last = rooms.last().unwrap();
    let third = send_to_all(t, std::slice::from_ref(last), &owner, "third").await;
    assert_eq!(third[0].1, 200, "a send during start-up");
    loop {
        let ready = reqwest::get(t.url("/readyz")).await.unwrap();
        if ready.status().as_u16() == 200 {
            break;
        }
        let body: serde_json::Value = ready.json().await.unwrap();
        assert!(
            restarted.elapsed() < READY_WITHIN,
            "not ready {:?} after a restart with {ROOMS} rooms: {body}",
            restarted.elapsed()
        );
        assert!(
            body["rooms_not_stored_count"].as_u64().unwrap() <= ROOMS as u64,
            "{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{backend:?}: ready {:?} after a restart",
        restarted.elapsed()
    );

    // Every room holds its two messages (the last one three), in order.
    let http = mess_chat::client::http_builder().build().unwrap();
    let histories: Vec<(RoomName, Vec<String>)> = futures_util::stream::iter(rooms.iter().cloned())
        .map(|r| {
            let url = t.url(&format!("/messages/?room_name={r}"));
            let http = http.clone();
            async move {
                let texts = http.get(url).send().await.unwrap().json().await.unwrap();
                (r, texts)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (r, texts) in histories {
        let want: &[&str] = if &r == last {
            &["first", "second", "third"]
        } else {
            &["first", "second"]
        };
        assert_eq!(texts, want, "{r}");
    }
}
