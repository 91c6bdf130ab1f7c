//! Start-up and shutdown: picks the back ends from the configuration (once), starts the
//! service, serves HTTP ([`http`], with [`plain_errors`] rewriting hyper's own error answers),
//! and stops in order: HTTP first (in-flight sends finish), then the room consumers (each
//! finishes the delivery it holds).

pub mod http;
mod plain_errors;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::broker::memory::MemoryBroker;
use crate::broker::rmq::RabbitBroker;
use crate::broker::{Broker, QueueType};
use crate::service::{ChatError, ChatService, ServiceConfig};
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;
use crate::store::{Store, StoreError};

pub use http::HttpLimits;

/// Everything `mess-chat serve` can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen for HTTP.
    pub listen: SocketAddr,
    /// RabbitMQ URL, or several nodes' URLs separated by commas; `None` runs the embedded
    /// in-process broker.
    pub amqp_url: Option<String>,
    /// The type of the queues declared on RabbitMQ.
    pub queue_type: QueueType,
    /// MongoDB URL; `None` runs the embedded on-disk store.
    pub mongo_url: Option<String>,
    /// MongoDB database name.
    pub mongo_db: String,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Dev mode: the assignment-style endpoints are open (the only mode until auth exists).
    pub no_auth: bool,
    /// Service tunables.
    pub service: ServiceConfig,
    /// What one HTTP connection may take.
    pub http: HttpLimits,
}

/// What can stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service could not restore its rooms.
    #[error(transparent)]
    Service(#[from] ChatError),
    /// The listen address could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// The broker the configuration names.
pub fn broker(config: &Config) -> Arc<dyn Broker> {
    match &config.amqp_url {
        Some(urls) => Arc::new(RabbitBroker::new(urls).with_queue_type(config.queue_type)),
        None => Arc::new(MemoryBroker::new()),
    }
}

/// The store the configuration names.
pub async fn store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.mongo_url {
        Some(url) => Arc::new(MongoStore::connect(url, &config.mongo_db).await?),
        None => Arc::new(EmbeddedStore::open(&config.data_dir)?),
    })
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    service: ChatService,
    stop_http: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Builds the back ends from `config`, binds `config.listen` and starts serving.
    pub async fn start(config: &Config) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(config.listen).await?;
        let store = store(config).await?;
        let service = ChatService::start(broker(config), store, config.service.clone()).await?;
        Self::serve(listener, service, config.http.clone())
    }

    /// Starts serving on `listener` with the given back ends and the default HTTP limits.
    pub async fn start_with(
        listener: TcpListener,
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        service_config: ServiceConfig,
    ) -> Result<Self, ServerError> {
        let service = ChatService::start(broker, store, service_config).await?;
        Self::serve(listener, service, HttpLimits::default())
    }

    /// Serves a started service on `listener`.
    pub fn serve(
        listener: TcpListener,
        service: ChatService,
        limits: HttpLimits,
    ) -> Result<Self, ServerError> {
        let addr = listener.local_addr()?;
        crate::metrics::handle();
        let stop_http = CancellationToken::new();
        let app = api::app(service.clone());
        let http = tokio::spawn(http::serve(listener, app, limits, stop_http.clone()));
        tracing::info!(%addr, "listening");
        Ok(Self {
            addr,
            service,
            stop_http,
            http,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service behind the HTTP layer.
    pub fn service(&self) -> &ChatService {
        &self.service
    }

    /// Stops gracefully: no new requests, in-flight ones finish, then the consumers stop.
    pub async fn stop(self) -> std::io::Result<()> {
        self.stop_http.cancel();
        let served = self.http.await.map_err(std::io::Error::other)?;
        self.service.shutdown().await;
        served
    }
}
