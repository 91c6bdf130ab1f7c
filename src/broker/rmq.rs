//! RabbitMQ back end (the seed's `rmq` module): the only module that imports `lapin`.
//!
//! One connection per [`RabbitBroker`], re-established on demand after it breaks (each call that
//! finds it broken reconnects, within [`CONNECT_TIMEOUT`], so a down broker turns into a quick
//! [`BrokerError::Unavailable`] rather than a hang). Publishing uses one channel in confirm mode,
//! shared by every sender, so confirms are pipelined; declares use a second channel; every consumer
//! gets a channel of its own with a prefetch window, and closing it requeues what it had not acked.

pub mod baseline;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};

use super::{
    Acknowledge, Broker, BrokerError, Delivery, DeliveryStream, INBOX_MAX_LENGTH,
    INBOX_MESSAGE_TTL_MS,
};
use crate::model::{Alias, RoomName};

/// How long connecting (or reconnecting) may take before the broker counts as unavailable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a publish may wait for the broker's confirm.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any other broker operation (declare, bind, consume, ack) may take. lapin can leave an
/// operation issued just as the connection dies unanswered forever; this bounds it.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Unacknowledged deliveries a room consumer may hold at once.
pub const PREFETCH: u16 = 256;

/// A RabbitMQ broker reached through one (re-established) AMQP connection.
pub struct RabbitBroker {
    /// The AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    url: String,
    /// The current connection and its shared channels; `None` before the first use. A std mutex:
    /// it is held only to clone or swap the `Arc`, never across an `.await`.
    link: Mutex<Option<Arc<Link>>>,
    /// Serialises reconnects so that many callers finding the link broken connect once.
    connecting: tokio::sync::Mutex<()>,
}

/// A live connection with its two shared channels.
struct Link {
    connection: Connection,
    /// Confirm-mode channel shared by all publishers.
    publisher: Channel,
    /// Channel for declares, binds and deletes.
    admin: Channel,
}

impl Link {
    fn usable(&self) -> bool {
        self.connection.status().connected()
            && self.publisher.status().connected()
            && self.admin.status().connected()
    }
}

impl RabbitBroker {
    /// A broker for `url`; nothing connects until the first call.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Arc<Link>> {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        link.as_ref().filter(|link| link.usable()).cloned()
    }

    /// The usable link, connecting first if there is none.
    async fn link(&self) -> Result<Arc<Link>, BrokerError> {
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let link = tokio::time::timeout(CONNECT_TIMEOUT, connect(&self.url))
            .await
            .map_err(|_| BrokerError::Unavailable("timed out connecting to RabbitMQ".into()))?
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let link = Arc::new(link);
        let old = self
            .link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(link.clone());
        if let Some(old) = old {
            metrics::counter!(crate::metrics::BROKER_RECONNECTS).increment(1);
            tokio::spawn(async move {
                let _ = old.connection.close(200, "reconnected".into()).await;
            });
        }
        tracing::info!("connected to RabbitMQ");
        Ok(link)
    }

    /// Turns a lapin error into ours: a broken connection is `Unavailable`, anything else is the
    /// broker refusing the operation.
    fn error(&self, link: &Link, err: lapin::Error) -> BrokerError {
        if link.connection.status().connected() {
            BrokerError::Refused(err.to_string())
        } else {
            BrokerError::Unavailable(err.to_string())
        }
    }
}

/// Runs a lapin operation within [`OPERATION_TIMEOUT`].
async fn bounded<T>(
    operation: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<lapin::Result<T>, BrokerError> {
    tokio::time::timeout(OPERATION_TIMEOUT, operation)
        .await
        .map_err(|_| BrokerError::Unavailable("RabbitMQ did not answer in time".into()))
}

async fn connect(url: &str) -> lapin::Result<Link> {
    let properties = ConnectionProperties::default().with_connection_name("mess-chat".into());
    let connection = Connection::connect(url, properties).await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let admin = connection.create_channel().await?;
    Ok(Link {
        connection,
        publisher,
        admin,
    })
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn room_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args
}

fn inbox_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(INBOX_MAX_LENGTH),
    );
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(INBOX_MESSAGE_TTL_MS),
    );
    args
}

#[async_trait]
impl Broker for RabbitBroker {
    async fn declare_room(&self, room: &RoomName, group_room: bool) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let ch = &link.admin;
        let name = room.as_str();
        let result = async {
            ch.queue_declare(name.into(), durable(), room_queue_arguments())
                .await?;
            if group_room {
                let options = ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                };
                ch.exchange_declare(
                    name.into(),
                    ExchangeKind::Fanout,
                    options,
                    FieldTable::default(),
                )
                .await?;
                ch.queue_bind(
                    name.into(),
                    name.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            }
            Ok(())
        };
        bounded(result).await?.map_err(|e| self.error(&link, e))
    }

    async fn bind_member(&self, room: &RoomName, alias: &Alias) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let ch = &link.admin;
        let result = async {
            ch.queue_declare(alias.as_str().into(), durable(), inbox_queue_arguments())
                .await?;
            ch.queue_bind(
                alias.as_str().into(),
                room.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        };
        bounded(result).await?.map_err(|e| self.error(&link, e))
    }

    async fn unbind_member(&self, room: &RoomName, alias: &Alias) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let unbind = link.admin.queue_unbind(
            alias.as_str().into(),
            room.as_str().into(),
            "".into(),
            FieldTable::default(),
        );
        bounded(unbind).await?.map_err(|e| self.error(&link, e))
    }

    async fn delete_room(&self, room: &RoomName, group_room: bool) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let ch = &link.admin;
        let result = async {
            ch.queue_delete(room.as_str().into(), QueueDeleteOptions::default())
                .await?;
            if group_room {
                ch.exchange_delete(room.as_str().into(), ExchangeDeleteOptions::default())
                    .await?;
            }
            Ok(())
        };
        bounded(result).await?.map_err(|e| self.error(&link, e))
    }

    async fn delete_inbox(&self, alias: &Alias) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let delete = link
            .admin
            .queue_delete(alias.as_str().into(), QueueDeleteOptions::default());
        bounded(delete)
            .await?
            .map(|_| ())
            .map_err(|e| self.error(&link, e))
    }

    async fn publish(
        &self,
        room: &RoomName,
        group_room: bool,
        body: Vec<u8>,
    ) -> Result<(), BrokerError> {
        let link = self.link().await?;
        // A group room publishes to its exchange; a private room to its queue by name.
        let (exchange, routing_key) = if group_room {
            (room.as_str(), "")
        } else {
            ("", room.as_str())
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmed = async {
            link.publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &body,
                    properties,
                )
                .await?
                .await
        };
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirmed)
            .await
            .map_err(|_| BrokerError::Unavailable("timed out waiting for the confirm".into()))?
            .map_err(|e| self.error(&link, e))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(BrokerError::Unroutable(room.to_string())),
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
            Confirmation::NotRequested => Err(BrokerError::Refused(
                "publisher confirms are off on the publishing channel".into(),
            )),
        }
    }

    async fn consume(&self, room: &RoomName) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        self.consume_queue(room.as_str()).await
    }

    async fn consume_inbox(&self, alias: &Alias) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        self.consume_queue(alias.as_str()).await
    }

    fn durable(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        self.link().await.map(|_| ())
    }
}

impl RabbitBroker {
    /// A consumer of `queue` on a channel of its own, with manual acks and a prefetch window.
    async fn consume_queue(&self, queue: &str) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        let link = self.link().await?;
        let result = async {
            let channel = link.connection.create_channel().await?;
            channel
                .basic_qos(PREFETCH, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok(RabbitDeliveries { consumer, channel })
        };
        match bounded(result).await? {
            Ok(deliveries) => Ok(Box::new(deliveries)),
            Err(e) => Err(self.error(&link, e)),
        }
    }
}

/// A consumer on its own channel; dropping it closes the channel, which requeues unacked messages.
struct RabbitDeliveries {
    consumer: Consumer,
    channel: Channel,
}

#[async_trait]
impl DeliveryStream for RabbitDeliveries {
    fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        let delivery = match self.consumer.next().await? {
            Ok(delivery) => delivery,
            Err(e) => return Some(Err(BrokerError::Unavailable(e.to_string()))),
        };
        let acker = Box::new(RabbitAcker(delivery.acker));
        Some(Ok(Delivery::new(
            delivery.data,
            delivery.redelivered,
            acker,
        )))
    }
}

impl Drop for RabbitDeliveries {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = channel.close(200, "consumer stopped".into()).await;
            });
        }
    }
}

struct RabbitAcker(lapin::Acker);

#[async_trait]
impl Acknowledge for RabbitAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        bounded(self.0.ack(BasicAckOptions::default()))
            .await?
            .map(|_| ())
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    async fn reject(self: Box<Self>) -> Result<(), BrokerError> {
        bounded(self.0.reject(BasicRejectOptions { requeue: false }))
            .await?
            .map(|_| ())
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }
}
