//! The store baseline of `mess-chat bench` for MongoDB: message documents, in the shape the
//! service writes, inserted straight through the driver into a scratch collection that has the
//! rooms' indexes, with no service in the way. It tells how fast this server stores messages one
//! at a time and in batches, the ceiling for the rooms' consumers.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::Document;

use super::{MongoStore, message_to_doc};
use crate::model::{ChatMessage, RoomName};
use crate::store::StoreError;

/// What one baseline run measured.
#[derive(Debug, Clone)]
pub struct InsertRun {
    /// Documents inserted.
    pub inserted: u64,
    /// From the first insert to the end of the last.
    pub elapsed: Duration,
    /// How long each insert call (one document, or one batch) took.
    pub op_times: Vec<Duration>,
}

/// Inserts messages made by `next` into the collection `scratch` for about `duration`: one
/// `insert_one` awaited at a time when `batch` is 1, else ordered `insert_many` calls of `batch`
/// documents. The caller drops the collection afterwards (`Store::delete_room`).
pub async fn insert_rate<F>(
    store: &MongoStore,
    scratch: &RoomName,
    batch: usize,
    duration: Duration,
    mut next: F,
) -> Result<InsertRun, StoreError>
where
    F: FnMut() -> ChatMessage,
{
    store.ensure_indexes(scratch).await?;
    if batch <= 1 {
        return single_inserts(store, std::slice::from_ref(scratch), duration, |_| next()).await;
    }
    let collection = store.room(scratch);
    let mut op_times = Vec::new();
    let mut inserted = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        let documents: Vec<Document> = (0..batch).map(|_| message_to_doc(&next())).collect();
        let op = Instant::now();
        collection.insert_many(documents).ordered(true).await?;
        op_times.push(op.elapsed());
        inserted += batch as u64;
    }
    Ok(InsertRun {
        inserted,
        elapsed: start.elapsed(),
        op_times,
    })
}

/// Rooms made ready (indexes, first document) at once before a spread run.
const ROOMS_AT_ONCE: usize = 16;

/// Inserts messages made by `next` one at a time, awaited, into the collections of `rooms` in
/// turn, for about `duration`: the server's own cost of many rooms. Every room first gets its
/// indexes and one document, outside the timing (a collection's first insert creates it, as a
/// room's first send is outside the service's timing). The caller drops the rooms afterwards.
pub async fn spread_insert_rate<F>(
    store: &MongoStore,
    rooms: &[RoomName],
    duration: Duration,
    mut next: F,
) -> Result<InsertRun, StoreError>
where
    F: FnMut(&RoomName) -> ChatMessage,
{
    let firsts: Vec<(&RoomName, Document)> = rooms
        .iter()
        .map(|room| (room, message_to_doc(&next(room))))
        .collect();
    futures_util::stream::iter(firsts)
        .map(|(room, document)| async move {
            store.ensure_indexes(room).await?;
            store.room(room).insert_one(document).await?;
            Ok::<_, StoreError>(())
        })
        .buffer_unordered(ROOMS_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    single_inserts(store, rooms, duration, next).await
}

/// `insert_one` calls, each awaited, into the collections of `rooms` in turn, for about
/// `duration`.
async fn single_inserts<F>(
    store: &MongoStore,
    rooms: &[RoomName],
    duration: Duration,
    mut next: F,
) -> Result<InsertRun, StoreError>
where
    F: FnMut(&RoomName) -> ChatMessage,
{
    let mut op_times = Vec::new();
    let mut inserted = 0;
    let start = Instant::now();
    for room in rooms.iter().cycle() {
        if start.elapsed() >= duration {
            break;
        }
        let document = message_to_doc(&next(room));
        let op = Instant::now();
        store.room(room).insert_one(document).await?;
        op_times.push(op.elapsed());
        inserted += 1;
    }
    Ok(InsertRun {
        inserted,
        elapsed: start.elapsed(),
        op_times,
    })
}
