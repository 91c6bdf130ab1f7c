//! The broker-cluster section (real back ends, when `MESS_CHAT_CLUSTER_AMQP_URLS` names a
//! cluster's nodes, as `scripts/rabbit-cluster.sh start` prints them): one instance with classic
//! queues on the one RabbitMQ node of `MESS_CHAT_AMQP_URL`, then one with quorum queues on the
//! cluster, on the same database, each with rooms of its own. Measured for each: acked sends in a
//! closed loop and send→stored latency at a fixed offered rate; the quorum figures are given as a
//! ratio of the classic ones of the same run.

use std::sync::Arc;

use tokio::net::TcpListener;

use super::BenchError;
use super::ends::{Ends, host_of};
use super::instances::{CONCURRENCY, RATE, closed, latency};
use super::load::{ClosedLoop, LatencyRun, Load, TEXT};
use super::plan::{Backend, Plan};
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

/// Runs the section and cleans up whether or not it succeeded.
pub async fn run(plan: &Plan, cluster: &str) -> Result<BackendReport, BenchError> {
    let run_id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let progress = Progress::new("quorum");
    let ends = Ends::open(Backend::Real, &run_id).await?;
    let quorum = Arc::new(RabbitBroker::new(cluster).with_queue_type(QueueType::Quorum));
    let mut classic_rooms = Made::new();
    let mut quorum_rooms = Made::new();
    let measured = tokio::select! {
        measured = measure(&ends, &quorum, &run_id, plan, &progress, &mut classic_rooms, &mut quorum_rooms) => measured,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    let phase = progress.counted("clean up", 1);
    let mut problems = Vec::new();
    let mut failed = 0;
    for (room, group_room, members) in &quorum_rooms {
        failed += usize::from(quorum.delete_room(room, *group_room).await.is_err());
        for alias in members.iter().filter(|_| *group_room) {
            failed += usize::from(quorum.delete_inbox(alias).await.is_err());
        }
    }
    if failed > 0 {
        problems.push(format!(
            "{failed} queues or exchanges on the cluster could not be deleted"
        ));
    }
    let (broker, store) = ends.describe();
    problems.extend(ends.clean_up(classic_rooms).await);
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
            "{broker}; then quorum queues on the {}-node cluster at {}",
            nodes.len(),
            nodes.join(", ")
        ),
        store,
        load: format!(
            "one instance at a time; private rooms; sends spread over {} rooms; {}-byte texts",
            plan.pool,
            TEXT.len()
        ),
        rows,
        problems,
    })
}

/// What one instance measured, and the rooms it made.
struct One {
    sends: ClosedLoop,
    stored: LatencyRun,
    made: Made,
}

/// Measures one instance on `broker` (its rooms named after `rooms_id`), then stops it. Nothing
/// fails once the instance runs, so every room it made reaches the clean-up.
async fn measure_one(
    ends: &Ends,
    broker: Arc<dyn Broker>,
    rooms_id: &str,
    how: &str,
    plan: &Plan,
    progress: &Progress,
    problems: &mut Vec<String>,
) -> Result<One, BenchError> {
    let Ends::Real {
        mongo_url,
        database,
        ..
    } = ends
    else {
        return Err(BenchError::Setup(
            "quorum queues need the real back ends".into(),
        ));
    };
    let store = Arc::new(MongoStore::connect(mongo_url, database).await?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server = Server::start_with(listener, broker, store, ServiceConfig::default()).await?;
    let load = Load::new(server.addr(), rooms_id, plan.pool)?;
    let phase = progress.counted(format!("create the {} load rooms, {how}", plan.pool), 1);
    let (_, errors) = load.create_pool().await;
    phase.finish("done");
    super::instances::note(problems, &format!("load rooms, {how}"), &errors);
    let sends = closed(&load, how, plan, progress, problems).await;
    let stored = latency(&load, how, plan, progress, problems).await;
    let made = server
        .service()
        .rooms()
        .rooms()
        .iter()
        .map(|r| (r.name().clone(), r.group_room(), r.members()))
        .collect();
    if let Err(e) = server.stop().await {
        problems.push(format!("the {how} instance did not stop cleanly: {e}"));
    }
    Ok(One {
        sends,
        stored,
        made,
    })
}

async fn measure(
    ends: &Ends,
    quorum: &Arc<RabbitBroker>,
    run_id: &str,
    plan: &Plan,
    progress: &Progress,
    classic_rooms: &mut Made,
    quorum_rooms: &mut Made,
) -> Result<(Vec<Row>, Vec<String>), BenchError> {
    let mut problems = Vec::new();
    quorum.ping().await.map_err(|e| {
        BenchError::Setup(format!(
            "cannot reach the cluster ({CLUSTER_URLS_VAR}): {e}"
        ))
    })?;
    let classic = measure_one(
        ends,
        ends.broker(),
        &format!("{run_id}-c"),
        "classic, 1 node",
        plan,
        progress,
        &mut problems,
    )
    .await?;
    classic_rooms.extend(classic.made.iter().cloned());
    let replicated = measure_one(
        ends,
        quorum.clone(),
        &format!("{run_id}-q"),
        "quorum, cluster",
        plan,
        progress,
        &mut problems,
    )
    .await?;
    quorum_rooms.extend(replicated.made.iter().cloned());
    Ok((rows(classic, replicated), problems))
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
