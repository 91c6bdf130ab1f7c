//! Load and the checks after it, shared by the fault and cluster suites: `mess-chat serve` child
//! processes, senders that record every send answered 2xx, and the verdict that each room's
//! stored history holds every acknowledged send exactly once, numbered 1..N without a gap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mess_chat::model::{Alias, ChatMessage, RoomName};
use mess_chat::store::Store;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::{Backend, alias, room};

/// Sends answered 2xx: (room, text).
pub type Acked = Arc<Mutex<Vec<(RoomName, String)>>>;

/// `serve` arguments turning off the quota and the rate limits.
pub const NO_LIMITS: &[&str] = &[
    "--max-rooms-owned",
    "0",
    "--sends-per-second",
    "0",
    "--room-creations-per-second",
    "0",
    "--registrations-per-minute",
    "0",
];

/// A `mess-chat serve` child process (killed when dropped).
pub struct Service {
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

/// Starts the binary on an ephemeral port, dev mode, on the real back ends (database `db`) or
/// embedded (store in `data_dir`), with `extra` arguments.
pub async fn spawn_service(
    backend: Backend,
    db: &str,
    data_dir: &std::path::Path,
    extra: &[&str],
) -> Service {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mess-chat"));
    command
        .args(["serve", "--no-auth", "--listen", "127.0.0.1:0"])
        // Load is the point here: no quota or rate limit (tests/quota_test.rs has those).
        .args(NO_LIMITS)
        .args(extra)
        .env("MESS_CHAT_MONGO_DB", db)
        .env("MESS_CHAT_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    match backend {
        Backend::Real => {
            command
                .env("MESS_CHAT_AMQP_URL", super::amqp_url())
                .env("MESS_CHAT_MONGO_URL", super::mongo_url());
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

/// The seed's send URL for a group room.
pub fn send_url(base: &str, room: &RoomName, from: &str, text: &str) -> String {
    format!("{base}/send/?room_name={room}&from_alias={from}&group_room=true&message={text}")
}

/// Senders in flight: stop them with [`Load::stop`].
pub struct Load {
    pub acked: Acked,
    /// Every alias that sent (each has an inbox queue to delete at the end).
    pub senders: Vec<Alias>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` tasks sending in turn to `rooms`, worker `w` through `bases[w % bases.len()]`
    /// (read before each send, so a test can point it elsewhere), until stopped; records the sends
    /// answered 2xx.
    pub fn start(bases: Arc<Mutex<Vec<String>>>, rooms: Vec<RoomName>, workers: usize) -> Self {
        let acked: Acked = Arc::default();
        let stop = CancellationToken::new();
        let http = mess_chat::client::http_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let senders: Vec<Alias> = (0..workers).map(|w| alias(&format!("w{w}"))).collect();
        let tasks = senders
            .iter()
            .enumerate()
            .map(|(w, from)| {
                let (acked, http, rooms, stop, bases, from) = (
                    acked.clone(),
                    http.clone(),
                    rooms.clone(),
                    stop.clone(),
                    bases.clone(),
                    from.clone(),
                );
                tokio::spawn(async move {
                    let mut i = 0usize;
                    while !stop.is_cancelled() {
                        i += 1;
                        let room = &rooms[i % rooms.len()];
                        let text = format!("{from}-{i}");
                        let base = {
                            let bases = bases.lock().unwrap();
                            bases[w % bases.len()].clone()
                        };
                        let url = send_url(&base, room, from.as_str(), &text);
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
        Self {
            acked,
            senders,
            stop,
            tasks,
        }
    }

    /// Stops the senders and waits for them.
    pub async fn stop(self) -> (Acked, Vec<Alias>) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        (self.acked, self.senders)
    }
}

/// Creates group rooms by a first send each, all owned by `owner`.
pub async fn create_rooms_owned_by(base: &str, n: usize, owner: &Alias) -> Vec<RoomName> {
    let mut rooms = Vec::new();
    for _ in 0..n {
        let r = room("load");
        let response = reqwest::get(send_url(base, &r, owner.as_str(), "opening"))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        rooms.push(r);
    }
    rooms
}

/// Checks a room's stored history: numbers 1..N, texts unique, and every acked text present.
pub fn check_history(room: &RoomName, stored: &[ChatMessage], acked: &[String]) {
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

/// The acknowledged texts, by room.
pub fn by_room(acked: &Acked) -> BTreeMap<RoomName, Vec<String>> {
    let mut rooms: BTreeMap<RoomName, Vec<String>> = BTreeMap::new();
    for (room, text) in acked.lock().unwrap().iter() {
        rooms.entry(room.clone()).or_default().push(text.clone());
    }
    rooms
}

/// Waits (bounded) until the store holds every acked message, then checks every room.
pub async fn verify_store(store: &dyn Store, acked: &Acked) {
    let rooms = by_room(acked);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (room, texts) in &rooms {
        loop {
            let stored = store.latest_messages(room, 100_000).await.unwrap();
            let have: HashSet<&str> = stored.iter().map(|m| m.message.as_str()).collect();
            if texts.iter().all(|t| have.contains(t.as_str())) || Instant::now() > deadline {
                check_history(room, &stored, texts);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks through the API at `base` that each room's history lists the stored texts in order
/// (waiting, bounded, for the instance to catch up).
pub async fn verify_api(base: &str, store: &dyn Store, acked: &Acked) {
    for (room, _) in by_room(acked) {
        let stored = store.latest_messages(&room, 1000).await.unwrap();
        let texts: Vec<String> = stored.into_iter().map(|m| m.message).collect();
        let url = format!("{base}/messages/?room_name={room}&limit=1000");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listed: Vec<String> = reqwest::get(&url).await.unwrap().json().await.unwrap();
            if listed == texts {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "room {room}: API at {base} and store disagree"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
