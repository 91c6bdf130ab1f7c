//! One back end's bench, in this process: opens the back ends, starts the service on
//! `127.0.0.1:0`, runs the phases, turns what they measured into rows with the targets,
//! and cleans up whether or not the phases succeeded (Ctrl-C included).
//!
//! The phases, in order: 1000 rooms created by one send each, then the peak RSS (first, so that
//! the other phases' garbage does not count in it); the baselines; closed-loop sends at each
//! concurrency; open-loop sends at each offered rate; history page reads. After each sending
//! phase the bench waits until the service stored everything it accepted.

use std::time::Duration;

use tokio::net::TcpListener;

use super::baseline::{Baselines, INSERT_BATCH, PUBLISH_WINDOW};
use super::ends::Ends;
use super::load::{ClosedLoop, LatencyRun, Load, TEXT};
use super::plan::{Backend, Plan};
use super::progress::Progress;
use super::report::{BackendReport, Row, Target, Unit};
use super::samples::Errors;
use super::{BenchError, rss};
use crate::server::Server;
use crate::service::ServiceConfig;

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
            "private rooms; sends spread over {} rooms; {}-byte texts; open-loop latency runs \
             from each send's scheduled time; the HTTP client runs in this process, sharing its \
             cores and counting in its RSS",
            plan.pool,
            TEXT.len()
        ),
        rows,
        problems: found,
    })
}

/// What the phases measured before they are turned into rows.
struct Measured {
    /// Rooms created before the memory was read.
    rooms: usize,
    /// `VmHWM` after creating them, in KiB.
    peak_rss_kib: Option<u64>,
    /// The raw rates.
    baselines: Baselines,
    /// One run per concurrency.
    closed: Vec<ClosedLoop>,
    /// One run per offered rate, with that rate.
    open: Vec<(f64, LatencyRun)>,
    /// The history reads.
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

    let urls = (0..plan.rooms)
        .map(|k| load.send_url(&format!("{run_id}-m{k:04}")))
        .collect::<Result<Vec<_>, _>>()?;
    let phase = progress.counted(
        format!(
            "create {} rooms, {} at a time",
            plan.rooms, plan.rooms_in_flight
        ),
        plan.rooms as u64,
    );
    let (created, errors) = load
        .send_each(urls, plan.rooms_in_flight, || phase.inc(1))
        .await;
    let peak_rss_kib = rss::read().map(|r| r.peak_kib);
    phase.finish(&format!(
        "{created} created, peak RSS {}",
        peak_rss_kib.map_or("unknown".into(), |k| format!(
            "{:.1} MiB",
            k as f64 / 1024.0
        ))
    ));
    note(&mut problems, "room creation", &errors);

    let baselines = ends.baselines(run_id, plan, progress).await?;

    let phase = progress.counted(format!("create the {} load rooms", load.pool_size()), 1);
    let (_, errors) = load.create_pool().await;
    phase.finish("done");
    note(&mut problems, "load rooms", &errors);

    let mut closed = Vec::new();
    for &concurrency in &plan.concurrencies {
        let phase = progress.timed(
            format!("acked sends, concurrency {concurrency}"),
            plan.warmup + plan.closed,
        );
        let run = load
            .closed_loop(concurrency, plan.warmup, plan.closed)
            .await;
        phase.finish(&super::table::format_value(
            Some(run.per_second),
            Unit::PerSecond,
        ));
        note(
            &mut problems,
            &format!("sends at concurrency {concurrency}"),
            &run.errors,
        );
        closed.push(run);
        settle(
            &load,
            &format!("concurrency {concurrency}"),
            plan,
            progress,
            &mut problems,
        )
        .await;
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
        note(
            &mut problems,
            &format!("sends at {rate}/s offered"),
            &run.errors,
        );
        open.push((rate, run));
        settle(
            &load,
            &format!("{rate}/s offered"),
            plan,
            progress,
            &mut problems,
        )
        .await;
    }

    let phase = progress.timed("history page reads", plan.history);
    let mut history = load.history(plan.history).await;
    phase.finish(&format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        history.samples.percentile_ms(50.0),
        history.samples.percentile_ms(99.0)
    ));
    note(&mut problems, "history reads", &history.errors);

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

/// Adds a phase's failed requests to the problems, if it had any.
fn note(problems: &mut Vec<String>, what: &str, errors: &Errors) {
    if errors.total() > 0 {
        problems.push(format!("{what}: {}", errors.summary()));
    }
}

/// Lets the service store what an earlier phase left queued (sends answered 202 before they
/// were stored), so that the next phase does not pay for it; notes it when that took a while.
async fn settle(
    load: &Load,
    after: &str,
    plan: &Plan,
    progress: &Progress,
    problems: &mut Vec<String>,
) {
    let phase = progress.counted("wait until every send is stored", 1);
    let (took, settled) = load.settle(plan.settle_limit).await;
    phase.finish(if settled { "done" } else { "gave up" });
    if !settled {
        problems.push(format!(
            "after {after}: the service had not stored its backlog within {} s",
            plan.settle_limit.as_secs()
        ));
    } else if took > Duration::from_secs(1) {
        problems.push(format!(
            "after {after}: the service took {:.1} s to store its backlog",
            took.as_secs_f64()
        ));
    }
}

/// The table rows of one back end, with the targets.
fn rows(ends: &Ends, mut m: Measured) -> Vec<Row> {
    let embedded = ends.embedded();
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
    let best = m
        .closed
        .iter()
        .map(|r| r.per_second)
        .fold(f64::NAN, f64::max);
    let mut best = Row::new("acked sends, best concurrency", best, Unit::PerSecond)
        .against("insert ×100", b.insert_batch_per_s);
    if embedded {
        best = best.target(Target::at_least(20_000.0));
    }
    rows.push(best);
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
