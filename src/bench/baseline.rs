//! The baselines the service is compared to, measured in the same run on the same back ends
//! with the same message: the broker's confirmed publish rate and the store's insert rate, one
//! message at a time and in batches, with no HTTP and no service in the way. The raw RabbitMQ and
//! MongoDB loops live in `broker::rmq::baseline` and `store::mongo::baseline`, the only modules
//! allowed to use those crates; the embedded back ends are driven here through their own types.

use std::time::{Duration, Instant};

use super::BenchError;
use super::load::TEXT;
use super::progress::Progress;
use super::samples::Samples;
use crate::broker::Broker;
use crate::broker::memory::MemoryBroker;
use crate::broker::rmq::baseline::confirmed_publish_rate;
use crate::model::{Alias, ChatMessage, MessageId, MessageProperties, MessageType, RoomName, now};
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;
use crate::store::mongo::baseline::{insert_rate, spread_insert_rate};

/// Confirms kept in flight by the raw publish loop on RabbitMQ.
pub const PUBLISH_WINDOW: usize = 256;
/// Messages per batch of the batched insert baseline.
pub const INSERT_BATCH: usize = 100;
/// The embedded publish loop empties its queue after this many messages (outside the timing),
/// so that the baseline does not fill the process's memory.
const EMBEDDED_QUEUE_REFILL: u64 = 20_000;

/// What the baselines measured.
#[derive(Debug, Clone, Default)]
pub struct Baselines {
    /// Confirmed publishes per second.
    pub publish_per_s: f64,
    /// Inserts per second, one awaited at a time.
    pub insert_single_per_s: f64,
    /// Duration of each single insert.
    pub insert_single: Samples,
    /// Messages inserted per second in batches of [`INSERT_BATCH`].
    pub insert_batch_per_s: f64,
}

/// Names and message shapes of one back end's baseline run.
pub struct Scratch {
    /// The scratch room (queue and collection) the baselines write to.
    pub room: RoomName,
    /// The sender of the scratch messages.
    pub from: Alias,
    /// The last sequence number handed out.
    next_sequence: u64,
}

impl Scratch {
    /// Scratch names for the run `run_id` (a bench name: letters, digits and `-`).
    pub fn new(run_id: &str) -> Result<Self, BenchError> {
        let invalid = |e: crate::model::NameError| BenchError::Setup(e.to_string());
        Ok(Self {
            room: RoomName::new(format!("{run_id}-scratch")).map_err(invalid)?,
            from: Alias::new(format!("{run_id}-ann")).map_err(invalid)?,
            next_sequence: 0,
        })
    }

    /// The broker body of one send, as the service publishes it.
    pub fn publish_body(&self) -> Result<Vec<u8>, BenchError> {
        // Never stored: any id will do.
        let props = MessageProperties::new_sent(
            self.room.clone(),
            self.from.clone(),
            "bob".to_string(),
            MessageId(0),
        );
        serde_json::to_vec(&ChatMessage::new(TEXT.to_string(), props))
            .map_err(|e| BenchError::Setup(e.to_string()))
    }

    /// A new numbered message, as a room's consumer stores it.
    pub fn stored_message(&mut self) -> ChatMessage {
        let room = self.room.clone();
        self.stored_message_in(&room)
    }

    /// A new numbered message of `room`.
    pub fn stored_message_in(&mut self, room: &RoomName) -> ChatMessage {
        self.next_sequence += 1;
        // Unique in its room, which is all a raw insert needs.
        let mut props = MessageProperties::new_sent(
            room.clone(),
            self.from.clone(),
            "bob".to_string(),
            MessageId(self.next_sequence),
        );
        props.mess_type = MessageType::Received;
        props.rec_time = Some(now());
        props.sequence_number = Some(self.next_sequence);
        let mut message = ChatMessage::new(TEXT.to_string(), props);
        message.dirty = false;
        message
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The embedded baselines: `MemoryBroker::publish` (one at a time: it confirms at once) on a
/// broker of its own, and `EmbeddedStore::insert_messages` with 1 and with 100 messages on a
/// store file of its own in the same directory as the service's.
pub async fn embedded(
    store: &EmbeddedStore,
    run_id: &str,
    duration: Duration,
    progress: &Progress,
) -> Result<Baselines, BenchError> {
    let mut scratch = Scratch::new(run_id)?;
    let body = scratch.publish_body()?;
    let broker = MemoryBroker::new();
    let phase = progress.timed("raw MemoryBroker::publish", duration);
    broker.declare_room(&scratch.room, false).await?;
    let (mut published, mut emptying) = (0_u64, Duration::ZERO);
    let start = Instant::now();
    while start.elapsed() - emptying < duration {
        for _ in 0..1000 {
            broker.publish(&scratch.room, body.clone()).await?;
        }
        published += 1000;
        if published.is_multiple_of(EMBEDDED_QUEUE_REFILL) {
            let t = Instant::now();
            broker.delete_room(&scratch.room, false).await?;
            broker.declare_room(&scratch.room, false).await?;
            emptying += t.elapsed();
        }
    }
    let publish_per_s = per_second(published, start.elapsed() - emptying);
    broker.delete_room(&scratch.room, false).await?;
    phase.finish(&rate(publish_per_s));

    let (insert_single_per_s, insert_single) =
        embedded_inserts(store, &mut scratch, 1, duration, progress).await?;
    let (insert_batch_per_s, _) =
        embedded_inserts(store, &mut scratch, INSERT_BATCH, duration, progress).await?;
    store.delete_room(&scratch.room).await?;
    Ok(Baselines {
        publish_per_s,
        insert_single_per_s,
        insert_single,
        insert_batch_per_s,
    })
}

async fn embedded_inserts(
    store: &EmbeddedStore,
    scratch: &mut Scratch,
    batch: usize,
    duration: Duration,
    progress: &Progress,
) -> Result<(f64, Samples), BenchError> {
    let phase = progress.timed(insert_label(batch), duration);
    let mut op_times = Samples::new();
    let mut inserted = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        let messages: Vec<ChatMessage> = (0..batch).map(|_| scratch.stored_message()).collect();
        let op = Instant::now();
        store.insert_messages(&scratch.room, &messages).await?;
        op_times.push(op.elapsed());
        inserted += batch as u64;
    }
    let per_s = per_second(inserted, start.elapsed());
    phase.finish(&rate(per_s));
    Ok((per_s, op_times))
}

/// The real baselines: lapin publishing to a durable queue of the run's own (deleted after),
/// and the `mongodb` driver inserting into a scratch collection of the run's database.
pub async fn real(
    amqp_url: &str,
    store: &MongoStore,
    run_id: &str,
    duration: Duration,
    progress: &Progress,
) -> Result<Baselines, BenchError> {
    let publish_per_s = real_publish(amqp_url, run_id, 1, duration, progress).await?;
    let mut scratch = Scratch::new(run_id)?;
    let single = real_inserts(store, &mut scratch, 1, duration, progress).await;
    let batched = real_inserts(store, &mut scratch, INSERT_BATCH, duration, progress).await;
    store.delete_room(&scratch.room).await?;
    let (insert_single_per_s, insert_single) = single?;
    let (insert_batch_per_s, _) = batched?;
    Ok(Baselines {
        publish_per_s,
        insert_single_per_s,
        insert_single,
        insert_batch_per_s,
    })
}

/// The store's raw single-insert rate on the real back end, alone: what the rooms section sets
/// its creation rate against (a creation is a handful of single-document commands).
pub async fn real_single_insert(
    store: &MongoStore,
    run_id: &str,
    duration: Duration,
    progress: &Progress,
) -> Result<f64, BenchError> {
    let mut scratch = Scratch::new(run_id)?;
    let single = real_inserts(store, &mut scratch, 1, duration, progress).await;
    store.delete_room(&scratch.room).await?;
    Ok(single?.0)
}

/// The raw confirmed publish rate of RabbitMQ, the messages spread one after the other over
/// `queues` new durable queues (declared, given one message each when there are several, and
/// deleted outside the timing, as the rooms' first sends are outside the timing of the sends to
/// them): over one queue the ceiling for acknowledged sends, over many the broker's own cost of
/// many rooms.
pub async fn real_publish(
    amqp_url: &str,
    run_id: &str,
    queues: usize,
    duration: Duration,
    progress: &Progress,
) -> Result<f64, BenchError> {
    let body = Scratch::new(run_id)?.publish_body()?;
    let names: Vec<String> = (0..queues)
        .map(|i| format!("{run_id}-publish{queues}-{i}"))
        .collect();
    let over = if queues == 1 {
        String::new()
    } else {
        format!(" over {queues} queues")
    };
    let phase = progress.timed(
        format!("raw confirmed publish{over}, {PUBLISH_WINDOW} in flight"),
        duration,
    );
    let run = confirmed_publish_rate(amqp_url, &names, &body, PUBLISH_WINDOW, duration).await?;
    let per_s = per_second(run.confirmed, run.elapsed);
    phase.finish(&rate(per_s));
    Ok(per_s)
}

/// The store's raw single-document insert rate with the documents spread, one after the other,
/// over the collections of `rooms` new rooms (each given its indexes and a first document outside
/// the timing), in `store`'s database, which the caller drops afterwards: the store's own cost
/// of many rooms.
pub async fn real_spread_insert(
    store: &MongoStore,
    run_id: &str,
    rooms: usize,
    duration: Duration,
    progress: &Progress,
) -> Result<f64, BenchError> {
    let mut scratch = Scratch::new(run_id)?;
    let names: Vec<RoomName> = (0..rooms)
        // Collections of this call's own: the numbering starts again with each scratch.
        .map(|i| RoomName::new(format!("{run_id}-insert{rooms}-{i}")))
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let phase = progress.timed(
        format!("raw store insert over {rooms} collections, one at a time"),
        duration,
    );
    let run = spread_insert_rate(store, &names, duration, |room| {
        scratch.stored_message_in(room)
    })
    .await?;
    let per_s = per_second(run.inserted, run.elapsed);
    phase.finish(&rate(per_s));
    Ok(per_s)
}

/// Times raw inserts of `batch` messages at a time into the scratch collection, for `duration`.
async fn real_inserts(
    store: &MongoStore,
    scratch: &mut Scratch,
    batch: usize,
    duration: Duration,
    progress: &Progress,
) -> Result<(f64, Samples), BenchError> {
    let phase = progress.timed(insert_label(batch), duration);
    let room = scratch.room.clone();
    let run = insert_rate(store, &room, batch, duration, || scratch.stored_message()).await?;
    let per_s = per_second(run.inserted, run.elapsed);
    phase.finish(&rate(per_s));
    Ok((per_s, Samples::from(run.op_times)))
}

fn insert_label(batch: usize) -> String {
    if batch == 1 {
        "raw store insert, one at a time".into()
    } else {
        format!("raw store insert, batches of {batch}")
    }
}

fn rate(per_s: f64) -> String {
    super::table::format_value(Some(per_s), super::report::Unit::PerSecond)
}
