//! The fan-out section (embedded back ends): one busy room followed live by M WebSockets, for M
//! = 10, 100 and 1,000. The service runs as a `mess-chat serve` child process of its own, so that
//! its memory is measured without the bench's clients; the clients (tokio-tungstenite) run here.
//! `MESS_CHAT_FANOUT_BINARY` names another build to serve instead (to compare versions).
//!
//! For each M: the service's RSS before the sockets, with M idle sockets (the cost of one idle
//! socket), at its peak while the room is busy (about [`DELIVERIES`] deliveries a second, as many
//! messages as that takes, at most [`MAX_RATE`]) and after; the deliveries per second the sockets
//! read, and the send→delivered latency (from each message's `sent_time` to its arrival at a
//! socket). One socket is open before "before" is read, so that what the room allocates for its
//! first follower is not counted per socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::plan::Plan;
use super::progress::Progress;
use super::report::{BackendReport, Row, Target, Unit};
use super::rss;
use super::samples::{Errors, Samples};
use super::{BenchError, child};
use crate::client::Client;
use crate::model::ChatMessage;

/// Socket counts measured.
pub const SOCKETS: [usize; 3] = [10, 100, 1000];
/// Deliveries a second the busy room aims at (every socket gets every message): the room takes
/// `DELIVERIES / M` messages a second, at most [`MAX_RATE`].
pub const DELIVERIES: f64 = 80_000.0;
/// Most messages a second the busy room takes.
pub const MAX_RATE: f64 = 800.0;
/// Sockets opened at once.
const OPENING: usize = 50;

/// What one socket count measured.
struct FanOut {
    sockets: usize,
    /// Messages a second the room took.
    rate: f64,
    /// Service RSS before the sockets, with them idle, at its peak while busy, and after the
    /// sockets closed, in KiB.
    before_kib: u64,
    idle_kib: u64,
    busy_peak_kib: u64,
    after_kib: u64,
    /// Deliveries read by all sockets per second of the busy run.
    deliveries_per_s: f64,
    latency: Samples,
    errors: Errors,
}

/// The service under test: a child process and a client of it.
struct Service {
    child: Child,
    client: Client,
    base: String,
    _data: tempfile::TempDir,
}

impl Service {
    async fn start() -> Result<Self, BenchError> {
        let data = tempfile::Builder::new()
            .prefix("mess-chat-fanout-")
            .tempdir()?;
        // Another build may be measured the same way (to compare versions).
        let binary = match std::env::var_os("MESS_CHAT_FANOUT_BINARY") {
            Some(path) => path.into(),
            None => std::env::current_exe()?,
        };
        let mut command = Command::new(binary);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--max-connections",
                "8192",
                // One client registers every member and floods one room: not what the
                // per-alias and per-address limits are for.
                "--registrations-per-minute",
                "0",
                "--sends-per-second",
                "0",
            ])
            .env("MESS_CHAT_DATA_DIR", data.path())
            .env_remove("MESS_CHAT_AMQP_URL")
            .env_remove("MESS_CHAT_MONGO_URL");
        let (child, base) = child::serve(command, "fan-out", Duration::from_secs(30)).await?;
        Ok(Self {
            child,
            client: Client::new(base.clone()),
            base,
            _data: data,
        })
    }

    fn rss_kib(&self) -> u64 {
        child::rss_kib(&self.child)
    }
}

/// Runs the section.
pub async fn run(plan: &Plan) -> Result<BackendReport, BenchError> {
    let progress = Progress::new("fan-out");
    let mut service = Service::start().await?;
    let mut measured = Vec::new();
    let mut problems = Vec::new();
    for (k, &sockets) in SOCKETS.iter().enumerate() {
        let run = tokio::select! {
            run = measure(&service, sockets, k, plan, &progress) => run?,
            _ = tokio::signal::ctrl_c() => return Err(BenchError::Interrupted),
        };
        if run.errors.total() > 0 {
            problems.push(format!("{sockets} sockets: {}", run.errors.summary()));
        }
        measured.push(run);
    }
    let _ = service.child.kill().await;
    Ok(BackendReport {
        backend: "fan-out".into(),
        broker: "in-process (MemoryBroker)".into(),
        store: "redb file in a temporary directory (removed after)".into(),
        load: format!(
            "a `mess-chat serve` child process (its RSS alone is measured); one group room of M \
             members, each following it on a socket of its own, taking about {DELIVERIES} \
             deliveries/s (at most {MAX_RATE} messages/s of 64 bytes \
             from 4 senders); the sockets (tokio-tungstenite) run in the bench's process"
        ),
        rows: rows(measured),
        problems,
    })
}

async fn measure(
    service: &Service,
    sockets: usize,
    k: usize,
    plan: &Plan,
    progress: &Progress,
) -> Result<FanOut, BenchError> {
    let mut errors = Errors::default();
    let alias = format!(
        "fanout{k}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let token = service.client.register(&alias).await.map_err(setup)?.token;
    let owner = service.client.clone().with_token(Some(token.clone()));
    let room = format!("{alias}-room");
    owner.create_room(&room, None).await.map_err(setup)?;
    // Every socket is a member of its own, as in a real group room.
    let phase = progress.counted(format!("register {sockets} members"), sockets as u64);
    let mut joining = futures_util::stream::iter(0..sockets)
        .map(|i| {
            let (client, room, alias) = (service.client.clone(), room.clone(), alias.clone());
            async move {
                let member = format!("{alias}-m{i}");
                let token = client.register(&member).await?.token;
                let client = client.with_token(Some(token.clone()));
                client.add_member(&room, &member).await?;
                Ok::<_, crate::client::ClientError>(token)
            }
        })
        .buffer_unordered(OPENING);
    let mut tokens = Vec::with_capacity(sockets);
    while let Some(joined) = joining.next().await {
        tokens.push(joined.map_err(setup)?);
        phase.inc(1);
    }
    drop(joining);
    phase.finish("done");
    let live_url = |token: &str| {
        format!(
            "{}/api/v1/rooms/{room}/live?token={token}",
            service.base.replacen("http", "ws", 1)
        )
    };
    let request = live_url(&token)
        .into_client_request()
        .map_err(|e| setup_text(e.to_string()))?;
    let (first, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| setup_text(e.to_string()))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kib = service.rss_kib();

    let phase = progress.counted(format!("open {sockets} live sockets"), sockets as u64);
    let mut opened = Vec::with_capacity(sockets);
    let mut opening = futures_util::stream::iter(tokens.iter().map(|t| live_url(t)))
        .map(|url| async move {
            let request = url.into_client_request().map_err(|e| e.to_string())?;
            tokio_tungstenite::connect_async(request)
                .await
                .map(|(socket, _)| socket)
                .map_err(|e| e.to_string())
        })
        .buffer_unordered(OPENING);
    while let Some(socket) = opening.next().await {
        match socket {
            Ok(socket) => opened.push(socket),
            Err(e) => errors.record(format!("socket did not open: {e}")),
        }
        phase.inc(1);
    }
    phase.finish(&format!("{} open", opened.len()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_kib = service.rss_kib();

    // Every socket reads until told to stop, recording each message's latency.
    let reading = Arc::new(AtomicBool::new(true));
    let mut readers = JoinSet::new();
    for mut socket in opened {
        let reading = reading.clone();
        readers.spawn(async move {
            let mut latency = Samples::default();
            let mut count = 0u64;
            while reading.load(Ordering::Relaxed) {
                let frame = tokio::time::timeout(Duration::from_millis(200), socket.next()).await;
                let Ok(Some(Ok(Message::Text(text)))) = frame else {
                    if matches!(frame, Ok(None) | Ok(Some(Err(_)))) {
                        break;
                    }
                    continue;
                };
                if let Ok(message) = serde_json::from_str::<ChatMessage>(text.as_str()) {
                    let sent = message.mess_props.sent_time;
                    let waited = (chrono::Utc::now() - sent).to_std().unwrap_or_default();
                    latency.push(waited);
                    count += 1;
                }
            }
            let _ = socket.close(None).await;
            (count, latency)
        });
    }
    let duration = plan.open;
    let rate = (DELIVERIES / sockets as f64).min(MAX_RATE);
    let phase = progress.timed(
        format!("{rate}/s to a room followed by {sockets} sockets"),
        duration,
    );
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(idle_kib));
    let sampling = {
        let (peak, pid, reading) = (peak.clone(), service.child.id(), reading.clone());
        tokio::spawn(async move {
            while reading.load(Ordering::Relaxed) {
                if let Some(now) = pid.and_then(rss::read_pid) {
                    peak.fetch_max(now.now_kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let senders = 4;
    let mut sending = JoinSet::new();
    for w in 0..senders {
        let (owner, room) = (owner.clone(), room.clone());
        let per_sender = rate / senders as f64;
        sending.spawn(async move {
            let mut failed = Errors::default();
            let mut i = 0u64;
            while started.elapsed() < duration {
                let due = started + Duration::from_secs_f64(i as f64 / per_sender);
                tokio::time::sleep_until(due.into()).await;
                let text = format!("fanout-{w}-{i:058}");
                if let Err(e) = owner.post_message(&room, &text).await {
                    failed.record(format!("send failed: {e}"));
                }
                i += 1;
            }
            failed
        });
    }
    while let Some(done) = sending.join_next().await {
        if let Ok(failed) = done {
            errors.merge(failed);
        }
    }
    // Let the sockets drain what is in flight, then stop them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = started.elapsed();
    reading.store(false, Ordering::Relaxed);
    let (mut delivered, mut latency) = (0u64, Samples::default());
    while let Some(done) = readers.join_next().await {
        if let Ok((count, samples)) = done {
            delivered += count;
            latency.merge(samples);
        }
    }
    let _ = sampling.await;
    phase.finish(&format!("{delivered} deliveries"));
    drop(first);
    owner.delete_room(&room).await.map_err(setup)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(FanOut {
        sockets,
        rate,
        before_kib,
        idle_kib,
        busy_peak_kib: peak.load(Ordering::Relaxed),
        after_kib: service.rss_kib(),
        deliveries_per_s: delivered as f64 / busy.as_secs_f64(),
        latency,
        errors,
    })
}

fn setup(e: crate::client::ClientError) -> BenchError {
    setup_text(e.to_string())
}

fn setup_text(e: String) -> BenchError {
    BenchError::Setup(format!("fan-out set-up: {e}"))
}

fn rows(measured: Vec<FanOut>) -> Vec<Row> {
    let per_socket = |m: &FanOut| m.idle_kib.saturating_sub(m.before_kib) as f64 / m.sockets as f64;
    let smallest = measured.first().map(per_socket);
    let mut rows = Vec::new();
    for mut m in measured {
        let n = m.sockets;
        let mut idle = Row::new(
            format!("RSS per idle socket, {n} sockets"),
            per_socket(&m),
            Unit::Kib,
        )
        .target(Target::below(32.0));
        if n != SOCKETS[0]
            && let Some(base) = smallest
        {
            idle = idle.against(format!("{} sockets", SOCKETS[0]), base);
        }
        rows.push(idle);
        let mut busy = Row::new(
            format!("service RSS, {n} sockets, busy room"),
            m.busy_peak_kib as f64 / 1024.0,
            Unit::Mib,
        );
        if n == 100 {
            busy = busy.target(Target::below(100.0));
        }
        rows.push(busy);
        rows.push(Row::new(
            format!("service RSS, {n} sockets closed after"),
            m.after_kib as f64 / 1024.0,
            Unit::Mib,
        ));
        rows.push(Row::new(
            format!("deliveries, {n} sockets, {} msg/s", m.rate),
            m.deliveries_per_s,
            Unit::PerSecond,
        ));
        rows.push(Row::new(
            format!("send→delivered p50, {n} sockets"),
            m.latency.percentile_ms(50.0),
            Unit::Millis,
        ));
        rows.push(Row::new(
            format!("send→delivered p99, {n} sockets"),
            m.latency.percentile_ms(99.0),
            Unit::Millis,
        ));
    }
    rows
}
