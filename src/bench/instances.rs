//! The several-instances section (real back ends only): three instances of the service, in this
//! process, each with its own broker connection and store client, on one RabbitMQ and one
//! database, as three `mess-chat serve` processes would be.
//!
//! The first instance creates the load's rooms, so it is their numbering consumer (the broker's
//! single active consumer): a send through it is *local*, one through another instance is
//! *cross-instance* (numbered and stored by the first, answered "stored" by the other once the
//! cluster event reaches it). Measured, in order: acked sends through the first instance alone;
//! send→stored latency local, then cross-instance; acked sends spread over all three. The other
//! instances load the rooms (one send each) before they are measured: a room's first use on an
//! instance reads it from the store, which is a start-up cost, not a per-send one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::BenchError;
use super::ends::Ends;
use super::load::{ClosedLoop, LatencyRun, Load, TEXT};
use super::plan::{Backend, Plan};
use super::progress::Progress;
use super::report::{BackendReport, Row, Target, Unit};
use super::samples::Errors;
use crate::broker::rmq::RabbitBroker;
use crate::server::Server;
use crate::service::ServiceConfig;
use crate::store::mongo::MongoStore;

/// Instances of the deployment.
pub const INSTANCES: usize = 3;
/// Senders of the closed-loop runs.
pub(super) const CONCURRENCY: usize = 256;
/// Offered rate of the latency runs, per second.
pub(super) const RATE: f64 = 100.0;

/// Runs the section and cleans up whether or not it succeeded.
pub async fn run(plan: &Plan) -> Result<BackendReport, BenchError> {
    let run_id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let progress = Progress::new("real ×3");
    let ends = Ends::open(Backend::Real, &run_id).await?;
    let mut servers = Vec::new();
    let measured = tokio::select! {
        measured = measure(&ends, &run_id, plan, &progress, &mut servers) => measured,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    let mut rooms = Vec::new();
    for server in &servers {
        for room in server.service().rooms().rooms() {
            rooms.push((room.name().clone(), room.group_room(), room.members()));
        }
    }
    rooms.sort_by(|a, b| a.0.cmp(&b.0));
    rooms.dedup_by(|a, b| a.0 == b.0);
    let phase = progress.counted("clean up", 1);
    let mut problems = Vec::new();
    for server in servers.into_iter().rev() {
        if let Err(e) = server.stop().await {
            problems.push(format!("an instance did not stop cleanly: {e}"));
        }
    }
    let (broker, store) = ends.describe();
    problems.extend(ends.clean_up(rooms).await);
    phase.finish(if problems.is_empty() {
        "nothing left behind"
    } else {
        "some things were left behind"
    });
    let (rows, found) = measured?;
    problems.extend(found);
    Ok(BackendReport {
        backend: format!("real ×{INSTANCES}"),
        broker,
        store,
        load: format!(
            "{INSTANCES} instances in one process, each with its own broker connection and store \
             client; private rooms; sends spread over {} rooms; {}-byte texts; the first \
             instance numbers every room",
            plan.pool,
            TEXT.len()
        ),
        rows,
        problems,
    })
}

/// Starts one more instance on the run's back ends.
async fn instance(ends: &Ends, first: bool) -> Result<Server, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let (broker, store) = if first {
        (ends.broker(), ends.store())
    } else {
        let Ends::Real {
            amqp_url,
            mongo_url,
            database,
            ..
        } = ends
        else {
            return Err(BenchError::Setup(
                "several instances need the real back ends".into(),
            ));
        };
        let store = MongoStore::connect(mongo_url, database).await?;
        (
            Arc::new(RabbitBroker::new(amqp_url.clone())) as _,
            Arc::new(store) as _,
        )
    };
    Ok(Server::start_with(listener, broker, store, ServiceConfig::default()).await?)
}

async fn measure(
    ends: &Ends,
    run_id: &str,
    plan: &Plan,
    progress: &Progress,
    servers: &mut Vec<Server>,
) -> Result<(Vec<Row>, Vec<String>), BenchError> {
    let mut problems = Vec::new();
    servers.push(instance(ends, true).await?);
    let first = servers[0].addr();
    let local = Load::new(first, run_id, plan.pool)?;
    let phase = progress.counted(format!("create the {} load rooms", plan.pool), 1);
    let (_, errors) = local.create_pool().await;
    phase.finish("done");
    note(&mut problems, "load rooms", &errors);

    let one = closed(&local, "through 1 instance", plan, progress, &mut problems).await;
    let near = latency(&local, "local", plan, progress, &mut problems).await;

    let phase = progress.counted(format!("start {} more instances", INSTANCES - 1), 1);
    for _ in 1..INSTANCES {
        servers.push(instance(ends, false).await?);
    }
    let peers_heard = async {
        while servers.iter().any(|s| s.service().peers() < INSTANCES - 1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), peers_heard)
        .await
        .is_err()
    {
        problems.push("the instances did not all hear each other within 10 s".into());
    }
    // One send per room through each new instance, so that it has loaded the rooms (a first
    // use reads the store) before anything is measured.
    for server in &servers[1..] {
        let (_, errors) = Load::new(server.addr(), run_id, plan.pool)?
            .create_pool()
            .await;
        note(&mut problems, "warming up an instance", &errors);
    }
    phase.finish("done");

    let other = Load::new(servers[1].addr(), run_id, plan.pool)?;
    let far = latency(
        &other,
        "through another instance",
        plan,
        progress,
        &mut problems,
    )
    .await;
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::addr).collect();
    let all = Load::spread(&addrs, run_id, plan.pool)?;
    let three = closed(
        &all,
        &format!("spread over {INSTANCES} instances"),
        plan,
        progress,
        &mut problems,
    )
    .await;
    Ok((rows(one, three, near, far), problems))
}

pub(super) async fn closed(
    load: &Load,
    how: &str,
    plan: &Plan,
    progress: &Progress,
    problems: &mut Vec<String>,
) -> ClosedLoop {
    let phase = progress.timed(
        format!("acked sends {how}, concurrency {CONCURRENCY}"),
        plan.warmup + plan.closed,
    );
    let run = load
        .closed_loop(CONCURRENCY, plan.warmup, plan.closed)
        .await;
    phase.finish(&super::table::format_value(
        Some(run.per_second),
        Unit::PerSecond,
    ));
    note(problems, &format!("sends {how}"), &run.errors);
    settle(load, plan, progress, problems).await;
    run
}

pub(super) async fn latency(
    load: &Load,
    how: &str,
    plan: &Plan,
    progress: &Progress,
    problems: &mut Vec<String>,
) -> LatencyRun {
    let phase = progress.timed(format!("send→stored at {RATE}/s, {how}"), plan.open);
    let mut run = load.open_loop(RATE, plan.open).await;
    phase.finish(&format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        run.samples.percentile_ms(50.0),
        run.samples.percentile_ms(99.0)
    ));
    note(problems, &format!("sends {how}"), &run.errors);
    settle(load, plan, progress, problems).await;
    run
}

pub(super) fn note(problems: &mut Vec<String>, what: &str, errors: &Errors) {
    if errors.total() > 0 {
        problems.push(format!("{what}: {}", errors.summary()));
    }
}

async fn settle(load: &Load, plan: &Plan, progress: &Progress, problems: &mut Vec<String>) {
    let phase = progress.counted("wait until every send is stored", 1);
    let (_, settled) = load.settle(plan.settle_limit).await;
    phase.finish(if settled { "done" } else { "gave up" });
    if !settled {
        problems.push(format!(
            "the instances had not stored their backlog within {} s",
            plan.settle_limit.as_secs()
        ));
    }
}

fn rows(one: ClosedLoop, three: ClosedLoop, mut near: LatencyRun, mut far: LatencyRun) -> Vec<Row> {
    let (near_p50, near_p99) = (
        near.samples.percentile_ms(50.0),
        near.samples.percentile_ms(99.0),
    );
    vec![
        Row::new(
            format!("acked sends, 1 instance, concurrency {CONCURRENCY}"),
            one.per_second,
            Unit::PerSecond,
        ),
        Row::new(
            format!("acked sends, {INSTANCES} instances, concurrency {CONCURRENCY}"),
            three.per_second,
            Unit::PerSecond,
        )
        .against("1 instance", one.per_second),
        Row::new(
            format!("send→stored p50 at {RATE}/s, local"),
            near_p50,
            Unit::Millis,
        ),
        Row::new(
            format!("send→stored p99 at {RATE}/s, local"),
            near_p99,
            Unit::Millis,
        ),
        Row::new(
            format!("send→stored p50 at {RATE}/s, cross-instance"),
            far.samples.percentile_ms(50.0),
            Unit::Millis,
        )
        .against("local p50", near_p50)
        .target(Target::ratio_below(2.0)),
        Row::new(
            format!("send→stored p99 at {RATE}/s, cross-instance"),
            far.samples.percentile_ms(99.0),
            Unit::Millis,
        )
        .against("local p99", near_p99),
    ]
}
