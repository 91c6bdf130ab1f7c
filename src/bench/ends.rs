//! The back ends of one bench run: opened (a temporary directory, or the servers named by
//! `MESS_CHAT_AMQP_URL` / `MESS_CHAT_MONGO_URL` with a database of the run's own), described
//! without credentials, measured raw, and finally emptied of everything the run created: queues,
//! exchanges, the database, the directory.

use std::sync::Arc;

use tempfile::TempDir;

use super::baseline::{self, Baselines};
use super::plan::{Backend, Plan};
use super::progress::Progress;
use super::{AMQP_URL_VAR, BenchError, MONGO_URL_VAR};
use crate::broker::Broker;
use crate::broker::memory::MemoryBroker;
use crate::broker::rmq::RabbitBroker;
use crate::model::{Alias, RoomName};
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;

/// The back ends of one run, with what it takes to measure them raw and to clean them up.
pub enum Ends {
    /// The in-process broker and redb files in a temporary directory.
    Embedded {
        /// Holds the service's store file and the baseline's; removed at the end.
        dir: TempDir,
        /// The service's broker.
        broker: Arc<MemoryBroker>,
        /// The service's store.
        store: Arc<EmbeddedStore>,
        /// A store file of the baselines' own, so they do not touch the service's.
        baseline_store: EmbeddedStore,
    },
    /// RabbitMQ and a MongoDB-protocol server.
    Real {
        /// From `MESS_CHAT_AMQP_URL`.
        amqp_url: String,
        /// From `MESS_CHAT_MONGO_URL`.
        mongo_url: String,
        /// The run's own database, dropped at the end.
        database: String,
        /// The service's broker.
        broker: Arc<RabbitBroker>,
        /// The service's store, in `database`; the baselines' scratch collection is there too.
        store: Arc<MongoStore>,
    },
}

/// The URLs of the real back ends, from the environment, or a message saying what to set.
pub fn real_urls() -> Result<(String, String), BenchError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var(AMQP_URL_VAR), var(MONGO_URL_VAR)) {
        (Some(amqp), Some(mongo)) => Ok((amqp, mongo)),
        (amqp, mongo) => {
            let missing: Vec<&str> = [(AMQP_URL_VAR, amqp), (MONGO_URL_VAR, mongo)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(name, _)| name)
                .collect();
            Err(BenchError::Setup(format!(
                "the real back end needs {} (e.g. eval \"$(scripts/services.sh)\"), or run \
                 with --backend embedded",
                missing.join(" and ")
            )))
        }
    }
}

/// `scheme://user:password@host:port/path?query` → `host:port`, so that a report never shows
/// credentials.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    rest.rsplit_once('@').map_or(rest, |(_, host)| host)
}

impl Ends {
    /// Opens the back ends of `backend` for the run `run_id`; the real ones must answer.
    pub async fn open(backend: Backend, run_id: &str) -> Result<Self, BenchError> {
        match backend {
            Backend::Embedded => {
                let dir = tempfile::Builder::new()
                    .prefix("mess-chat-bench-")
                    .tempdir()?;
                let store = EmbeddedStore::open(&dir.path().join("service"))?;
                let baseline_store = EmbeddedStore::open(&dir.path().join("baseline"))?;
                Ok(Ends::Embedded {
                    dir,
                    broker: Arc::new(MemoryBroker::new()),
                    store: Arc::new(store),
                    baseline_store,
                })
            }
            Backend::Real => {
                let (amqp_url, mongo_url) = real_urls()?;
                let broker = RabbitBroker::new(amqp_url.clone());
                broker.ping().await.map_err(|e| {
                    BenchError::Setup(format!(
                        "cannot reach RabbitMQ at {} ({AMQP_URL_VAR}): {e}",
                        host_of(&amqp_url)
                    ))
                })?;
                let database = run_id.replace('-', "_");
                let store = MongoStore::connect(&mongo_url, &database).await?;
                store.ping().await.map_err(|e| {
                    BenchError::Setup(format!(
                        "cannot reach MongoDB at {} ({MONGO_URL_VAR}): {e}",
                        host_of(&mongo_url)
                    ))
                })?;
                Ok(Ends::Real {
                    amqp_url,
                    mongo_url,
                    database,
                    broker: Arc::new(broker),
                    store: Arc::new(store),
                })
            }
        }
    }

    /// Whether these are the embedded back ends.
    pub fn embedded(&self) -> bool {
        matches!(self, Ends::Embedded { .. })
    }

    /// The broker the service uses.
    pub fn broker(&self) -> Arc<dyn Broker> {
        match self {
            Ends::Embedded { broker, .. } => broker.clone(),
            Ends::Real { broker, .. } => broker.clone(),
        }
    }

    /// The store the service uses.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Ends::Embedded { store, .. } => store.clone(),
            Ends::Real { store, .. } => store.clone(),
        }
    }

    /// What the broker and the store are, for the report (no credentials).
    pub fn describe(&self) -> (String, String) {
        match self {
            Ends::Embedded { dir, .. } => (
                "in-process (MemoryBroker)".into(),
                format!("redb file in {} (removed after)", dir.path().display()),
            ),
            Ends::Real {
                amqp_url,
                mongo_url,
                database,
                ..
            } => (
                format!(
                    "RabbitMQ at {}, publisher confirms; sends transient, persistent once not \
                     stored within the store wait",
                    host_of(amqp_url)
                ),
                format!(
                    "MongoDB protocol at {}, database {database} (dropped after)",
                    host_of(mongo_url)
                ),
            ),
        }
    }

    /// Measures the raw baselines on these back ends.
    pub async fn baselines(
        &self,
        run_id: &str,
        plan: &Plan,
        progress: &Progress,
    ) -> Result<Baselines, BenchError> {
        match self {
            Ends::Embedded { baseline_store, .. } => {
                baseline::embedded(baseline_store, run_id, plan.baseline, progress).await
            }
            Ends::Real {
                amqp_url, store, ..
            } => baseline::real(amqp_url, store, run_id, plan.baseline, progress).await,
        }
    }

    /// Removes what the run created; returns what could not be removed.
    pub async fn clean_up(self, rooms: Vec<(RoomName, bool, Vec<Alias>)>) -> Vec<String> {
        let mut problems = Vec::new();
        match self {
            Ends::Embedded { dir, .. } => {
                let path = dir.path().display().to_string();
                if let Err(e) = dir.close() {
                    problems.push(format!("could not remove {path}: {e}"));
                }
            }
            Ends::Real {
                broker,
                store,
                database,
                ..
            } => {
                let mut failed = 0;
                for (room, group_room, members) in &rooms {
                    failed += usize::from(broker.delete_room(room, *group_room).await.is_err());
                    if *group_room {
                        for alias in members {
                            failed += usize::from(broker.delete_inbox(alias).await.is_err());
                        }
                    }
                }
                if failed > 0 {
                    problems.push(format!("{failed} queues or exchanges could not be deleted"));
                }
                if let Err(e) = store.drop_database().await {
                    problems.push(format!("could not drop database {database}: {e}"));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_show_hosts_without_credentials() {
        assert_eq!(
            host_of("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "127.0.0.1:5672"
        );
        assert_eq!(
            host_of("mongodb://127.0.0.1:27017/?retryWrites=false"),
            "127.0.0.1:27017"
        );
        assert_eq!(host_of("mongodb://u:p@db:1?x=1"), "db:1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
