//! The rooms-scaling section, on one back end: the same load at 10, 1,000 and 10,000 rooms. The
//! service runs as a `mess-chat serve` child process of its own (so that its memory is measured
//! alone), without the per-alias limits (one client creates every room).
//!
//! The rooms grow in steps (10, then 990 more, then 9,000 more), each created by a first send, as
//! a new user would; at each step: room creations per second, acked sends per second at
//! concurrency 32 spread over every room, send→stored p50 at 100 sends/s spread the same way,
//! and the service's RSS. At the largest count the closed-loop rounds take turns with rounds
//! over the smallest count's rooms, the baseline the largest is judged against. Last, the
//! service is restarted on the same back ends and timed until `/readyz` answers 200 (with every
//! room's consumer subscribed). Afterwards every queue, exchange and the database the run made
//! are removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::process::{Child, Command};

use super::cpu::Cpu;
use super::plan::{Backend, Plan};
use super::progress::Progress;
use super::report::{BackendReport, Row, Target, Unit};
use super::samples::{Errors, Samples};
use super::{BenchError, child};
use crate::broker::Broker;
use crate::broker::rmq::RabbitBroker;
use crate::model::{Alias, RoomName};
use crate::store::mongo::MongoStore;

/// Room counts measured by the standard run.
pub const ROOMS: [usize; 3] = [10, 1_000, 10_000];
/// Room counts measured by `--quick`.
pub const QUICK_ROOMS: [usize; 3] = [10, 100, 1_000];
/// Sends (and creations) in flight at once.
const CONCURRENCY: usize = 32;
/// Closed-loop rounds at each room count; the median is reported.
const ROUNDS: usize = 5;
/// Offered rate of the latency run, sends per second.
const RATE: f64 = 100.0;
/// Rooms each owner creates (a deployment of many rooms has many users; one alias owning them
/// all would also grow that alias's own lists, which the default quota of 1,000 forbids).
const ROOMS_PER_OWNER: usize = 100;
/// Room creations wanted per raw single-document insert of the same store, measured in the same
/// run: 200 creations/s on a MongoDB-protocol server doing 2,400 single inserts/s (this
/// project's reference machine). Set as a ratio because the machines are shared: the same build
/// measured 263 creations/s on a day the server did ~2,400 inserts/s and 103/s on one it did
/// ~1,000/s.
const CREATIONS_PER_RAW_INSERT: f64 = 200.0 / 2_400.0;

/// The processes whose CPU time each closed-loop run reads, as [`PROCESSES`] names them.
type Meters = [Option<Cpu>; 3];
/// What [`Meters`] reads: the service child, and the real back ends' own processes (on the
/// embedded back ends, the service is all three).
const PROCESSES: [&str; 3] = ["service", "broker", "store"];

/// A room and its owner, who sends to it.
type Room = (RoomName, Alias);

/// What one room count measured.
struct Step {
    rooms: usize,
    /// Creations per second of the rooms added at this step.
    created_per_s: f64,
    acked_per_s: f64,
    /// CPU microseconds each of [`PROCESSES`] used per acked send of the closed-loop run.
    cpu_per_send: [Option<f64>; 3],
    /// The closed loop's rounds: acked sends per second, and CPU per send, each in order.
    rounds: (Vec<f64>, Vec<[Option<f64>; 3]>),
    /// CPU microseconds each of [`PROCESSES`] used per room created at this step.
    cpu_per_creation: [Option<f64>; 3],
    stored: Samples,
    rss_kib: u64,
    /// What the allocator holds, beside the RSS: in use, and free but kept (MiB; NaN where
    /// the service cannot say).
    heap_mib: (f64, f64),
    /// At the largest count: the smallest count's rooms, busy in rounds taking turns with this
    /// count's (the baseline the largest count is judged against).
    alongside: Option<Closed>,
    errors: Errors,
}

/// The service under test: a child process on the section's back ends.
struct Service {
    child: Child,
    base: String,
}

/// Where the section's service keeps its data.
enum Data {
    Embedded(tempfile::TempDir),
    Real {
        amqp_url: String,
        mongo_url: String,
        database: String,
    },
}

impl Service {
    async fn start(data: &Data) -> Result<Self, BenchError> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["serve", "--no-auth", "--listen", "127.0.0.1:0"])
            .args(["--max-rooms-owned", "0", "--sends-per-second", "0"])
            .args(["--room-creations-per-second", "0"])
            .env_remove("MESS_CHAT_AMQP_URL")
            .env_remove("MESS_CHAT_MONGO_URL");
        match data {
            Data::Embedded(dir) => {
                command.env("MESS_CHAT_DATA_DIR", dir.path());
            }
            Data::Real {
                amqp_url,
                mongo_url,
                database,
            } => {
                command.args([
                    "--amqp-url",
                    amqp_url,
                    "--mongo-url",
                    mongo_url,
                    "--mongo-db",
                    database,
                ]);
            }
        }
        let (child, base) = child::serve(command, "scaling", Duration::from_secs(60)).await?;
        Ok(Self { child, base })
    }

    /// The processes to read CPU time from: this service, and the back ends of `data`.
    fn meters(&self, data: &Data) -> Meters {
        let service = self.child.id().and_then(Cpu::of);
        match data {
            Data::Embedded(_) => [service, None, None],
            Data::Real {
                amqp_url,
                mongo_url,
                ..
            } => [service, Cpu::broker(amqp_url), Cpu::store(mongo_url)],
        }
    }

    fn rss_kib(&self) -> u64 {
        child::rss_kib(&self.child)
    }

    /// Stops the service as an operator would (SIGTERM), waiting for it to exit.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Runs the section on `backend`.
pub async fn run(backend: Backend, plan: &Plan, quick: bool) -> Result<BackendReport, BenchError> {
    let label = format!("{} rooms", backend.name());
    let progress = Progress::new(label.clone());
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let data = match backend {
        Backend::Embedded => Data::Embedded(
            tempfile::Builder::new()
                .prefix("mess-chat-scaling-")
                .tempdir()?,
        ),
        Backend::Real => {
            let (amqp_url, mongo_url) = super::ends::real_urls()?;
            Data::Real {
                amqp_url,
                mongo_url,
                database: format!("bench_rooms_{run_id}"),
            }
        }
    };
    let counts = if quick { QUICK_ROOMS } else { ROOMS };
    let all: Vec<(RoomName, Alias)> = (0..counts[2])
        .map(|i| {
            let room = RoomName::new(format!("sc-{run_id}-{i}"))?;
            let owner = Alias::new(format!("sc-{run_id}-o{}", i / ROOMS_PER_OWNER))?;
            Ok((room, owner))
        })
        .collect::<Result<_, crate::model::NameError>>()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let measured = async {
        // The real store's raw single-insert rate, the creation rate's baseline (in a database
        // of its own: the service refuses to start on a database holding other collections).
        let raw_insert = match &data {
            Data::Real {
                mongo_url,
                database,
                ..
            } => {
                let store = MongoStore::connect(mongo_url, &format!("{database}_raw")).await?;
                let raw = async {
                    let single = super::baseline::real_single_insert(
                        &store,
                        &run_id,
                        plan.baseline,
                        &progress,
                    )
                    .await?;
                    // Its own cost of many rooms: single inserts spread over as many collections
                    // as the smallest and the largest room count.
                    let mut spread = [0.0; 2];
                    for (rate, rooms) in spread.iter_mut().zip([counts[0], counts[2]]) {
                        *rate = super::baseline::real_spread_insert(
                            &store,
                            &run_id,
                            rooms,
                            plan.baseline,
                            &progress,
                        )
                        .await?;
                    }
                    Ok::<_, BenchError>((single, spread))
                }
                .await;
                store.drop_database().await?;
                Some(raw?)
            }
            Data::Embedded(_) => None,
        };
        // RabbitMQ's own confirmed publish rate over as many queues as the smallest and the
        // largest room count: what the broker alone pays for many rooms.
        let raw_spread = match &data {
            Data::Real { amqp_url, .. } => {
                let mut rates = [0.0; 2];
                for (rate, queues) in rates.iter_mut().zip([counts[0], counts[2]]) {
                    *rate = super::baseline::real_publish(
                        amqp_url,
                        &run_id,
                        queues,
                        plan.baseline,
                        &progress,
                    )
                    .await?;
                }
                Some(rates)
            }
            Data::Embedded(_) => None,
        };
        let service = Service::start(&data).await?;
        let http = crate::client::http_builder()
            .pool_max_idle_per_host(CONCURRENCY)
            .build()?;
        let meters = service.meters(&data);
        let mut steps = Vec::new();
        let mut made = 0;
        for rooms in counts {
            // At the largest count the smallest count's rooms are busy again, in rounds taking
            // turns with the largest's: the two figures then see the same machine (figures on
            // these shared machines drift by a third within minutes) and the same grown
            // deployment, and differ only by how far the sends spread.
            let alongside = (rooms == counts[2]).then(|| &all[..counts[0]]);
            let step = measure(
                &service,
                &meters,
                &http,
                (&all[..rooms], alongside),
                made,
                plan,
                &progress,
            )
            .await;
            made = rooms;
            steps.push(step);
        }
        let phase = progress.counted("restart and wait for /readyz".to_string(), 1);
        service.stop().await;
        let restarted = Instant::now();
        let service = Service::start(&data).await?;
        let ready = ready_within(&http, &service.base, Duration::from_secs(60)).await;
        let ready = ready.then(|| restarted.elapsed());
        phase.finish(&ready.map_or("not ready in 60 s".into(), |d| format!("{d:.1?}")));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_kib = service.rss_kib();
        service.stop().await;
        let pair = match &data {
            Data::Real { .. } => Some(two_instances(&data, &http, &all, &progress).await?),
            Data::Embedded(_) => None,
        };
        Ok::<_, BenchError>((steps, ready, idle_kib, pair, raw_insert, raw_spread))
    }
    .await;
    // Whatever happened, the run's queues, exchanges and database go.
    let mut cleanup_problem = None;
    if let Data::Real {
        amqp_url,
        mongo_url,
        database,
    } = &data
    {
        let phase = progress.counted("clean up".to_string(), all.len() as u64);
        let broker = Arc::new(RabbitBroker::new(amqp_url.clone()));
        // Each room once (retried one by one if the broker refused it among the others), then
        // each owner's inbox once.
        let mut failed: Vec<RoomName> = futures_util::stream::iter(all.iter().cloned())
            .map(|(room, _)| {
                let broker = broker.clone();
                async move { broker.delete_room(&room, true).await.err().map(|_| room) }
            })
            .buffer_unordered(16)
            .inspect(|_| phase.inc(1))
            .filter_map(std::future::ready)
            .collect()
            .await;
        let mut left = 0;
        for room in failed.drain(..) {
            if broker.delete_room(&room, true).await.is_err() {
                left += 1;
            }
        }
        let mut owners: Vec<&Alias> = all.iter().map(|(_, owner)| owner).collect();
        owners.dedup();
        for owner in owners {
            if broker.delete_inbox(owner).await.is_err() {
                left += 1;
            }
        }
        if left > 0 {
            cleanup_problem = Some(format!("{left} queues or exchanges could not be deleted"));
        }
        if let Ok(store) = MongoStore::connect(mongo_url, database).await {
            let _ = store.drop_database().await;
        }
        phase.finish("done");
    }
    let (steps, ready, idle_kib, pair, raw_insert, raw_spread) = measured?;
    let mut problems: Vec<String> = cleanup_problem.into_iter().collect();
    for step in &steps {
        if step.errors.total() > 0 {
            problems.push(format!("{} rooms: {}", step.rooms, step.errors.summary()));
        }
    }
    if let Some(pair) = pair.as_ref().filter(|p| p.errors.total() > 0) {
        problems.push(format!("two instances: {}", pair.errors.summary()));
    }
    Ok(BackendReport {
        backend: label,
        broker: match backend {
            Backend::Embedded => "in-process (MemoryBroker)".into(),
            Backend::Real => "RabbitMQ (MESS_CHAT_AMQP_URL)".into(),
        },
        store: match backend {
            Backend::Embedded => "redb file in a temporary directory (removed after)".into(),
            Backend::Real => "MongoDB protocol (MESS_CHAT_MONGO_URL), a database of the run's \
                              own (dropped after)"
                .into(),
        },
        load: format!(
            "a `mess-chat serve` child process (its RSS alone is measured); group rooms created \
             by a first send, {CONCURRENCY} at a time, {ROOMS_PER_OWNER} per owner; sends spread \
             over every room (at the largest count in rounds taking turns with rounds over the \
             smallest count's rooms); then a restart timed until /readyz answers 200{}",
            match backend {
                Backend::Real =>
                    "; then two instances started together on the same back ends, \
                                  one send to every room through them in turn; before the \
                                  service starts, the store's raw single insert (alone, then \
                                  spread over as many collections as the smallest and largest \
                                  room count) and RabbitMQ's raw confirmed publish (spread over \
                                  as many queues)",
                Backend::Embedded => "",
            }
        ),
        rows: rows(
            &steps,
            ready,
            idle_kib,
            pair.as_ref(),
            Raw {
                insert: raw_insert.map(|(single, _)| single),
                insert_spread: raw_insert.map(|(_, spread)| spread),
                publish_spread: raw_spread,
            },
            counts,
        ),
        problems,
    })
}

/// Grows the rooms to `rooms.len()` (those from `made` on are new) and measures the load; with
/// `alongside`, the closed loop over `rooms` takes turns with one over those rooms.
async fn measure(
    service: &Service,
    meters: &Meters,
    http: &reqwest::Client,
    (rooms, alongside): (&[Room], Option<&[Room]>),
    made: usize,
    plan: &Plan,
    progress: &Progress,
) -> Step {
    let mut errors = Errors::default();
    let n = rooms.len();
    let sender = Sender {
        http,
        base: &service.base,
    };
    let send = |room, text| sender.send(room, text);
    let phase = progress.counted(format!("create rooms {}..{n}", made + 1), (n - made) as u64);
    let cpu_before = cpu_now(meters);
    let started = Instant::now();
    let mut creating = futures_util::stream::iter(&rooms[made..])
        .map(|room| send(room, "opening".into()))
        .buffer_unordered(CONCURRENCY);
    while let Some(answer) = creating.next().await {
        if let Err(e) = answer {
            errors.record(format!("creation: {e}"));
        }
        phase.inc(1);
    }
    drop(creating);
    let created_per_s = (n - made) as f64 / started.elapsed().as_secs_f64();
    let cpu_per_creation = cpu_per(meters, cpu_before, (n - made) as u64);
    phase.finish(&format!("{created_per_s:.0} rooms/s"));

    let mut sets = vec![rooms];
    let mut name = format!("acked sends over {n} rooms");
    if let Some(few) = alongside {
        sets.push(few);
        name.push_str(&format!(", rounds taking turns with {} rooms", few.len()));
    }
    let phase = progress.timed(name, plan.closed * (ROUNDS * sets.len()) as u32);
    let mut closed = closed_rounds(&sender, &sets, meters, plan.closed, &mut errors).await;
    let summaries: Vec<String> = closed.iter().map(Closed::summary).collect();
    phase.finish(&summaries.join("; "));
    let alongside = (closed.len() > 1).then(|| closed.remove(1));
    let Closed {
        acked_per_s,
        cpu_per_send,
        rounds,
        cpu_rounds,
    } = closed.remove(0);

    // Open loop at RATE, from each send's scheduled time.
    let phase = progress.timed(format!("{RATE}/s over {n} rooms"), plan.open);
    let count = (RATE * plan.open.as_secs_f64()) as usize;
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..count).map(|i| {
        let due = started + Duration::from_secs_f64(i as f64 / RATE);
        let send = &send;
        async move {
            tokio::time::sleep_until(due.into()).await;
            send(&rooms[(i * 7919) % n], format!("open-{i}"))
                .await
                .map(|_| due.elapsed())
        }
    }))
    .await;
    let mut stored = Samples::default();
    for answer in answers {
        match answer {
            Ok(waited) => stored.push(waited),
            Err(e) => errors.record(e),
        }
    }
    phase.finish(&format!("p50 {:.1} ms", stored.percentile_ms(50.0)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    Step {
        rooms: n,
        created_per_s,
        acked_per_s,
        cpu_per_send,
        rounds: (rounds, cpu_rounds),
        cpu_per_creation,
        stored,
        rss_kib: service.rss_kib(),
        heap_mib: {
            let names = [crate::metrics::HEAP_IN_USE, crate::metrics::HEAP_FREE];
            let [in_use, free] = gauges(http, &service.base, names).await;
            (in_use / MIB, free / MIB)
        },
        alongside,
        errors,
    }
}

/// Sends through the seed's `/send/`, as each room's owner.
struct Sender<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
}

impl Sender<'_> {
    /// Sends `text` to `room` as `owner`; how long the answer took, if it was 200 (stored).
    async fn send(
        &self,
        (room, owner): &(RoomName, Alias),
        text: String,
    ) -> Result<Duration, String> {
        let url = format!(
            "{}/send/?room_name={room}&from_alias={owner}&message={text}",
            self.base
        );
        let started = Instant::now();
        match self.http.get(url).send().await {
            Ok(r) if r.status() == 200 => Ok(started.elapsed()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Err(format!("request failed: {e}")),
        }
    }
}

/// What [`ROUNDS`] closed-loop rounds measured: the median round's figures.
struct Closed {
    acked_per_s: f64,
    /// CPU microseconds each of [`PROCESSES`] used per acked send.
    cpu_per_send: [Option<f64>; 3],
    /// Each round's acked sends per second, in order.
    rounds: Vec<f64>,
    /// Each round's CPU per acked send, in order.
    cpu_rounds: Vec<[Option<f64>; 3]>,
}

impl Closed {
    /// For the progress line: the median and every round.
    fn summary(&self) -> String {
        let each: Vec<String> = self.rounds.iter().map(|r| format!("{r:.0}")).collect();
        format!("{:.0}/s (median of {})", self.acked_per_s, each.join(", "))
    }
}

/// Runs the closed loop [`ROUNDS`] times over each set of rooms, the sets taking turns round by
/// round, each round `length` long, and keeps each set's median round (acked rate and CPU per
/// send, each its own median), so that one round disturbed by the shared machine does not decide
/// a step.
async fn closed_rounds(
    sender: &Sender<'_>,
    sets: &[&[(RoomName, Alias)]],
    meters: &Meters,
    length: Duration,
    errors: &mut Errors,
) -> Vec<Closed> {
    let mut rounds = vec![Vec::with_capacity(ROUNDS); sets.len()];
    for _ in 0..ROUNDS {
        for (rooms, measured) in sets.iter().zip(&mut rounds) {
            measured.push(closed_round(sender, rooms, meters, length, errors).await);
        }
    }
    rounds
        .iter()
        .map(|rounds| Closed {
            acked_per_s: median(rounds.iter().map(|r| Some(r.0))).unwrap_or(0.0),
            cpu_per_send: std::array::from_fn(|p| median(rounds.iter().map(|r| r.1[p]))),
            rounds: rounds.iter().map(|r| r.0).collect(),
            cpu_rounds: rounds.iter().map(|r| r.1).collect(),
        })
        .collect()
}

/// The median of each round's figure over the figure of the baseline's round beside it (rounds
/// taken in turn); `None` if no pair has both.
fn paired(rounds: &[Option<f64>], base: &[Option<f64>]) -> Option<f64> {
    median(rounds.iter().zip(base).map(|(r, b)| match (r, b) {
        (Some(r), Some(b)) if *b > 0.0 => Some(r / b),
        _ => None,
    }))
}

/// One closed-loop round of `length`: [`CONCURRENCY`] workers, each sending to the next room in
/// turn. Returns the sends acked per second and the CPU microseconds each of [`PROCESSES`] used
/// per acked send.
async fn closed_round(
    sender: &Sender<'_>,
    rooms: &[(RoomName, Alias)],
    meters: &Meters,
    length: Duration,
    errors: &mut Errors,
) -> (f64, [Option<f64>; 3]) {
    let n = rooms.len();
    let cpu_before = cpu_now(meters);
    let started = Instant::now();
    let workers = (0..CONCURRENCY).map(|w| async move {
        let (mut acked, mut failed) = (0u64, Errors::default());
        let mut i = w;
        while started.elapsed() < length {
            match sender.send(&rooms[i % n], format!("closed-{i}")).await {
                Ok(_) => acked += 1,
                Err(e) => failed.record(e),
            }
            i += CONCURRENCY;
        }
        (acked, failed)
    });
    let mut acked = 0;
    for (count, failed) in futures_util::future::join_all(workers).await {
        acked += count;
        errors.merge(failed);
    }
    let acked_per_s = acked as f64 / started.elapsed().as_secs_f64();
    (acked_per_s, cpu_per(meters, cpu_before, acked))
}

/// The CPU time (seconds) each of [`PROCESSES`] has used so far, where it can be read.
fn cpu_now(meters: &Meters) -> [Option<f64>; 3] {
    meters.map(|m| m.and_then(|cpu| cpu.seconds()))
}

/// CPU microseconds each of [`PROCESSES`] used since `before`, per one of `count` things done.
fn cpu_per(meters: &Meters, before: [Option<f64>; 3], count: u64) -> [Option<f64>; 3] {
    let now = cpu_now(meters);
    std::array::from_fn(|p| match (now[p], before[p]) {
        (Some(after), Some(before)) if count > 0 => Some((after - before) / count as f64 * 1e6),
        _ => None,
    })
}

/// The median of the values present (the lower middle one of an even count); `None` if none is.
fn median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut present: Vec<f64> = values.flatten().collect();
    present.sort_by(f64::total_cmp);
    present.get(present.len().saturating_sub(1) / 2).copied()
}

/// What two instances started together on the same back ends did with every room.
struct Pair {
    /// From starting both until both answered ready.
    ready: Option<Duration>,
    /// One send to every room, through the two in turn.
    sent_per_s: f64,
    /// Rooms each instance numbered (`mess_chat_rooms_numbering`).
    numbering: [f64; 2],
    errors: Errors,
}

/// Starts two instances at once on the rooms made, sends once to every room through them in turn
/// and reads how many rooms each numbered: single active consumer makes one instance active for
/// each room, and each instance starts subscribing at its own place in the room list.
async fn two_instances(
    data: &Data,
    http: &reqwest::Client,
    rooms: &[(RoomName, Alias)],
    progress: &Progress,
) -> Result<Pair, BenchError> {
    let n = rooms.len();
    let phase = progress.counted("two instances: start together, wait for /readyz", 1);
    let started = Instant::now();
    let services = match tokio::join!(Service::start(data), Service::start(data)) {
        (Ok(a), Ok(b)) => [a, b],
        (Ok(up), Err(e)) | (Err(e), Ok(up)) => {
            up.stop().await;
            return Err(e);
        }
        (Err(e), Err(_)) => return Err(e),
    };
    let limit = Duration::from_secs(60);
    let both = tokio::join!(
        ready_within(http, &services[0].base, limit),
        ready_within(http, &services[1].base, limit)
    );
    let ready = (both.0 && both.1).then(|| started.elapsed());
    phase.finish(&ready.map_or("not ready in 60 s".into(), |d| format!("{d:.1?}")));

    let phase = progress.counted(
        format!("two instances: a send to each of {n} rooms"),
        n as u64,
    );
    let mut errors = Errors::default();
    let started = Instant::now();
    let mut sending = futures_util::stream::iter(rooms.iter().enumerate())
        .map(|(i, (room, owner))| {
            let url = format!(
                "{}/send/?room_name={room}&from_alias={owner}&message=pair-{i}",
                services[i % 2].base
            );
            let http = http.clone();
            async move {
                match http.get(url).send().await {
                    Ok(r) if r.status() == 200 => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                    Err(e) => Err(format!("request failed: {e}")),
                }
            }
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(answer) = sending.next().await {
        if let Err(e) = answer {
            errors.record(e);
        }
        phase.inc(1);
    }
    drop(sending);
    let sent_per_s = n as f64 / started.elapsed().as_secs_f64();
    phase.finish(&format!("{sent_per_s:.0}/s"));
    let mut numbering = [f64::NAN; 2];
    for (count, service) in numbering.iter_mut().zip(&services) {
        [*count] = gauges(http, &service.base, [crate::metrics::ROOMS_NUMBERING]).await;
    }
    let [a, b] = services;
    tokio::join!(a.stop(), b.stop());
    Ok(Pair {
        ready,
        sent_per_s,
        numbering,
        errors,
    })
}

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// Gauges' values from one scrape of a service's `/metrics` (NaN where one cannot be read).
async fn gauges<const N: usize>(http: &reqwest::Client, base: &str, names: [&str; N]) -> [f64; N] {
    let text = match http.get(format!("{base}/metrics")).send().await {
        Ok(answer) => answer.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    names.map(|name| crate::metrics::value_in(&text, name).unwrap_or(f64::NAN))
}

/// Whether `/readyz` answers 200 within `limit`.
async fn ready_within(http: &reqwest::Client, base: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The real back ends' own rates, measured in the same run (none on the embedded ones).
struct Raw {
    /// The store's single-document inserts per second.
    insert: Option<f64>,
    /// The same spread over as many collections as the smallest and the largest room count.
    insert_spread: Option<[f64; 2]>,
    /// RabbitMQ's confirmed publishes per second spread over as many queues as the smallest and
    /// the largest room count.
    publish_spread: Option<[f64; 2]>,
}

/// Each round's CPU per send, of the measurement and of the baseline's rounds taken in turn.
type CpuPairs<'a> = (&'a [[Option<f64>; 3]], &'a [[Option<f64>; 3]]);

/// The CPU rows of one measurement (`what`: "CPU per acked send over 10 rooms"), each process's
/// beside `base`'s (the smallest count's, named) when given, and with `pairs`, ratios measured
/// in pairs ([`Row::paired`]); `judged` holds the service's to 1.3x.
fn cpu_rows(
    what: &str,
    cpu: &[Option<f64>; 3],
    base: Option<(&str, &[Option<f64>; 3])>,
    pairs: Option<CpuPairs<'_>>,
    judged: bool,
) -> Vec<Row> {
    let total = |cpu: &[Option<f64>; 3]| -> Option<f64> {
        let read: Option<Vec<f64>> = cpu.iter().copied().collect();
        read.map(|all| all.iter().sum())
    };
    // Process `p`'s figure of each round (`None`: all three's).
    let each = |rounds: &[[Option<f64>; 3]], p: Option<usize>| -> Vec<Option<f64>> {
        rounds
            .iter()
            .map(|cpu| p.map_or_else(|| total(cpu), |p| cpu[p]))
            .collect()
    };
    let paired_ratio =
        |p: Option<usize>| pairs.map(|(rounds, base)| paired(&each(rounds, p), &each(base, p)));
    let figures = PROCESSES
        .iter()
        .zip(0..)
        .map(|(who, i)| (*who, cpu[i], base.and_then(|(_, b)| b[i]), Some(i)))
        .chain(std::iter::once((
            "all three",
            total(cpu),
            base.and_then(|(_, b)| total(b)),
            None,
        )));
    let mut rows = Vec::new();
    for (who, value, base_value, p) in figures {
        let Some(value) = value else { continue };
        let mut row = Row::new(format!("{what}: {who}"), value, Unit::Micros);
        if let (Some(base_value), Some((name, _))) = (base_value, base) {
            row = row.against(name, base_value);
            if let Some(ratio) = paired_ratio(p) {
                row = row.paired(ratio);
            }
            if judged && who == PROCESSES[0] {
                row = row.target(Target::ratio_below(1.3));
            }
        }
        rows.push(row);
    }
    rows
}

fn rows(
    steps: &[Step],
    ready: Option<Duration>,
    idle_kib: u64,
    pair: Option<&Pair>,
    raw: Raw,
    counts: [usize; 3],
) -> Vec<Row> {
    let mut rows = Vec::new();
    // Each back end's own cost per message at the largest count, beside the service's below.
    let spreads = [
        (
            "raw broker: confirmed publishes",
            "queues",
            raw.publish_spread,
        ),
        (
            "raw store: single inserts",
            "collections",
            raw.insert_spread,
        ),
    ];
    for (what, over, spread) in spreads {
        if let Some([few, many]) = spread {
            rows.push(Row::new(
                format!("{what} over {} {over}", counts[0]),
                few,
                Unit::PerSecond,
            ));
            rows.push(
                Row::new(
                    format!("{what} over {} {over}", counts[2]),
                    many,
                    Unit::PerSecond,
                )
                .against(format!("{} {over}", counts[0]), few),
            );
        }
    }
    let first = steps.first().map(|s| s.acked_per_s);
    let first_p50 = steps.first().map(|s| s.stored.clone().percentile_ms(50.0));
    let largest = counts[2];
    for step in steps {
        let n = step.rooms;
        let mut created = Row::new(
            format!("room creations (first sends), up to {n} rooms"),
            step.created_per_s,
            Unit::PerSecond,
        );
        if n == largest {
            created = match raw.insert {
                Some(raw) => created
                    .against("raw single insert", raw)
                    .target(Target::ratio_at_least(CREATIONS_PER_RAW_INSERT)),
                None => created.target(Target::at_least(200.0)),
            };
        }
        rows.push(created);
        if n == largest {
            // Who pays for a creation (the rooms added at this step), as for a send below.
            rows.extend(cpu_rows(
                &format!("CPU per room creation, rooms {}..{n}", counts[1] + 1),
                &step.cpu_per_creation,
                None,
                None,
                false,
            ));
        }
        let mut acked = Row::new(
            format!("acked sends over {n} rooms, concurrency {CONCURRENCY}"),
            step.acked_per_s,
            Unit::PerSecond,
        );
        // The baseline: at the largest count, the smallest count's rounds taking turns with it;
        // else the smallest count's own step.
        let first_name = format!("{} rooms", counts[0]);
        let in_turn_name = format!("{} rooms in turn, paired", counts[0]);
        let base = match &step.alongside {
            Some(few) => Some((in_turn_name.as_str(), few.acked_per_s, &few.cpu_per_send)),
            None => steps
                .first()
                .filter(|_| n != counts[0])
                .map(|f| (first_name.as_str(), f.acked_per_s, &f.cpu_per_send)),
        };
        if let Some((name, rate, _)) = base {
            acked = acked.against(name, rate);
            if let Some(few) = &step.alongside {
                let each = |rounds: &[f64]| rounds.iter().map(|r| Some(*r)).collect::<Vec<_>>();
                acked = acked.paired(paired(&each(&step.rounds.0), &each(&few.rounds)));
            }
            if n == largest {
                // Per-send cost within 1.3x: the rate at least 1/1.3 of the smallest's.
                acked = acked.target(Target::ratio_at_least(1.0 / 1.3));
            }
        }
        rows.push(acked);
        let base = base.map(|(name, _, cpu)| (name, cpu));
        let pairs = step
            .alongside
            .as_ref()
            .map(|few| (step.rounds.1.as_slice(), few.cpu_rounds.as_slice()));
        rows.extend(cpu_rows(
            &format!("CPU per acked send over {n} rooms"),
            &step.cpu_per_send,
            base,
            pairs,
            n == largest,
        ));
        let mut stored = step.stored.clone();
        let mut p50 = Row::new(
            format!("send→stored p50 at {RATE}/s over {n} rooms"),
            stored.percentile_ms(50.0),
            Unit::Millis,
        );
        // A send's time at a moderate load, beside the smallest count's (the acked rate above
        // is the cost at saturation).
        if n != counts[0]
            && let Some(base) = first_p50
        {
            p50 = p50.against(format!("{} rooms", counts[0]), base);
        }
        rows.push(p50);
        let mut rss = Row::new(
            format!("service RSS with {n} rooms"),
            step.rss_kib as f64 / 1024.0,
            Unit::Mib,
        );
        if n == largest {
            rss = rss.target(Target::below(150.0));
        }
        rows.push(rss);
        // What the RSS is made of (not judged): the memory the service's data holds, and what
        // the allocator keeps free after it.
        let (in_use, free) = step.heap_mib;
        rows.push(Row::new(
            format!("  of which heap in use with {n} rooms"),
            in_use,
            Unit::Mib,
        ));
        rows.push(Row::new(
            format!("  of which heap free but held with {n} rooms"),
            free,
            Unit::Mib,
        ));
        if let Some(few) = &step.alongside {
            // Diagnostic, not judged: the baseline above beside the smallest count's own step,
            // minutes earlier in a deployment of that many rooms. It tells the machine's drift,
            // and what a grown deployment costs, from what spreading the sends costs.
            let over = format!("over {} rooms in turn with {n}", counts[0]);
            let mut row = Row::new(
                format!("acked sends {over}"),
                few.acked_per_s,
                Unit::PerSecond,
            );
            if let Some(base) = first {
                row = row.against(first_name.as_str(), base);
            }
            rows.push(row);
            rows.extend(cpu_rows(
                &format!("CPU per acked send {over}"),
                &few.cpu_per_send,
                steps
                    .first()
                    .map(|f| (first_name.as_str(), &f.cpu_per_send)),
                None,
                false,
            ));
        }
    }
    rows.push(
        Row::new(
            format!("ready after a restart with {largest} rooms"),
            ready.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
            Unit::Millis,
        )
        .target(Target::below(10_000.0)),
    );
    // What the rooms themselves cost: every consumer subscribed, no cache filled, no load.
    rows.push(Row::new(
        format!("service RSS after that restart, idle, {largest} rooms"),
        idle_kib as f64 / 1024.0,
        Unit::Mib,
    ));
    if let Some(pair) = pair {
        rows.push(
            Row::new(
                format!("two instances started together: both ready, {largest} rooms"),
                pair.ready.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
                Unit::Millis,
            )
            .target(Target::below(10_000.0)),
        );
        rows.push(Row::new(
            format!("two instances: one send to each of {largest} rooms"),
            pair.sent_per_s,
            Unit::PerSecond,
        ));
        for (i, numbered) in pair.numbering.iter().enumerate() {
            // Spread: neither instance numbers three quarters of the rooms.
            rows.push(
                Row::new(
                    format!("two instances: rooms numbered by instance {}", i + 1),
                    *numbered,
                    Unit::Rooms,
                )
                .against("every room", largest as f64)
                .target(Target::ratio_below(0.75)),
            );
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_round_is_the_middle_one_of_those_measured() {
        assert_eq!(
            median([Some(3.0), Some(1.0), Some(2.0)].into_iter()),
            Some(2.0)
        );
        assert_eq!(median([Some(9.0), None, Some(1.0)].into_iter()), Some(1.0));
        assert_eq!(
            median([Some(4.0), Some(1.0), Some(3.0), Some(2.0)].into_iter()),
            Some(2.0)
        );
        assert_eq!(median([None, None].into_iter()), None);
    }
}
