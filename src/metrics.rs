//! Prometheus metrics: the names this service records (all `mess_chat_<thing>_<unit>`), and the
//! process-wide recorder whose rendering `GET /metrics` serves.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Sends answered, by `outcome`: stored, accepted, rate_limited (429), refused (other 4xx) or
/// unavailable (503).
pub const SENDS: &str = "mess_chat_sends_total";
/// Sends not stored within the store wait, which got a persistent copy on the broker.
pub const SENDS_KEPT_ON_DISK: &str = "mess_chat_sends_kept_on_disk_total";
/// Time to answer a send, seconds (a stored send includes the store write).
pub const SEND_SECONDS: &str = "mess_chat_send_duration_seconds";
/// Deliveries taken off room queues.
pub const DELIVERIES: &str = "mess_chat_deliveries_total";
/// Deliveries whose message id was already stored (redeliveries, client retries).
pub const REDELIVERIES: &str = "mess_chat_redeliveries_total";
/// Messages written to the store.
pub const STORE_WRITES: &str = "mess_chat_store_writes_total";
/// Messages per store write.
pub const STORE_BATCH_SIZE: &str = "mess_chat_store_batch_size_messages";
/// Combined writes (`bulkWrite` rounds) the MongoDB store made of many rooms' batches.
pub const STORE_ROUNDS: &str = "mess_chat_store_rounds_total";
/// Batches (a room's messages, a creation's writes) written in those rounds: divided by the
/// rounds, how many batches each command carried.
pub const STORE_ROUND_BATCHES: &str = "mess_chat_store_round_batches_total";
/// Failed store operations of the consumers (each is retried).
pub const STORE_ERRORS: &str = "mess_chat_store_errors_total";
/// From `sent_time` to stored, seconds.
pub const SEND_TO_STORED_SECONDS: &str = "mess_chat_send_to_stored_seconds";
/// New connections to the broker after the first.
pub const BROKER_RECONNECTS: &str = "mess_chat_broker_reconnects_total";
/// Room consumers (re)subscribing to their queue.
pub const CONSUMER_STARTS: &str = "mess_chat_consumer_starts_total";
/// Connections answered 503 because the server had its maximum open.
pub const CONNECTIONS_REFUSED: &str = "mess_chat_connections_refused_total";
/// Rooms this instance knows of (a consumer runs, or is being started, for each).
pub const ROOMS_KNOWN: &str = "mess_chat_rooms_known";
/// Rooms whose consumer on this instance is subscribed (active or standing by).
pub const ROOMS_CONSUMING: &str = "mess_chat_rooms_consuming";
/// Rooms this instance numbers and stores: its consumer has stored a batch since it last
/// subscribed, so it is the room's active consumer (single active consumer makes one active).
pub const ROOMS_NUMBERING: &str = "mess_chat_rooms_numbering";
/// Messages held in all rooms' caches together (kept within `--cache-total`).
pub const CACHED_MESSAGES: &str = "mess_chat_cached_messages";
/// Open broker connections.
pub const BROKER_CONNECTIONS: &str = "mess_chat_broker_connections";
/// Broker channels the room consumers share (besides a connection's few channels of its own).
pub const BROKER_CONSUMER_CHANNELS: &str = "mess_chat_broker_consumer_channels";
/// Requests answered 429 by a rate limit (sends, room creations, registrations).
pub const RATE_LIMITED: &str = "mess_chat_rate_limited_total";
/// Room creations refused because the alias owns its quota of rooms.
pub const QUOTA_EXCEEDED: &str = "mess_chat_quota_exceeded_total";
/// Keys (aliases, client addresses) the rate limiters hold after their last clean-up.
pub const RATE_LIMIT_KEYS: &str = "mess_chat_rate_limit_keys";
/// Bytes of memory the allocator has handed out and not had back (jemalloc's own count, read at
/// each scrape).
pub const HEAP_IN_USE: &str = "mess_chat_heap_in_use_bytes";
/// Bytes the allocator holds free for later allocations instead of returning them (set at each
/// scrape): with [`HEAP_IN_USE`], what the process's RSS is made of.
pub const HEAP_FREE: &str = "mess_chat_heap_free_bytes";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 256.0];

/// The process-wide recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(STORE_BATCH_SIZE.into()), BATCH_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// Sets [`HEAP_IN_USE`] and [`HEAP_FREE`] from jemalloc's own statistics (elsewhere they stay
/// absent).
pub fn record_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        // The statistics are a snapshot, refreshed by advancing the epoch.
        if epoch::advance().is_err() {
            return;
        }
        if let (Ok(allocated), Ok(resident)) = (stats::allocated::read(), stats::resident::read()) {
            metrics::gauge!(HEAP_IN_USE).set(allocated as f64);
            metrics::gauge!(HEAP_FREE).set(resident.saturating_sub(allocated) as f64);
        }
    }
}

/// How often the histograms' samples are folded into their buckets. The recorder keeps every
/// sample until then, or until a scrape: a service nobody scraped held 30 MiB of them after two
/// minutes of the rooms bench, and would have grown with every send.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds the histograms' samples into their buckets every `every`, until `shutdown`.
pub async fn keep_up(every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => handle().run_upkeep(),
        }
    }
}

/// The value of the unlabelled metric `name` in a Prometheus text exposition (`/metrics`), if
/// it is there.
pub fn value_in(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_read_by_its_whole_name() {
        let text = "# TYPE mess_chat_rooms_known gauge\nmess_chat_rooms_known_x 3\n\
                    mess_chat_rooms_known 12\nmess_chat_rooms_consuming 11.5\n";
        assert_eq!(value_in(text, "mess_chat_rooms_known"), Some(12.0));
        assert_eq!(value_in(text, "mess_chat_rooms_consuming"), Some(11.5));
        assert_eq!(value_in(text, "mess_chat_rooms"), None);
    }

    /// The process's heap in use, by jemalloc's count.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn allocated() -> i64 {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().unwrap();
        stats::allocated::read().unwrap() as i64
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[tokio::test]
    async fn histogram_samples_are_folded_away_without_a_scrape() {
        handle();
        let before = allocated();
        for i in 0..2_000_000 {
            metrics::histogram!("mess_chat_test_upkeep_seconds").record(f64::from(i));
        }
        let held = allocated() - before;
        assert!(
            held > 10 << 20,
            "two million samples are held: {held} bytes"
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(keep_up(Duration::from_millis(50), shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while allocated() - before > held / 4 {
            // A busy service goes on recording, which is also what lets the recorder free the
            // folded samples' memory (it is reclaimed once no recording thread can still see it).
            for _ in 0..1000 {
                metrics::histogram!("mess_chat_test_upkeep_seconds").record(1.0);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still held: {} bytes",
                allocated() - before
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
    }
}
