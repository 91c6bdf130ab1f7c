//! `mess-chat bench`: measures, in one run, the raw speed of the broker and the store (the
//! baselines) and the service on top of them over HTTP, on the embedded back ends, the real ones,
//! or both, and prints each service figure beside its baseline and the target.
//!
//! - [`plan`]: what a run measures, for how long; [`ends`]: the back ends, opened and cleaned up.
//! - [`backend`]: one back end's run: the phases and the rows they give.
//! - [`instances`]: the real back ends under three instances of the service: throughput through
//!   one and through three, and send→stored latency local and cross-instance.
//! - [`fanout`]: one busy room followed by 10, 100 and 1,000 live sockets: memory per socket,
//!   deliveries and send→delivered latency.
//! - [`scaling`]: the same load at 10, 1,000 and 10,000 rooms, on each back end: creations,
//!   acked sends, send→stored and memory, and readiness after a restart.
//! - [`baseline`]: the raw broker and store rates (the RabbitMQ and MongoDB loops themselves live
//!   in `broker::rmq::baseline` and `store::mongo::baseline`).
//! - [`load`]: the HTTP load: closed loop, open loop, history reads, room creation.
//! - [`samples`]: percentiles and error tallies; [`rss`]: the process's resident memory.
//! - [`report`]: rows, targets and the JSON document; [`table`]: the text table;
//!   [`progress`]: the display on stderr.
//!
//! With `--backend both`, each back end runs in a child process of its own (this binary again,
//! with `--backend X --json`), so that the memory figure of one is not inflated by the other;
//! within a back end, baselines and service share the process and the machine's noise.

pub mod backend;
pub mod baseline;
pub mod child;
pub mod cpu;
pub mod ends;
pub mod fanout;
pub mod instances;
pub mod load;
pub mod plan;
pub mod progress;
pub mod quorum;
pub mod report;
pub mod rss;
pub mod samples;
pub mod scaling;
pub mod table;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use plan::{Backend, Plan};
use report::{Machine, Report};

use crate::broker::BrokerError;
use crate::server::ServerError;
use crate::store::StoreError;

/// Environment variable naming the RabbitMQ of the real back end.
pub const AMQP_URL_VAR: &str = "MESS_CHAT_AMQP_URL";
/// Environment variable naming the MongoDB of the real back end.
pub const MONGO_URL_VAR: &str = "MESS_CHAT_MONGO_URL";

/// Arguments of `mess-chat bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Back ends to measure; `real` reads MESS_CHAT_AMQP_URL and MESS_CHAT_MONGO_URL.
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    pub backend: BackendChoice,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// A smoke run of about 20 s: shorter phases, 200 rooms; rough figures.
    #[arg(long)]
    pub quick: bool,
    /// Only the rooms section (10, 1,000 and 10,000 rooms) of each back end.
    #[arg(long)]
    pub rooms_only: bool,
    /// Only the broker-cluster section: classic queues on one node against quorum queues on
    /// the cluster named by MESS_CHAT_CLUSTER_AMQP_URLS (scripts/rabbit-cluster.sh start).
    #[arg(long, conflicts_with = "rooms_only")]
    pub quorum_only: bool,
}

/// The `--backend` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// In-process broker and redb store.
    Embedded,
    /// RabbitMQ and MongoDB.
    Real,
    /// Embedded, then real.
    Both,
}

impl BackendChoice {
    fn backends(self) -> Vec<Backend> {
        match self {
            BackendChoice::Embedded => vec![Backend::Embedded],
            BackendChoice::Real => vec![Backend::Real],
            BackendChoice::Both => vec![Backend::Embedded, Backend::Real],
        }
    }
}

/// What can stop a bench.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A back end is not configured or not reachable, or the run could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The broker failed a baseline.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The store failed a baseline.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service did not start.
    #[error("cannot start the service: {0}")]
    Server(#[from] ServerError),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A local resource (port, temporary directory, child process) failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Ctrl-C: the run stopped after cleaning up.
    #[error("interrupted (what the run created was removed)")]
    Interrupted,
    /// The child process measuring one back end failed.
    #[error("the {backend} bench failed ({status})")]
    Child {
        /// The back end it measured.
        backend: &'static str,
        /// How it ended.
        status: String,
    },
}

/// Runs `mess-chat bench`: the figures go to stdout (table or JSON), progress to stderr.
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let backends = args.backend.backends();
    if backends.contains(&Backend::Real) {
        ends::real_urls()?;
    }
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::standard()
    };
    let mut report = Report {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: machine(),
        quick: args.quick,
        backends: Vec::new(),
    };
    let mut failure = None;
    if args.quorum_only {
        let cluster = quorum::cluster_urls().ok_or_else(|| {
            BenchError::Setup(format!(
                "--quorum-only needs {} (eval \"$(scripts/rabbit-cluster.sh start)\")",
                quorum::CLUSTER_URLS_VAR
            ))
        })?;
        ends::real_urls()?;
        report.backends.push(quorum::run(&plan, &cluster).await?);
    } else if args.rooms_only {
        for which in backends {
            report
                .backends
                .push(scaling::run(which, &plan, args.quick).await?);
        }
    } else if let [only] = backends[..] {
        report.backends.push(backend::run(only, &plan).await?);
        report
            .backends
            .push(scaling::run(only, &plan, args.quick).await?);
        match only {
            Backend::Real => {
                report.backends.push(instances::run(&plan).await?);
                match quorum::cluster_urls() {
                    Some(cluster) => report.backends.push(quorum::run(&plan, &cluster).await?),
                    None => eprintln!(
                        "bench: no broker-cluster section: {} is unset (scripts/rabbit-cluster.sh \
                         start prints it)",
                        quorum::CLUSTER_URLS_VAR
                    ),
                }
            }
            Backend::Embedded => report.backends.push(fanout::run(&plan).await?),
        }
    } else {
        // Ctrl-C reaches the children too; each cleans up and ends, then this process reports.
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
        for which in backends {
            match in_child(which, args.quick).await {
                Ok(child) => report.backends.extend(child.backends),
                Err(_) if interrupted.load(Ordering::Relaxed) => {
                    failure = Some(BenchError::Interrupted);
                    break;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    if args.json {
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| BenchError::Setup(e.to_string()))?;
        println!("{json}");
    } else if !report.backends.is_empty() {
        print!("{}", table::table(&report));
    }
    failure.map_or(Ok(()), Err)
}

/// Runs one back end's bench in a child process (this executable, `bench --backend X --json`)
/// and reads its report.
async fn in_child(which: Backend, quick: bool) -> Result<Report, BenchError> {
    let exe = std::env::current_exe()?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["bench", "--backend", which.name(), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if quick {
        command.arg("--quick");
    }
    // Not `output()`: it would capture stderr, where the child shows its progress.
    let output = command.spawn()?.wait_with_output().await?;
    let failed = |status: String| BenchError::Child {
        backend: which.name(),
        status,
    };
    if !output.status.success() {
        return Err(failed(output.status.to_string()));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| failed(format!("unreadable report: {e}")))
}

/// The machine this runs on, from `/proc` where there is one.
fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| std::env::consts::OS.into());
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        kernel,
    }
}
