//! The broker-cluster section (real back ends, when `MESS_CHAT_CLUSTER_AMQP_URLS` names a
//! cluster's nodes, as `scripts/rabbit-cluster.sh start` prints them): one instance with classic
//! queues on the one RabbitMQ node of `MESS_CHAT_AMQP_URL`, then one with quorum queues on the
//! cluster, on the same database, each with rooms of its own. Measured for each: acked sends in a
//! closed loop and send→stored latency at a fixed offered rate; the quorum figures are given as a
//! ratio of the classic ones of the same run.

use std::sync::Arc;

use tokio::net::TcpListener;

use super::BenchError;
use super::ends::host_of;
use super::instances::{CONCURRENCY, RATE, closed, latency};
use super::load::{ClosedLoop, LatencyRun, Load, TEXT};
use super::plan::Plan;
use super::progress::Progress;
use super::report::{BackendReport, Row, Unit};
use crate::broker::rmq::{RabbitBroker, node_urls};
use crate::broker::{Broker, QueueType};
use crate::model::{Alias, RoomName};
use crate::server::Server;
use crate::service::ServiceConfig;
use crate::store::mongo::MongoStore;

/// The variable naming the cluster's nodes, separated by commas.
pub const CLUSTER_URLS_VAR: &str = "MESS_CHAT_CLUSTER_AMQP_URLS";

/// The cluster's node URLs, if the variable names any.
pub fn cluster_urls() -> Option<String> {
    std::env::var(CLUSTER_URLS_VAR)
        .ok()
        .filter(|urls| !node_urls(urls).is_empty())
}

/// A room of one instance, as the clean-up needs it.
type Made = Vec<(RoomName, bool, Vec<Alias>)>;

/// One measured instance: what it runs on, and what it made.
struct Part {
    /// Its name in the progress and the problems.
    how: &'static str,
    broker: Arc<dyn Broker>,
    /// Its own database (an instance starts a consumer for every room of its database: one
    /// database would declare the classic rooms on the cluster too).
    store: Arc<MongoStore>,
    /// What its load's room names start with.
    rooms_id: String,
    /// The rooms it made, for the clean-up.
    made: Made,
}

impl Part {
    /// Deletes the rooms it made from its broker and drops its database; says what it could not.
    async fn clean_up(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut failed = 0;
        for (room, group_room, members) in &self.made {
            failed += usize::from(self.broker.delete_room(room, *group_room).await.is_err());
            for alias in members.iter().filter(|_| *group_room) {
                failed += usize::from(self.broker.delete_inbox(alias).await.is_err());
            }
        }
        if failed > 0 {
            problems.push(format!(
                "{}: {failed} queues or exchanges could not be deleted",
                self.how
            ));
        }
        if let Err(e) = self.store.drop_database().await {
            problems.push(format!("{}: could not drop its database: {e}", self.how));
        }
        problems
    }
}

/// What one instance measured.
struct One {
    sends: ClosedLoop,
    stored: LatencyRun,
}

/// Runs the section and cleans up whether or not it succeeded.
pub async fn run(plan: &Plan, cluster: &str) -> Result<BackendReport, BenchError> {
    let run_id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let progress = Progress::new("quorum");
    let (amqp_url, mongo_url) = super::ends::real_urls()?;
    let database = run_id.replace('-', "_");
    let classic = RabbitBroker::new(&amqp_url);
    let quorum = RabbitBroker::new(cluster).with_queue_type(QueueType::Quorum);
    for (broker, which) in [(&classic, "RabbitMQ"), (&quorum, "the cluster")] {
        broker
            .ping()
            .await
            .map_err(|e| BenchError::Setup(format!("cannot reach {which}: {e}")))?;
    }
    let mut parts = [
        Part {
            how: "classic, 1 node",
            broker: Arc::new(classic),
            store: Arc::new(MongoStore::connect(&mongo_url, &format!("{database}_c")).await?),
            rooms_id: format!("{run_id}-c"),
            made: Made::new(),
        },
        Part {
            how: "quorum, cluster",
            broker: Arc::new(quorum),
            store: Arc::new(MongoStore::connect(&mongo_url, &format!("{database}_q")).await?),
            rooms_id: format!("{run_id}-q"),
            made: Made::new(),
        },
    ];
    let measured = tokio::select! {
        measured = measure(&mut parts, plan, &progress) => measured,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    let phase = progress.counted("clean up", 1);
    let mut problems = Vec::new();
    for part in &parts {
        problems.extend(part.clean_up().await);
    }
    phase.finish(if problems.is_empty() {
        "nothing left behind"
    } else {
        "some things were left behind"
    });
    let (rows, found) = measured?;
    problems.extend(found);
    let urls = node_urls(cluster);
    let nodes: Vec<&str> = urls.iter().map(|u| host_of(u)).collect();
    Ok(BackendReport {
        backend: "real, quorum".into(),
        broker: format!(
            "classic queues on RabbitMQ at {}, then quorum queues on the {}-node cluster at {}; \
             publisher confirms (a quorum queue keeps every message on disk)",
            host_of(&amqp_url),
            nodes.len(),
            nodes.join(", ")
        ),
        store: format!(
            "MongoDB protocol at {}, databases {database}_c and _q (dropped after)",
            host_of(&mongo_url)
        ),
        load: format!(
            "one instance at a time; sends spread over {} rooms; {}-byte texts",
            plan.pool,
            TEXT.len()
        ),
        rows,
        problems,
    })
}

/// Measures one instance as `part` says, then stops it, noting the rooms it made.
async fn measure_one(
    part: &mut Part,
    plan: &Plan,
    progress: &Progress,
    problems: &mut Vec<String>,
) -> Result<One, BenchError> {
    let how = part.how;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let store = part.store.clone();
    let server = Server::start_with(
        listener,
        part.broker.clone(),
        store,
        ServiceConfig::default(),
    )
    .await?;
    let load = Load::new(server.addr(), &part.rooms_id, plan.pool)?;
    let phase = progress.counted(format!("create the {} load rooms, {how}", plan.pool), 1);
    let (_, errors) = load.create_pool().await;
    phase.finish("done");
    super::instances::note(problems, &format!("load rooms, {how}"), &errors);
    let sends = closed(&load, how, plan, progress, problems).await;
    let stored = latency(&load, how, plan, progress, problems).await;
    part.made = server
        .service()
        .rooms()
        .rooms()
        .iter()
        .map(|r| (r.name().clone(), r.group_room(), r.members()))
        .collect();
    if let Err(e) = server.stop().await {
        problems.push(format!("the {how} instance did not stop cleanly: {e}"));
    }
    Ok(One { sends, stored })
}

async fn measure(
    parts: &mut [Part; 2],
    plan: &Plan,
    progress: &Progress,
) -> Result<(Vec<Row>, Vec<String>), BenchError> {
    let mut problems = Vec::new();
    let [classic, quorum] = parts;
    let classic = measure_one(classic, plan, progress, &mut problems).await?;
    let quorum = measure_one(quorum, plan, progress, &mut problems).await?;
    Ok((rows(classic, quorum), problems))
}

fn rows(classic: One, quorum: One) -> Vec<Row> {
    let (sends, mut stored) = (classic.sends, classic.stored);
    let (q_sends, mut q_stored) = (quorum.sends, quorum.stored);
    let (p50, p99) = (
        stored.samples.percentile_ms(50.0),
        stored.samples.percentile_ms(99.0),
    );
    vec![
        Row::new(
            format!("acked sends, classic queues, 1 node, concurrency {CONCURRENCY}"),
            sends.per_second,
            Unit::PerSecond,
        ),
        Row::new(
            format!("acked sends, quorum queues, cluster, concurrency {CONCURRENCY}"),
            q_sends.per_second,
            Unit::PerSecond,
        )
        .against("classic", sends.per_second),
        Row::new(
            format!("send→stored p50 at {RATE}/s, classic"),
            p50,
            Unit::Millis,
        ),
        Row::new(
            format!("send→stored p99 at {RATE}/s, classic"),
            p99,
            Unit::Millis,
        ),
        Row::new(
            format!("send→stored p50 at {RATE}/s, quorum"),
            q_stored.samples.percentile_ms(50.0),
            Unit::Millis,
        )
        .against("classic p50", p50),
        Row::new(
            format!("send→stored p99 at {RATE}/s, quorum"),
            q_stored.samples.percentile_ms(99.0),
            Unit::Millis,
        )
        .against("classic p99", p99),
    ]
}
