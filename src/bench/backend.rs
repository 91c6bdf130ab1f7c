//! One back end's bench, in this process: opens the back ends (a temporary directory, or the
//! servers named by `MESS_CHAT_AMQP_URL` / `MESS_CHAT_MONGO_URL` with a database of the run's
//! own), starts the service on `127.0.0.1:0`, runs the phases, and removes everything it created
//! (queues, exchanges, the database, the directory), whether or not the phases succeeded.
//!
//! The phases, in order: 1000 rooms created by one send each, then the peak RSS (first, so that
//! the other phases' garbage does not count in it); the baselines; closed-loop sends at each
//! concurrency; open-loop sends at each offered rate; history page reads.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::TcpListener;

use super::baseline::{self, Baselines, INSERT_BATCH, PUBLISH_WINDOW};
use super::load::{ClosedLoop, LatencyRun, Load, TEXT};
use super::progress::Progress;
use super::report::{BackendReport, Row, Target, Unit};
use super::samples::Errors;
use super::{AMQP_URL_VAR, BenchError, MONGO_URL_VAR, rss};
use crate::broker::Broker;
use crate::broker::memory::MemoryBroker;
use crate::broker::rmq::RabbitBroker;
use crate::model::{Alias, RoomName};
use crate::server::Server;
use crate::service::ServiceConfig;
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;

/// Which back ends one bench process measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-process broker and a redb file in a temporary directory.
    Embedded,
    /// RabbitMQ and a MongoDB-protocol server.
    Real,
}

impl Backend {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Real => "real",
        }
    }
}

/// How long and how big each phase is.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rooms created for the memory figure.
    pub rooms: usize,
    /// Room creations in flight at once.
    pub rooms_in_flight: usize,
    /// Rooms the throughput and latency load is spread over.
    pub pool: usize,
    /// Length of each baseline.
    pub baseline: Duration,
    /// Unmeasured start of each closed-loop run.
    pub warmup: Duration,
    /// Measured length of each closed-loop run.
    pub closed: Duration,
    /// Concurrencies of the closed-loop runs.
    pub concurrencies: Vec<usize>,
    /// Length of each open-loop run.
    pub open: Duration,
    /// Offered rates of the open-loop runs, per second.
    pub rates: Vec<f64>,
    /// Length of the history run.
    pub history: Duration,
}

impl Plan {
    /// The default run: about a minute per back end.
    pub fn standard() -> Self {
        Self {
            rooms: 1000,
            rooms_in_flight: 100,
            pool: 16,
            baseline: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            closed: Duration::from_secs(5),
            concurrencies: vec![1, 32, 256],
            open: Duration::from_secs(5),
            rates: vec![100.0, 1000.0],
            history: Duration::from_secs(3),
        }
    }

    /// The `--quick` smoke run: about ten seconds per back end, 200 rooms.
    pub fn quick() -> Self {
        Self {
            rooms: 200,
            baseline: Duration::from_millis(600),
            warmup: Duration::from_millis(200),
            closed: Duration::from_millis(800),
            open: Duration::from_millis(1500),
            history: Duration::from_millis(600),
            ..Self::standard()
        }
    }
}

/// The back ends of one run, with what it takes to measure them raw and to clean them up.
enum Ends {
    Embedded {
        dir: TempDir,
        broker: Arc<MemoryBroker>,
        store: Arc<EmbeddedStore>,
        baseline_store: EmbeddedStore,
    },
    Real {
        amqp_url: String,
        mongo_url: String,
        database: String,
        broker: Arc<RabbitBroker>,
        store: Arc<MongoStore>,
    },
}

/// The URLs of the real back ends, from the environment, or a message saying what to set.
pub fn real_urls() -> Result<(String, String), BenchError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var(AMQP_URL_VAR), var(MONGO_URL_VAR)) {
        (Some(amqp), Some(mongo)) => Ok((amqp, mongo)),
        (amqp, mongo) => {
            let missing: Vec<&str> = [(AMQP_URL_VAR, amqp), (MONGO_URL_VAR, mongo)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(name, _)| name)
                .collect();
            Err(BenchError::Setup(format!(
                "the real back end needs {} (e.g. eval \"$(scripts/services.sh)\"), or run \
                 with --backend embedded",
                missing.join(" and ")
            )))
        }
    }
}

/// `scheme://user:password@host:port/path?query` → `host:port`, so that a report never shows
/// credentials.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    rest.rsplit_once('@').map_or(rest, |(_, host)| host)
}

impl Ends {
    async fn open(backend: Backend, run_id: &str) -> Result<Self, BenchError> {
        match backend {
            Backend::Embedded => {
                let dir = tempfile::Builder::new()
                    .prefix("mess-chat-bench-")
                    .tempdir()?;
                let store = EmbeddedStore::open(&dir.path().join("service"))?;
                let baseline_store = EmbeddedStore::open(&dir.path().join("baseline"))?;
                Ok(Ends::Embedded {
                    dir,
                    broker: Arc::new(MemoryBroker::new()),
                    store: Arc::new(store),
                    baseline_store,
                })
            }
            Backend::Real => {
                let (amqp_url, mongo_url) = real_urls()?;
                let broker = RabbitBroker::new(amqp_url.clone());
                broker.ping().await.map_err(|e| {
                    BenchError::Setup(format!(
                        "cannot reach RabbitMQ at {} ({AMQP_URL_VAR}): {e}",
                        host_of(&amqp_url)
                    ))
                })?;
                let database = run_id.replace('-', "_");
                let store = MongoStore::connect(&mongo_url, &database).await?;
                store.ping().await.map_err(|e| {
                    BenchError::Setup(format!(
                        "cannot reach MongoDB at {} ({MONGO_URL_VAR}): {e}",
                        host_of(&mongo_url)
                    ))
                })?;
                Ok(Ends::Real {
                    amqp_url,
                    mongo_url,
                    database,
                    broker: Arc::new(broker),
                    store: Arc::new(store),
                })
            }
        }
    }

    fn broker(&self) -> Arc<dyn Broker> {
        match self {
            Ends::Embedded { broker, .. } => broker.clone(),
            Ends::Real { broker, .. } => broker.clone(),
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Ends::Embedded { store, .. } => store.clone(),
            Ends::Real { store, .. } => store.clone(),
        }
    }

    /// What the broker and the store are, for the report (no credentials).
    fn describe(&self) -> (String, String) {
        match self {
            Ends::Embedded { dir, .. } => (
                "in-process (MemoryBroker)".into(),
                format!("redb file in {} (removed after)", dir.path().display()),
            ),
            Ends::Real {
                amqp_url,
                mongo_url,
                database,
                ..
            } => (
                format!(
                    "RabbitMQ at {}, persistent messages, publisher confirms",
                    host_of(amqp_url)
                ),
                format!(
                    "MongoDB protocol at {}, database {database} (dropped after)",
                    host_of(mongo_url)
                ),
            ),
        }
    }

    async fn baselines(
        &self,
        run_id: &str,
        plan: &Plan,
        progress: &Progress,
    ) -> Result<Baselines, BenchError> {
        match self {
            Ends::Embedded { baseline_store, .. } => {
                baseline::embedded(baseline_store, run_id, plan.baseline, progress).await
            }
            Ends::Real {
                amqp_url, store, ..
            } => baseline::real(amqp_url, store, run_id, plan.baseline, progress).await,
        }
    }

    /// Removes what the run created; returns what could not be removed.
    async fn clean_up(self, rooms: Vec<(RoomName, bool, Vec<Alias>)>) -> Vec<String> {
        let mut problems = Vec::new();
        match self {
            Ends::Embedded { dir, .. } => {
                let path = dir.path().display().to_string();
                if let Err(e) = dir.close() {
                    problems.push(format!("could not remove {path}: {e}"));
                }
            }
            Ends::Real {
                broker,
                store,
                database,
                ..
            } => {
                let mut failed = 0;
                for (room, group_room, members) in &rooms {
                    failed += usize::from(broker.delete_room(room, *group_room).await.is_err());
                    if *group_room {
                        for alias in members {
                            failed += usize::from(broker.delete_inbox(alias).await.is_err());
                        }
                    }
                }
                if failed > 0 {
                    problems.push(format!("{failed} queues or exchanges could not be deleted"));
                }
                if let Err(e) = store.drop_database().await {
                    problems.push(format!("could not drop database {database}: {e}"));
                }
            }
        }
        problems
    }
}

/// Runs every phase on `backend` and cleans up. Ctrl-C stops the phases, cleans up, and fails.
pub async fn run(backend: Backend, plan: &Plan) -> Result<BackendReport, BenchError> {
    let run_id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let progress = Progress::new(backend.name());
    let ends = Ends::open(backend, &run_id).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server = match Server::start_with(
        listener,
        ends.broker(),
        ends.store(),
        ServiceConfig::default(),
    )
    .await
    {
        Ok(server) => server,
        Err(e) => {
            ends.clean_up(Vec::new()).await;
            return Err(e.into());
        }
    };
    let measured = tokio::select! {
        measured = measure(&server, &ends, &run_id, plan, &progress) => measured,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    let rooms = server
        .service()
        .rooms()
        .rooms()
        .iter()
        .map(|r| (r.name().clone(), r.group_room(), r.members()))
        .collect();
    let stopped = server.stop().await;
    let phase = progress.counted("clean up", 1);
    let (broker, store) = ends.describe();
    let mut problems = ends.clean_up(rooms).await;
    if let Err(e) = stopped {
        problems.push(format!("the service did not stop cleanly: {e}"));
    }
    phase.finish(if problems.is_empty() {
        "nothing left behind"
    } else {
        "some things were left behind"
    });
    let (rows, mut found) = measured?;
    found.extend(problems);
    Ok(BackendReport {
        backend: backend.name().into(),
        broker,
        store,
        load: format!(
            "private rooms; sends spread over {} rooms; {}-byte texts; the HTTP client runs in \
             this process, sharing its cores and counting in its RSS",
            plan.pool,
            TEXT.len()
        ),
        rows,
        problems: found,
    })
}

/// What the phases measured before they are turned into rows.
struct Measured {
    rooms: usize,
    peak_rss_kib: Option<u64>,
    baselines: Baselines,
    closed: Vec<ClosedLoop>,
    open: Vec<(f64, LatencyRun)>,
    history: LatencyRun,
}

async fn measure(
    server: &Server,
    ends: &Ends,
    run_id: &str,
    plan: &Plan,
    progress: &Progress,
) -> Result<(Vec<Row>, Vec<String>), BenchError> {
    let load = Load::new(server.addr(), run_id, plan.pool)?;
    let mut problems = Vec::new();
    let mut note = |what: &str, errors: &Errors| {
        if errors.total() > 0 {
            problems.push(format!("{what}: {}", errors.summary()));
        }
    };

    let urls = (0..plan.rooms)
        .map(|k| load.send_url(&format!("{run_id}-m{k:04}")))
        .collect::<Result<Vec<_>, _>>()?;
    let phase = progress.counted(
        format!("create {} rooms, {} at a time", plan.rooms, plan.rooms_in_flight),
        plan.rooms as u64,
    );
    let (created, errors) = load
        .send_each(urls, plan.rooms_in_flight, || phase.inc(1))
        .await;
    let peak_rss_kib = rss::read().map(|r| r.peak_kib);
    phase.finish(&format!(
        "{created} created, peak RSS {}",
        peak_rss_kib.map_or("unknown".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    ));
    note("room creation", &errors);

    let baselines = ends.baselines(run_id, plan, progress).await?;

    let phase = progress.counted(format!("create the {} load rooms", load.pool_size()), 1);
    let (_, errors) = load.create_pool().await;
    phase.finish("done");
    note("load rooms", &errors);

    let mut closed = Vec::new();
    for &concurrency in &plan.concurrencies {
        let phase = progress.timed(
            format!("acked sends, concurrency {concurrency}"),
            plan.warmup + plan.closed,
        );
        let run = load
            .closed_loop(concurrency, plan.warmup, plan.closed)
            .await;
        phase.finish(&super::report::format_value(
            Some(run.per_second),
            Unit::PerSecond,
        ));
        note(&format!("sends at concurrency {concurrency}"), &run.errors);
        closed.push(run);
    }

    let mut open = Vec::new();
    for &rate in &plan.rates {
        let phase = progress.timed(format!("send→stored at {rate}/s offered"), plan.open);
        let mut run = load.open_loop(rate, plan.open).await;
        phase.finish(&format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            run.samples.percentile_ms(50.0),
            run.samples.percentile_ms(99.0)
        ));
        note(&format!("sends at {rate}/s offered"), &run.errors);
        open.push((rate, run));
    }

    let phase = progress.timed("history page reads", plan.history);
    let mut history = load.history(plan.history).await;
    phase.finish(&format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        history.samples.percentile_ms(50.0),
        history.samples.percentile_ms(99.0)
    ));
    note("history reads", &history.errors);

    let measured = Measured {
        rooms: plan.rooms,
        peak_rss_kib,
        baselines,
        closed,
        open,
        history,
    };
    Ok((rows(ends, measured), problems))
}

/// The table rows of one back end, with the targets.
fn rows(ends: &Ends, mut m: Measured) -> Vec<Row> {
    let embedded = matches!(ends, Ends::Embedded { .. });
    let b = &mut m.baselines;
    let publish = if embedded {
        "raw MemoryBroker::publish".to_string()
    } else {
        format!("raw confirmed publish, {PUBLISH_WINDOW} in flight")
    };
    let mut rows = vec![
        Row::new(publish, b.publish_per_s, Unit::PerSecond),
        Row::new(
            "raw store insert, one at a time",
            b.insert_single_per_s,
            Unit::PerSecond,
        ),
        Row::new(
            format!("raw store insert, batches of {INSERT_BATCH}"),
            b.insert_batch_per_s,
            Unit::PerSecond,
        ),
    ];
    for run in &m.closed {
        let mut row = Row::new(
            format!("acked sends, concurrency {}", run.concurrency),
            run.per_second,
            Unit::PerSecond,
        )
        .against("publish", b.publish_per_s);
        if Some(&run.concurrency) == m.closed.iter().map(|r| &r.concurrency).max() {
            row = row.target(Target::ratio_at_least(0.5));
        }
        rows.push(row);
    }
    if embedded {
        let best = m.closed.iter().map(|r| r.per_second).fold(f64::NAN, f64::max);
        rows.push(
            Row::new("acked sends, best concurrency", best, Unit::PerSecond)
                .target(Target::at_least(20_000.0)),
        );
    }
    let insert_p50 = b.insert_single.percentile_ms(50.0);
    let insert_p99 = b.insert_single.percentile_ms(99.0);
    for (rate, run) in &mut m.open {
        let top = *rate >= 1000.0;
        let mut p50 = Row::new(
            format!("send→stored p50 at {rate}/s"),
            run.samples.percentile_ms(50.0),
            Unit::Millis,
        )
        .against("insert p50", insert_p50);
        let mut p99 = Row::new(
            format!("send→stored p99 at {rate}/s"),
            run.samples.percentile_ms(99.0),
            Unit::Millis,
        )
        .against("insert p99", insert_p99);
        if top {
            p50 = p50.target(Target::below(5.0));
            p99 = p99.target(Target::below(50.0));
        }
        rows.extend([p50, p99]);
    }
    rows.push(
        Row::new(
            "history page (100) p50",
            m.history.samples.percentile_ms(50.0),
            Unit::Millis,
        )
        .target(Target::below(2.0)),
    );
    rows.push(Row::new(
        "history page (100) p99",
        m.history.samples.percentile_ms(99.0),
        Unit::Millis,
    ));
    let rss = m.peak_rss_kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
    let mut rss_row = Row::new(
        format!("peak RSS with {} rooms (+ client)", m.rooms),
        rss,
        Unit::Mib,
    );
    if m.rooms >= 1000 {
        rss_row = rss_row.target(Target::below(64.0));
    }
    rows.push(rss_row);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_show_hosts_without_credentials() {
        assert_eq!(
            host_of("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "127.0.0.1:5672"
        );
        assert_eq!(
            host_of("mongodb://127.0.0.1:27017/?retryWrites=false"),
            "127.0.0.1:27017"
        );
        assert_eq!(host_of("mongodb://u:p@db:1?x=1"), "db:1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn the_quick_plan_is_shorter_but_measures_the_same_figures() {
        let (standard, quick) = (Plan::standard(), Plan::quick());
        assert_eq!(standard.concurrencies, vec![1, 32, 256]);
        assert_eq!(quick.concurrencies, standard.concurrencies);
        assert_eq!(quick.rates, standard.rates);
        assert!(quick.closed < standard.closed && quick.rooms < standard.rooms);
    }
}
