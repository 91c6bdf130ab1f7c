//! The HTTP load the bench puts on the service, through `reqwest` on loopback: closed-loop sends
//! at a fixed concurrency, open-loop sends at a fixed offered rate (latency measured from each
//! send's scheduled time, so a slow answer cannot hold back the next send), history page reads,
//! and a burst of room creations. Only 2xx answers count as acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Url;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::BenchError;
use super::samples::{Errors, Samples};

/// The text of every bench message: 64 bytes, nothing to percent-encode.
pub const TEXT: &str = "bench-message-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
/// Most sends of an open-loop run in flight at once (each holds a connection); later sends
/// wait for a slot, and that wait counts in their latency.
pub const MAX_IN_FLIGHT: usize = 512;
/// Messages a history read asks for.
pub const HISTORY_LIMIT: usize = 100;
/// What an answer 202 is counted as: acknowledged, but not stored within the service's wait.
pub const ACCEPTED: &str = "202 accepted (not stored within the service's wait)";

/// A load generator for one running server.
pub struct Load {
    /// One client for every request, so that connections are pooled and kept alive.
    client: reqwest::Client,
    /// Base URL of the server, e.g. `http://127.0.0.1:40123`.
    base: String,
    /// Sender and recipient alias of every bench room (private rooms).
    aliases: (String, String),
    /// The `/send/` URL of each room of the pool through each instance; worker `i` sends to
    /// `sends[i % len]`.
    sends: Vec<Url>,
    /// Rooms in the pool.
    pool: usize,
    /// The history read of the pool's first room.
    history: Url,
}

/// What a closed-loop run measured.
#[derive(Debug, Clone)]
pub struct ClosedLoop {
    /// Senders, each sending its next message once the last one was answered.
    pub concurrency: usize,
    /// Sends answered 2xx within the measured window (after the warm-up).
    pub acked: u64,
    /// Acknowledged sends per second over the measured window.
    pub per_second: f64,
    /// Failed requests (and 202s), warm-up included.
    pub errors: Errors,
}

/// What a latency run measured.
#[derive(Debug, Clone, Default)]
pub struct LatencyRun {
    /// Requests made.
    pub requests: u64,
    /// Latency of each 2xx answer.
    pub samples: Samples,
    /// Failed requests (and 202s).
    pub errors: Errors,
}

impl Load {
    /// A generator for the server at `addr`, with a pool of `pool` private rooms named after
    /// `run_id` (rooms `<run_id>-r00`.., between aliases `<run_id>-ann` and `<run_id>-bob`).
    pub fn new(addr: std::net::SocketAddr, run_id: &str, pool: usize) -> Result<Self, BenchError> {
        Self::spread(&[addr], run_id, pool)
    }

    /// A generator whose sends go through all of `addrs` (instances of one deployment) in turn:
    /// send `i` goes to room `i % pool` through instance `i % addrs.len()`. Reads and room
    /// creation go through the first.
    pub fn spread(
        addrs: &[std::net::SocketAddr],
        run_id: &str,
        pool: usize,
    ) -> Result<Self, BenchError> {
        let client = crate::client::http_builder()
            .no_proxy()
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .timeout(Duration::from_secs(30))
            .build()?;
        let bases: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        let base = bases
            .first()
            .cloned()
            .ok_or_else(|| BenchError::Setup("no instance to send to".into()))?;
        let aliases = (format!("{run_id}-ann"), format!("{run_id}-bob"));
        let pool = pool.max(1);
        // Every (room, instance) pair, when the counts are coprime; enough of them otherwise.
        let sends = (0..pool * bases.len())
            .map(|i| {
                let room = format!("{run_id}-r{:02}", i % pool);
                send_url(&bases[i % bases.len()], &aliases, &room)
            })
            .collect::<Result<_, _>>()?;
        let history = parse_url(format!(
            "{base}/messages/?room_name={run_id}-r00&limit={HISTORY_LIMIT}"
        ))?;
        Ok(Self {
            client,
            base,
            aliases,
            sends,
            pool,
            history,
        })
    }

    /// The `/send/` URL of one bench message to `room` (a name of the bench's own alphabet).
    pub fn send_url(&self, room: &str) -> Result<Url, BenchError> {
        send_url(&self.base, &self.aliases, room)
    }

    /// How many rooms the pool has.
    pub fn pool_size(&self) -> usize {
        self.pool
    }

    /// Sends one message to each of `urls` (the first send creates the room), with at most
    /// `in_flight` at once; calls `done` after each. Returns the 2xx count and the failures.
    pub async fn send_each(
        &self,
        urls: Vec<Url>,
        in_flight: usize,
        done: impl Fn(),
    ) -> (u64, Errors) {
        let mut answers = futures_util::stream::iter(urls)
            .map(|url| {
                let client = self.client.clone();
                async move { request(&client, &url).await }
            })
            .buffer_unordered(in_flight.max(1));
        let (mut acked, mut errors) = (0, Errors::default());
        while let Some(answer) = answers.next().await {
            tally(answer, &mut acked, &mut errors);
            done();
        }
        (acked, errors)
    }

    /// Creates the pool's rooms (one send each, one at a time).
    pub async fn create_pool(&self) -> (u64, Errors) {
        self.send_each(self.sends[..self.pool].to_vec(), 1, || {})
            .await
    }

    /// Waits until every pool room has stored all it was sent: a send answered 200 was stored,
    /// and so was everything sent to its room before it (a room's queue is FIFO). Sends one
    /// probe per room, again and again until it is answered 200 or `limit` passed. Returns how
    /// long that took and whether every room caught up.
    pub async fn settle(&self, limit: Duration) -> (Duration, bool) {
        let start = Instant::now();
        let probes = self.sends.iter().map(|url| async move {
            while start.elapsed() < limit {
                if let Ok(true) = request(&self.client, url).await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        });
        let settled = futures_util::future::join_all(probes).await;
        (start.elapsed(), settled.iter().all(|s| *s))
    }

    /// `concurrency` senders, each sending as soon as its last send was answered, spread over
    /// the pool; counts the sends answered between `warmup` and `warmup + duration`.
    pub async fn closed_loop(
        &self,
        concurrency: usize,
        warmup: Duration,
        duration: Duration,
    ) -> ClosedLoop {
        let from = Instant::now() + warmup;
        let until = from + duration;
        let mut workers = JoinSet::new();
        for worker in 0..concurrency {
            let client = self.client.clone();
            let url = self.sends[worker % self.sends.len()].clone();
            workers.spawn(async move {
                let (mut acked, mut errors) = (0, Errors::default());
                while Instant::now() < until {
                    let answer = request(&client, &url).await;
                    let done = Instant::now();
                    let mut counted = 0;
                    tally(answer, &mut counted, &mut errors);
                    if done >= from && done < until {
                        acked += counted;
                    }
                }
                (acked, errors)
            });
        }
        let (mut acked, mut errors) = (0, Errors::default());
        while let Some(joined) = workers.join_next().await {
            match joined {
                Ok((a, e)) => {
                    acked += a;
                    errors.merge(e);
                }
                Err(e) => errors.record(format!("sender task failed: {e}")),
            }
        }
        ClosedLoop {
            concurrency,
            acked,
            per_second: acked as f64 / duration.as_secs_f64(),
            errors,
        }
    }

    /// Sends at `rate` per second for `duration`, each at its scheduled time whatever the
    /// answers to earlier ones, spread over the pool; the latency of each runs from its
    /// scheduled time to its answer.
    pub async fn open_loop(&self, rate: f64, duration: Duration) -> LatencyRun {
        let count = (rate * duration.as_secs_f64()).round() as u64;
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let start = tokio::time::Instant::now() + Duration::from_millis(10);
        let mut run = LatencyRun {
            requests: count,
            ..LatencyRun::default()
        };
        let mut sends = JoinSet::new();
        for i in 0..count {
            let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(scheduled).await;
            let client = self.client.clone();
            let url = self.sends[i as usize % self.sends.len()].clone();
            let slots = slots.clone();
            sends.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let answer = request(&client, &url).await;
                (scheduled.elapsed(), answer)
            });
            while let Some(joined) = sends.try_join_next() {
                record(joined, &mut run);
            }
        }
        while let Some(joined) = sends.join_next().await {
            record(joined, &mut run);
        }
        run
    }

    /// Reads the first pool room's newest [`HISTORY_LIMIT`] messages, one read at a time, for
    /// `duration`.
    pub async fn history(&self, duration: Duration) -> LatencyRun {
        let until = Instant::now() + duration;
        let mut run = LatencyRun::default();
        while Instant::now() < until {
            let began = Instant::now();
            let answer = request(&self.client, &self.history).await;
            run.requests += 1;
            let mut ok = 0;
            tally(answer, &mut ok, &mut run.errors);
            if ok == 1 {
                run.samples.push(began.elapsed());
            }
        }
        run
    }
}

fn send_url(base: &str, (from, to): &(String, String), room: &str) -> Result<Url, BenchError> {
    parse_url(format!(
        "{base}/send/?room_name={room}&message={TEXT}&from_alias={from}&to_alias={to}"
    ))
}

fn parse_url(url: String) -> Result<Url, BenchError> {
    Url::parse(&url).map_err(|e| BenchError::Setup(format!("bad URL {url}: {e}")))
}

/// Counts an answer: 2xx adds to `acked` (a 202 is also noted); anything else is an error.
fn tally(answer: Result<bool, String>, acked: &mut u64, errors: &mut Errors) {
    match answer {
        Ok(stored) => {
            *acked += 1;
            if !stored {
                errors.record(ACCEPTED);
            }
        }
        Err(kind) => errors.record(kind),
    }
}

fn record(
    joined: Result<(Duration, Result<bool, String>), tokio::task::JoinError>,
    run: &mut LatencyRun,
) {
    match joined {
        Ok((latency, answer)) => {
            let mut ok = 0;
            tally(answer, &mut ok, &mut run.errors);
            if ok == 1 {
                run.samples.push(latency);
            }
        }
        Err(e) => run.errors.record(format!("send task failed: {e}")),
    }
}

/// One GET, its body read to the end. `Ok(true)` for 200, `Ok(false)` for another 2xx, else the
/// kind of failure: the status with the error code of its JSON body, or the transport error.
async fn request(client: &reqwest::Client, url: &Url) -> Result<bool, String> {
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| transport(&e))?;
    let status = response.status();
    if status.is_success() {
        response.bytes().await.map_err(|e| transport(&e))?;
        return Ok(status == reqwest::StatusCode::OK);
    }
    let body: Option<serde_json::Value> = response.json().await.ok();
    let code = body
        .as_ref()
        .and_then(|b| b["error"]["code"].as_str())
        .unwrap_or("");
    Err(format!("{} {code}", status.as_u16()).trim_end().to_string())
}

fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect error".into()
    } else {
        "transport error".into()
    }
}
