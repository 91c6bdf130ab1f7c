//! Writes of many rooms gathered into one: every room's consumer stores its batch of messages
//! (and every creation its small writes) through [`Combiner::write`], and one task writes all the
//! batches waiting at that moment in one ordered client-level `bulkWrite` (MongoDB 8.0+) instead
//! of one command per room.
//!
//! Over many rooms each send is a batch of its own, and a server's cost is per command: on
//! SecantusDB single-document inserts into 10,000 collections run at about 1,000/s, one
//! `bulkWrite` at a time of 32 of them at about 5,000 documents/s. Writing them together is what
//! keeps a send's cost flat as the rooms grow.
//!
//! The write is ordered, so each batch still ends as it would alone: the server stops at the
//! first failed write, everything before it is done and nothing after it. The batch holding the
//! failure hears where it stopped; the batches before it are done; the batches after it were not
//! attempted and go into the next round. A server without `bulkWrite` has each batch written
//! alone, as before.

use std::collections::VecDeque;

use mongodb::action::Action;
use mongodb::bson::Document;
use mongodb::error::ErrorKind;
use mongodb::options::{InsertOneModel, UpdateOneModel, WriteConcern, WriteModel};
use mongodb::{Client, Database, Namespace};
use tokio::sync::{mpsc, oneshot};

use super::{DUPLICATE_KEY, first_duplicate, is_duplicate_key};
use crate::metrics as m;
use crate::store::StoreError;

/// At most this many writes are gathered into one round (the driver further splits a round to
/// the server's message size).
const ROUND_WRITES: usize = 1_000;

/// How a batch ended: `None` when every write was done, `Some(i)` when write `i` met a key
/// stored already (an `_id`, or a unique sequence number): those before it are done, none after.
pub(super) type Stop = Option<usize>;

/// How the rooms' batches are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rooms {
    /// Gathered into rounds (until the server turns a `bulkWrite` down).
    Together,
    /// Each batch alone.
    Alone,
}

/// One batch waiting for a round.
struct Batch {
    writes: Vec<WriteModel>,
    reply: oneshot::Sender<Result<Stop, StoreError>>,
}

/// The handle the store writes through; the task behind it ends when the handle is dropped.
pub(super) struct Combiner {
    batches: mpsc::UnboundedSender<Batch>,
    db: String,
}

impl Combiner {
    /// Starts the task that writes into `db` with `write_concern`.
    pub(super) fn start(db: Database, write_concern: Option<WriteConcern>, rooms: Rooms) -> Self {
        let (batches, waiting) = mpsc::unbounded_channel();
        let name = db.name().to_string();
        let writer = Writer {
            client: db.client().clone(),
            db,
            write_concern,
            alone: rooms == Rooms::Alone,
        };
        tokio::spawn(writer.run(waiting));
        Self { batches, db: name }
    }

    /// An insert of `document` into `collection`.
    pub(super) fn insert(&self, collection: &str, document: Document) -> WriteModel {
        let namespace = Namespace::new(&self.db, collection);
        InsertOneModel::builder()
            .namespace(namespace)
            .document(document)
            .build()
            .into()
    }

    /// An update of the document `filter` matches in `collection`, inserted if there is none.
    pub(super) fn upsert(
        &self,
        collection: &str,
        filter: Document,
        update: Document,
    ) -> WriteModel {
        let namespace = Namespace::new(&self.db, collection);
        UpdateOneModel::builder()
            .namespace(namespace)
            .filter(filter)
            .update(update)
            .upsert(true)
            .build()
            .into()
    }

    /// Does `writes` in order, gathered with the batches of other rooms.
    pub(super) async fn write(&self, writes: Vec<WriteModel>) -> Result<Stop, StoreError> {
        let (reply, written) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the store's writer has stopped".into());
        self.batches
            .send(Batch { writes, reply })
            .map_err(|_| stopped())?;
        written.await.map_err(|_| stopped())?
    }
}

/// How a round ended, as far as the batches in it are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Round {
    /// Every document is stored.
    Stored,
    /// The document at this index of the round failed (`duplicate`: a key stored already).
    FailedAt { index: usize, duplicate: bool },
    /// The round failed as a whole (any prefix of it may be stored).
    Failed,
    /// The server has no client-level `bulkWrite`.
    Unsupported,
}

/// What one batch of a round is told, or that it goes into the next round.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Settled {
    Done(Stop),
    Failed,
    Again,
    /// To be written alone (the server has no `bulkWrite`).
    Alone,
}

/// What a round's outcome means for each of its batches, given their sizes in round order.
fn settle(sizes: &[usize], round: &Round) -> Vec<Settled> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&size| {
            let range = start..start + size;
            start += size;
            match *round {
                Round::Stored => Settled::Done(None),
                Round::Failed => Settled::Failed,
                Round::Unsupported => Settled::Alone,
                Round::FailedAt { index, .. } if index >= range.end => Settled::Done(None),
                Round::FailedAt { index, .. } if index < range.start => Settled::Again,
                Round::FailedAt { index, duplicate } => match duplicate {
                    true => Settled::Done(Some(index - range.start)),
                    false => Settled::Failed,
                },
            }
        })
        .collect()
}

/// The task that writes the rounds, one at a time (one in flight is also what the server does
/// best: on SecantusDB, four concurrent `bulkWrite`s together wrote less than one alone).
struct Writer {
    client: Client,
    db: Database,
    write_concern: Option<WriteConcern>,
    /// The server turned down a `bulkWrite` (before MongoDB 8.0): every batch is written alone.
    alone: bool,
}

impl Writer {
    async fn run(mut self, mut waiting: mpsc::UnboundedReceiver<Batch>) {
        // Batches of an earlier round that were not attempted; they go first.
        let mut again: VecDeque<Batch> = VecDeque::new();
        loop {
            if again.is_empty() {
                match waiting.recv().await {
                    Some(batch) => again.push_back(batch),
                    None => return,
                }
            }
            let mut round: Vec<Batch> = Vec::new();
            let mut writes = 0;
            while writes < ROUND_WRITES {
                let Some(batch) = again.pop_front().or_else(|| waiting.try_recv().ok()) else {
                    break;
                };
                writes += batch.writes.len();
                round.push(batch);
            }
            let sizes: Vec<usize> = round.iter().map(|b| b.writes.len()).collect();
            let (outcome, error) = match self.alone {
                false => self.write(&round).await,
                true => (Round::Unsupported, String::new()),
            };
            if outcome == Round::Unsupported && !self.alone {
                tracing::info!(
                    "the store has no bulkWrite (MongoDB 8.0+): each room written alone"
                );
                self.alone = true;
            }
            let settled = settle(&sizes, &outcome);
            if outcome != Round::Unsupported {
                // Batches sent again in the next round are counted there.
                let written = settled.iter().filter(|s| **s != Settled::Again).count();
                metrics::counter!(m::STORE_ROUNDS).increment(1);
                metrics::counter!(m::STORE_ROUND_BATCHES).increment(written as u64);
            }
            for (batch, settled) in round.into_iter().zip(settled) {
                let answer = match settled {
                    Settled::Done(stop) => Ok(stop),
                    Settled::Failed => Err(StoreError::Unavailable(error.clone())),
                    Settled::Again => {
                        again.push_back(batch);
                        continue;
                    }
                    Settled::Alone => {
                        tokio::spawn(write_alone(self.db.clone(), batch));
                        continue;
                    }
                };
                // A sender that went away (its consumer stopped) needs no answer.
                let _ = batch.reply.send(answer);
            }
        }
    }

    /// Writes one round; its outcome, and the error's text when it failed.
    async fn write(&self, round: &[Batch]) -> (Round, String) {
        let writes = round.iter().flat_map(|batch| batch.writes.iter().cloned());
        let error = match self
            .client
            .bulk_write(writes)
            .ordered(true)
            .optional(self.write_concern.clone(), |w, c| w.write_concern(c))
            .await
        {
            Ok(_) => return (Round::Stored, String::new()),
            Err(e) => e,
        };
        let outcome = match &*error.kind {
            ErrorKind::IncompatibleServer { .. } => Round::Unsupported,
            ErrorKind::BulkWrite(failure)
                if failure.write_concern_errors.is_empty()
                    && std::error::Error::source(&error).is_none() =>
            {
                // Ordered: the server stopped at its one failed write.
                match failure.write_errors.iter().next() {
                    Some((&index, write)) if failure.write_errors.len() == 1 => Round::FailedAt {
                        index,
                        duplicate: write.code == DUPLICATE_KEY,
                    },
                    _ => Round::Failed,
                }
            }
            _ => Round::Failed,
        };
        (outcome, error.to_string())
    }
}

/// Writes one batch without `bulkWrite`: inserts into one collection as one ordered insert, any
/// other batch one write at a time.
async fn write_alone(db: Database, batch: Batch) {
    let _ = batch.reply.send(alone(&db, batch.writes).await);
}

async fn alone(db: &Database, writes: Vec<WriteModel>) -> Result<Stop, StoreError> {
    let inserts: Option<Vec<(Namespace, Document)>> = writes
        .iter()
        .map(|w| match w {
            WriteModel::InsertOne(i) => Some((i.namespace.clone(), i.document.clone())),
            _ => None,
        })
        .collect();
    if let Some(inserts) = inserts.filter(|i| i.iter().all(|(n, _)| *n == i[0].0)) {
        let Some((namespace, _)) = inserts.first() else {
            return Ok(None);
        };
        let collection = db.collection::<Document>(&namespace.coll);
        let documents = inserts.into_iter().map(|(_, d)| d);
        return match collection.insert_many(documents).ordered(true).await {
            Ok(_) => Ok(None),
            Err(e) => first_duplicate(&e).map(Some).ok_or_else(|| e.into()),
        };
    }
    for (index, write) in writes.into_iter().enumerate() {
        let done = match write {
            WriteModel::InsertOne(i) => {
                let collection = db.collection::<Document>(&i.namespace.coll);
                collection.insert_one(i.document).await.map(drop)
            }
            WriteModel::UpdateOne(u) => {
                let collection = db.collection::<Document>(&u.namespace.coll);
                let upsert = u.upsert.unwrap_or(false);
                collection
                    .update_one(u.filter, u.update)
                    .upsert(upsert)
                    .await
                    .map(drop)
            }
            other => {
                let message = format!("no single write for {other:?}");
                return Err(StoreError::Unavailable(message));
            }
        };
        match done {
            Ok(()) => {}
            Err(e) if is_duplicate_key(&e) => return Ok(Some(index)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_round_stores_every_batch() {
        assert_eq!(
            settle(&[2, 1, 3], &Round::Stored),
            vec![Settled::Done(None); 3]
        );
    }

    #[test]
    fn a_failed_write_stops_its_batch_and_sends_the_later_ones_again() {
        // Batches over documents 0-1, 2, 3-5, 6: the write of document 4 failed.
        let sizes = [2, 1, 3, 1];
        let duplicate = Round::FailedAt {
            index: 4,
            duplicate: true,
        };
        assert_eq!(
            settle(&sizes, &duplicate),
            vec![
                Settled::Done(None),
                Settled::Done(None),
                Settled::Done(Some(1)),
                Settled::Again,
            ]
        );
        let other = Round::FailedAt {
            index: 3,
            duplicate: false,
        };
        assert_eq!(
            settle(&sizes, &other),
            vec![
                Settled::Done(None),
                Settled::Done(None),
                Settled::Failed,
                Settled::Again,
            ]
        );
    }

    #[test]
    fn a_failure_at_a_batchs_first_document_stops_it_at_zero() {
        let round = Round::FailedAt {
            index: 2,
            duplicate: true,
        };
        assert_eq!(
            settle(&[2, 2], &round),
            vec![Settled::Done(None), Settled::Done(Some(0)),]
        );
    }

    #[test]
    fn a_round_failed_whole_or_unsupported_says_so_to_every_batch() {
        assert_eq!(settle(&[1, 2], &Round::Failed), vec![Settled::Failed; 2]);
        assert_eq!(
            settle(&[1, 2], &Round::Unsupported),
            vec![Settled::Alone; 2]
        );
    }
}
