//! Message writes of many rooms gathered into one: every room's consumer stores its batch through
//! [`Combiner::insert`], and one task writes all the batches waiting at that moment in one
//! ordered client-level `bulkWrite` (MongoDB 8.0+) instead of one `insert` per room.
//!
//! Over many rooms each send is a batch of its own, and a server's cost is per command: on
//! SecantusDB single-document inserts into 10,000 collections run at about 1,000/s, one
//! `bulkWrite` at a time of 32 of them at about 5,000 documents/s (`scripts/store-rooms-ratio.py`).
//! Writing them together is what keeps a send's cost flat as the rooms grow.
//!
//! The write is ordered, so each room's batch still ends as it would alone: the server stops at
//! the first failed document, everything before it is stored and nothing after it. The batch
//! holding the failure hears where it stopped; the batches before it are stored; the batches
//! after it were not attempted and go into the next round.

use std::collections::VecDeque;

use mongodb::action::Action;
use mongodb::bson::Document;
use mongodb::error::ErrorKind;
use mongodb::options::{InsertOneModel, WriteConcern, WriteModel};
use mongodb::{Client, Namespace};
use tokio::sync::{mpsc, oneshot};

use super::DUPLICATE_KEY;
use crate::store::StoreError;

/// At most this many documents are gathered into one round (the driver further splits a round
/// to the server's message size).
const ROUND_DOCUMENTS: usize = 1_000;

/// How one room's batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Written {
    /// Every document is stored.
    All,
    /// The document at this index has a key stored already (its `_id`, or its sequence number):
    /// those before it are stored, none after it.
    DuplicateAt(usize),
    /// The server has no client-level `bulkWrite` (before MongoDB 8.0): nothing was written.
    Unsupported,
}

/// One room's batch waiting for a round.
struct Batch {
    collection: String,
    documents: Vec<Document>,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// The handle the store writes through; the task behind it ends when the handle is dropped.
pub(super) struct Combiner {
    batches: mpsc::UnboundedSender<Batch>,
}

impl Combiner {
    /// Starts the task that writes into database `db` of `client` with `write_concern`.
    pub(super) fn start(client: Client, db: String, write_concern: Option<WriteConcern>) -> Self {
        let (batches, waiting) = mpsc::unbounded_channel();
        let writer = Writer {
            client,
            db,
            write_concern,
        };
        tokio::spawn(writer.run(waiting));
        Self { batches }
    }

    /// Writes `documents` into `collection`, in order, gathered with the batches of other rooms.
    pub(super) async fn insert(
        &self,
        collection: &str,
        documents: Vec<Document>,
    ) -> Result<Written, StoreError> {
        let (reply, written) = oneshot::channel();
        let batch = Batch {
            collection: collection.to_string(),
            documents,
            reply,
        };
        let stopped = || StoreError::Unavailable("the store's writer has stopped".into());
        self.batches.send(batch).map_err(|_| stopped())?;
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
    Written(Written),
    Failed,
    Again,
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
                Round::Stored => Settled::Written(Written::All),
                Round::Failed => Settled::Failed,
                Round::Unsupported => Settled::Written(Written::Unsupported),
                Round::FailedAt { index, .. } if index >= range.end => {
                    Settled::Written(Written::All)
                }
                Round::FailedAt { index, .. } if index < range.start => Settled::Again,
                Round::FailedAt { index, duplicate } => match duplicate {
                    true => Settled::Written(Written::DuplicateAt(index - range.start)),
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
    db: String,
    write_concern: Option<WriteConcern>,
}

impl Writer {
    async fn run(self, mut waiting: mpsc::UnboundedReceiver<Batch>) {
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
            let mut documents = 0;
            while documents < ROUND_DOCUMENTS {
                let Some(batch) = again.pop_front().or_else(|| waiting.try_recv().ok()) else {
                    break;
                };
                documents += batch.documents.len();
                round.push(batch);
            }
            let sizes: Vec<usize> = round.iter().map(|b| b.documents.len()).collect();
            let (outcome, error) = self.write(&round).await;
            for (batch, settled) in round.into_iter().zip(settle(&sizes, &outcome)) {
                let answer = match settled {
                    Settled::Written(written) => Ok(written),
                    Settled::Failed => Err(StoreError::Unavailable(error.clone())),
                    Settled::Again => {
                        again.push_back(batch);
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
        let models = round.iter().flat_map(|batch| {
            let namespace = Namespace::new(&self.db, &batch.collection);
            batch.documents.iter().map(move |document| {
                WriteModel::from(
                    InsertOneModel::builder()
                        .namespace(namespace.clone())
                        .document(document.clone())
                        .build(),
                )
            })
        });
        let error = match self
            .client
            .bulk_write(models)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_round_stores_every_batch() {
        assert_eq!(
            settle(&[2, 1, 3], &Round::Stored),
            vec![Settled::Written(Written::All); 3]
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
                Settled::Written(Written::All),
                Settled::Written(Written::All),
                Settled::Written(Written::DuplicateAt(1)),
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
                Settled::Written(Written::All),
                Settled::Written(Written::All),
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
            vec![
                Settled::Written(Written::All),
                Settled::Written(Written::DuplicateAt(0)),
            ]
        );
    }

    #[test]
    fn a_round_failed_whole_or_unsupported_says_so_to_every_batch() {
        assert_eq!(settle(&[1, 2], &Round::Failed), vec![Settled::Failed; 2]);
        assert_eq!(
            settle(&[1, 2], &Round::Unsupported),
            vec![Settled::Written(Written::Unsupported); 2]
        );
    }
}
