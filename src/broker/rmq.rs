//! RabbitMQ back end (the seed's `rmq` module): the only module that imports `lapin`.
//!
//! One connection per [`RabbitBroker`], re-established on demand after it breaks (each call that
//! finds it broken reconnects, within [`CONNECT_TIMEOUT`] per node, so a down broker turns into a
//! quick [`BrokerError::Unavailable`] rather than a hang). Given the URLs of several nodes of one
//! cluster, it connects to the one that answered last, else to the next that answers. Three
//! shared channels, each re-opened on the same connection when the broker closed it (a refused
//! declare closes its channel, and must not take anything else down):
//! - `sends`: confirm mode, every room send (through the default exchange, so a missing room
//!   exchange can never close it);
//! - `notices`: confirm mode, cluster events and the fan-out of stored messages to inboxes;
//! - `admin`: declares, binds and deletes, on [`ADMIN_CHANNELS`] channels taken in turn (the
//!   broker handles a channel's operations one at a time, declaring a durable queue takes it a
//!   few milliseconds, and an instance starting with 10,000 rooms declares each room's topology
//!   again).
//!
//! Room consumers share channels, each with a prefetch window of its own ([`consumers`]); the
//! cluster events' consumer has a channel of its own (its queue is exclusive to it).

pub mod baseline;
mod consumers;
pub mod legacy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicRejectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use tokio_util::sync::CancellationToken;

use self::consumers::{ConsumerChannels, Seat, open_channel};
use super::{
    Acknowledge, Broker, BrokerError, Delivery, DeliveryStream, EVENTS_EXCHANGE, EVENTS_MAX_LENGTH,
    INBOX_MAX_LENGTH, INBOX_MESSAGE_TTL_MS, QueueType, inbox_queue,
};
use crate::config::redacted;
use crate::model::{Alias, RoomName};

/// How long connecting (or reconnecting) to one node may take before it counts as unavailable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a publish may wait for the broker's confirm.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any other broker operation (declare, bind, consume, ack) may take. lapin can leave an
/// operation issued just as the connection dies unanswered forever; this bounds it.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Unacknowledged deliveries a room consumer may hold at once.
pub const PREFETCH: u16 = 256;
/// Channels for declares, binds and deletes.
pub const ADMIN_CHANNELS: usize = 16;
/// AMQP's reply code for a declare that contradicts what exists.
const PRECONDITION_FAILED: u16 = 406;

/// A RabbitMQ broker (one node, or a cluster) reached through one (re-established) AMQP
/// connection.
pub struct RabbitBroker {
    /// The AMQP URLs of the nodes, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    urls: Vec<String>,
    /// The node to try first: the one connected to last.
    preferred: std::sync::atomic::AtomicUsize,
    /// The type of the queues it declares.
    queue_type: QueueType,
    /// The current connection and its shared channels; `None` before the first use. A std mutex:
    /// it is held only to clone or swap the `Arc`, never across an `.await`.
    link: Mutex<Option<Arc<Link>>>,
    /// Serialises reconnects so that many callers finding the link broken connect once.
    connecting: tokio::sync::Mutex<()>,
}

/// AMQP's delivery mode: whether a queue writes a message to disk before confirming it.
#[derive(Debug, Clone, Copy)]
enum DeliveryMode {
    /// Kept in memory only (lost if the broker restarts).
    Transient = 1,
    /// Written to disk on a durable queue (survives a restart).
    Persistent = 2,
}

/// Which shared channel an operation uses.
#[derive(Debug, Clone, Copy)]
enum Role {
    Sends,
    Notices,
    Admin,
}

/// A live connection with its shared channels.
struct Link {
    connection: Connection,
    sends: Slot,
    notices: Slot,
    admin: Vec<Slot>,
    /// The admin channel to use next.
    next_admin: std::sync::atomic::AtomicUsize,
    /// The channels room consumers share.
    consumers: ConsumerChannels,
}

/// One shared channel, re-opened when the broker closed it. A std mutex: held only to clone or
/// swap the channel.
struct Slot {
    channel: Mutex<Option<Channel>>,
    /// Publisher confirms on this channel.
    confirms: bool,
}

impl Slot {
    fn new(channel: Channel, confirms: bool) -> Self {
        Self {
            channel: Mutex::new(Some(channel)),
            confirms,
        }
    }

    fn open(&self) -> Option<Channel> {
        let channel = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        channel.as_ref().filter(|c| c.status().connected()).cloned()
    }
}

impl Link {
    fn slot(&self, role: Role) -> &Slot {
        match role {
            Role::Sends => &self.sends,
            Role::Notices => &self.notices,
            Role::Admin => {
                let next = self
                    .next_admin
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                &self.admin[next % self.admin.len()]
            }
        }
    }

    /// Forgets `channel` if `role`'s slot still holds it, and closes it, so that the role's next
    /// operation opens a fresh one. After a negative confirm: a channel that first published to a
    /// quorum queue after that queue's leader died kept having every publish nacked for as long
    /// as we watched (20 s, RabbitMQ 3.10), while a fresh channel's publish was confirmed.
    fn discard(&self, role: Role, channel: &Channel) {
        let slot = self.slot(role);
        let mut held = slot.channel.lock().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_some_and(|c| c.id() == channel.id()) {
            *held = None;
            let channel = channel.clone();
            tokio::spawn(async move {
                let _ = channel.close(200, "publish nacked".into()).await;
            });
        }
    }

    /// The role's channel, opened again on this connection if the broker had closed it.
    async fn channel(&self, role: Role) -> lapin::Result<Channel> {
        let slot = self.slot(role);
        if let Some(channel) = slot.open() {
            return Ok(channel);
        }
        let channel = open_channel(&self.connection, slot.confirms).await?;
        tracing::debug!(?role, "re-opened a broker channel");
        *slot.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(channel.clone());
        Ok(channel)
    }
}

impl RabbitBroker {
    /// A broker at `urls`: one AMQP URL, or several nodes' URLs separated by commas (see
    /// [`node_urls`]); nothing connects until the first call. Its queues are classic.
    pub fn new(urls: impl AsRef<str>) -> Self {
        Self {
            urls: node_urls(urls.as_ref()),
            preferred: std::sync::atomic::AtomicUsize::new(0),
            queue_type: QueueType::Classic,
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The same broker, declaring queues of `queue_type`.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Connects to the first node that answers, starting with the one that answered last.
    async fn connect_any(&self) -> Result<Link, BrokerError> {
        use std::sync::atomic::Ordering::Relaxed;
        let first = self.preferred.load(Relaxed);
        let (at, link) =
            first_node(&self.urls, first, |url| async move { connect(&url).await }).await?;
        self.preferred.store(at, Relaxed);
        Ok(link)
    }

    fn current(&self) -> Option<Arc<Link>> {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        link.as_ref()
            .filter(|link| link.connection.status().connected())
            .cloned()
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
        let link = Arc::new(self.connect_any().await?);
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
        Ok(link)
    }

    /// The link and one of its shared channels, within [`OPERATION_TIMEOUT`].
    async fn channel(&self, role: Role) -> Result<(Arc<Link>, Channel), BrokerError> {
        let link = self.link().await?;
        let channel = bounded(link.channel(role))
            .await?
            .map_err(|e| self.error(&link, e))?;
        Ok((link, channel))
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

    /// Runs an operation on the queues or exchanges named `name` on the admin channel, within
    /// [`OPERATION_TIMEOUT`]. A declare the broker refuses because `name` exists with other
    /// settings is a [`BrokerError::Clash`] (the broker closed the channel; the next operation
    /// opens it again).
    async fn admin<T, F, Fut>(&self, name: &str, operation: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = lapin::Result<T>>,
    {
        let (link, channel) = self.channel(Role::Admin).await?;
        bounded(operation(channel))
            .await?
            .map_err(|e| match e.kind() {
                lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == PRECONDITION_FAILED => {
                    let detail = amqp.get_message().to_string();
                    if detail.contains("x-queue-type") {
                        BrokerError::QueueType {
                            name: name.to_string(),
                            configured: self.queue_type,
                            detail,
                        }
                    } else {
                        BrokerError::Clash {
                            name: name.to_string(),
                            detail,
                        }
                    }
                }
                _ => self.error(&link, e),
            })
    }

    /// Runs an idempotent operation (a delete) again, on a new connection, if the connection went
    /// down under it. Deleting a quorum queue while a consumer of it is being cancelled makes
    /// RabbitMQ 3.10 answer the cancel twice (`rabbit_quorum_queue:cancel` sends the cancel-ok
    /// before the queue's exit turns into a second one), and lapin closes the whole connection
    /// on the unexpected frame; the delete that caused it must not be lost to it.
    async fn once_more_if_cut_off<F, Fut>(&self, operation: F) -> Result<(), BrokerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), BrokerError>>,
    {
        match operation().await {
            Err(BrokerError::Unavailable(e)) => {
                tracing::debug!(error = %e, "the connection went down under a delete: once more");
                operation().await
            }
            done => done,
        }
    }

    /// Publishes a send to the room's own queue (through the default exchange, mandatory: see
    /// the module's notes) and waits for the confirm.
    async fn publish_to_room(
        &self,
        room: &RoomName,
        body: Vec<u8>,
        mode: DeliveryMode,
    ) -> Result<(), BrokerError> {
        self.publish_confirmed(Role::Sends, "", room.as_str(), true, mode, vec![body])
            .await
    }

    /// Publishes messages on a confirm channel and waits for every confirm. With `mandatory`, a
    /// message the broker could not route to any queue is [`BrokerError::Unroutable`].
    async fn publish_confirmed(
        &self,
        role: Role,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        mode: DeliveryMode,
        bodies: Vec<Vec<u8>>,
    ) -> Result<(), BrokerError> {
        let (link, channel) = self.channel(role).await?;
        let properties = BasicProperties::default()
            .with_delivery_mode(mode as u8)
            .with_content_type("application/json".into());
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let confirmed = async {
            let mut pending = Vec::with_capacity(bodies.len());
            for body in &bodies {
                pending.push(
                    channel
                        .basic_publish(
                            exchange.into(),
                            routing_key.into(),
                            options,
                            body,
                            properties.clone(),
                        )
                        .await?,
                );
            }
            let mut confirmations = Vec::with_capacity(pending.len());
            for confirm in pending {
                confirmations.push(confirm.await?);
            }
            Ok::<_, lapin::Error>(confirmations)
        };
        let confirmations = tokio::time::timeout(CONFIRM_TIMEOUT, confirmed)
            .await
            .map_err(|_| BrokerError::Unavailable("timed out waiting for the confirm".into()))?
            .map_err(|e| self.error(&link, e))?;
        for confirmation in confirmations {
            match confirmation {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_returned)) => {
                    return Err(BrokerError::Unroutable(routing_key.to_string()));
                }
                Confirmation::Nack(_) => {
                    link.discard(role, &channel);
                    return Err(BrokerError::Nacked);
                }
                Confirmation::NotRequested => {
                    return Err(BrokerError::Refused(
                        "publisher confirms are off on the publishing channel".into(),
                    ));
                }
            }
        }
        Ok(())
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
    let admin = open_channel(&connection, false).await?;
    admin
        .exchange_declare(
            EVENTS_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    let mut admins = vec![Slot::new(admin, false)];
    while admins.len() < ADMIN_CHANNELS {
        admins.push(Slot::new(open_channel(&connection, false).await?, false));
    }
    let sends = open_channel(&connection, true).await?;
    let notices = open_channel(&connection, true).await?;
    let consumers = ConsumerChannels::default();
    tokio::spawn(consumers.watch(connection.status().clone()));
    Ok(Link {
        connection,
        sends: Slot::new(sends, true),
        notices: Slot::new(notices, true),
        admin: admins,
        next_admin: std::sync::atomic::AtomicUsize::new(0),
        consumers,
    })
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// The arguments every room and inbox queue is declared with. A classic queue is declared
/// without `x-queue-type`, as the queues of earlier versions were (the broker takes it as
/// classic, and refuses it for a quorum queue of that name).
fn queue_arguments(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(queue_type.as_str().into()),
        );
    }
    args
}

/// A room's queue: one active consumer at a time, so one instance numbers the room.
fn room_queue_arguments(queue_type: QueueType) -> FieldTable {
    let mut args = queue_arguments(queue_type);
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args
}

/// A member's inbox: bounded in length and in age (quorum queues keep both since RabbitMQ 3.10).
fn inbox_queue_arguments(queue_type: QueueType) -> FieldTable {
    let mut args = queue_arguments(queue_type);
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
        let name = room.as_str();
        let queue_type = self.queue_type;
        self.admin(name, |ch| async move {
            ch.queue_declare(name.into(), durable(), room_queue_arguments(queue_type))
                .await?;
            if group_room {
                ch.exchange_declare(
                    name.into(),
                    ExchangeKind::Fanout,
                    durable_exchange(),
                    FieldTable::default(),
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    async fn bind_member(&self, room: &RoomName, alias: &Alias) -> Result<(), BrokerError> {
        let inbox = inbox_queue(alias);
        let queue_type = self.queue_type;
        self.admin(&inbox.clone(), |ch| async move {
            let args = inbox_queue_arguments(queue_type);
            ch.queue_declare(inbox.as_str().into(), durable(), args)
                .await?;
            ch.queue_bind(
                inbox.as_str().into(),
                room.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        })
        .await
    }

    async fn unbind_member(&self, room: &RoomName, alias: &Alias) -> Result<(), BrokerError> {
        let inbox = inbox_queue(alias);
        self.admin(&inbox.clone(), |ch| async move {
            ch.queue_unbind(
                inbox.as_str().into(),
                room.as_str().into(),
                "".into(),
                FieldTable::default(),
            )
            .await
        })
        .await
    }

    async fn delete_room(&self, room: &RoomName, group_room: bool) -> Result<(), BrokerError> {
        self.once_more_if_cut_off(|| {
            self.admin(room.as_str(), |ch| async move {
                ch.queue_delete(room.as_str().into(), QueueDeleteOptions::default())
                    .await?;
                if group_room {
                    ch.exchange_delete(room.as_str().into(), ExchangeDeleteOptions::default())
                        .await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn delete_inbox(&self, alias: &Alias) -> Result<(), BrokerError> {
        let inbox = inbox_queue(alias);
        let inbox = inbox.as_str();
        self.once_more_if_cut_off(|| {
            self.admin(inbox, |ch| async move {
                ch.queue_delete(inbox.into(), QueueDeleteOptions::default())
                    .await
                    .map(|_| ())
            })
        })
        .await
    }

    async fn publish(&self, room: &RoomName, body: Vec<u8>) -> Result<(), BrokerError> {
        self.publish_to_room(room, body, DeliveryMode::Persistent)
            .await
    }

    async fn publish_in_memory(&self, room: &RoomName, body: Vec<u8>) -> Result<(), BrokerError> {
        self.publish_to_room(room, body, DeliveryMode::Transient)
            .await
    }

    async fn fan_out(&self, room: &RoomName, bodies: Vec<Vec<u8>>) -> Result<(), BrokerError> {
        let mode = DeliveryMode::Persistent;
        self.publish_confirmed(Role::Notices, room.as_str(), "", false, mode, bodies)
            .await
    }

    async fn publish_event(&self, body: Vec<u8>) -> Result<(), BrokerError> {
        let mode = DeliveryMode::Persistent;
        self.publish_confirmed(Role::Notices, EVENTS_EXCHANGE, "", false, mode, vec![body])
            .await
    }

    async fn subscribe_events(&self) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        let link = self.link().await?;
        let result = async {
            let channel = link.connection.create_channel().await?;
            let options = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            };
            let mut args = FieldTable::default();
            args.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(EVENTS_MAX_LENGTH),
            );
            let queue = channel.queue_declare("".into(), options, args).await?;
            channel
                .queue_bind(
                    queue.name().clone(),
                    EVENTS_EXCHANGE.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let no_ack = BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            };
            let consumer = channel
                .basic_consume(
                    queue.name().clone(),
                    "".into(),
                    no_ack,
                    FieldTable::default(),
                )
                .await?;
            Ok(RabbitDeliveries {
                consumer,
                channel,
                closed: CancellationToken::new(),
                seat: None,
            })
        };
        match bounded(result).await? {
            Ok(deliveries) => Ok(Box::new(deliveries)),
            Err(e) => Err(self.error(&link, e)),
        }
    }

    async fn consume(&self, room: &RoomName) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        self.consume_queue(room.as_str()).await
    }

    async fn consume_inbox(&self, alias: &Alias) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        self.consume_queue(&inbox_queue(alias)).await
    }

    fn durable(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        self.link().await.map(|_| ())
    }
}

impl RabbitBroker {
    /// A consumer of `queue` with manual acks and a prefetch window, on a shared channel.
    async fn consume_queue(&self, queue: &str) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        let link = self.link().await?;
        let result = async {
            let seat = link.consumers.seat(&link.connection).await?;
            let consumer = seat
                .channel
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok(RabbitDeliveries {
                consumer,
                channel: seat.channel.clone(),
                closed: seat.closed.clone(),
                seat: Some(seat),
            })
        };
        match bounded(result).await? {
            Ok(deliveries) => Ok(Box::new(deliveries)),
            Err(e) => Err(self.error(&link, e)),
        }
    }
}

/// A consumer: of a room's queue on a shared channel (with a seat), or of the cluster events on a
/// channel of its own (no seat; the broker counts each delivery acknowledged as it sends it).
struct RabbitDeliveries {
    consumer: Consumer,
    channel: Channel,
    /// Fires when the broker closed the channel.
    closed: CancellationToken,
    seat: Option<Seat>,
}

#[async_trait]
impl DeliveryStream for RabbitDeliveries {
    fn is_open(&self) -> bool {
        self.channel.status().connected() && !self.closed.is_cancelled()
    }

    fn closed(&self) -> BoxFuture<'static, ()> {
        let closed = self.closed.clone();
        Box::pin(async move { closed.cancelled().await })
    }

    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        let delivery = match self.consumer.next().await? {
            Ok(delivery) => delivery,
            Err(e) => return Some(Err(BrokerError::Unavailable(e.to_string()))),
        };
        let acker: Box<dyn Acknowledge> = if self.seat.is_none() {
            Box::new(super::AlreadyAcked)
        } else {
            Box::new(RabbitAcker(delivery.acker))
        };
        Some(Ok(Delivery::new(
            delivery.data,
            delivery.redelivered,
            acker,
        )))
    }
}

impl Drop for RabbitDeliveries {
    /// A room's consumer cancels itself and gives back what the broker had sent it and it had not
    /// taken yet (its neighbours keep the channel); the events' consumer closes its channel.
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let channel = self.channel.clone();
        let Some(seat) = self.seat.take() else {
            runtime.spawn(async move {
                let _ = channel.close(200, "consumer stopped".into()).await;
            });
            return;
        };
        let mut consumer = self.consumer.clone();
        runtime.spawn(async move {
            if !channel.status().connected() {
                return;
            }
            let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
            if !matches!(bounded(cancel).await, Ok(Ok(()))) {
                return;
            }
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(OPERATION_TIMEOUT, consumer.next()).await
            {
                let _ = bounded(delivery.acker.nack(requeue())).await;
            }
            drop(seat);
        });
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    }
}

/// Settles one delivery. One dropped unsettled (its batch was abandoned) goes back to the queue
/// at once, so that the room's next active consumer gets it without waiting for this channel to
/// close.
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

impl Drop for RabbitAcker {
    fn drop(&mut self) {
        if !self.0.usable() {
            return;
        }
        let acker = self.0.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = bounded(acker.nack(requeue())).await;
            });
        }
    }
}

/// Runs `connect` on the nodes of `urls` in turn, from the one at `first`, each within
/// [`CONNECT_TIMEOUT`]; the first that succeeds, with its place in `urls`.
async fn first_node<T, Fut>(
    urls: &[String],
    first: usize,
    connect: impl Fn(String) -> Fut,
) -> Result<(usize, T), BrokerError>
where
    Fut: std::future::Future<Output = lapin::Result<T>>,
{
    let mut failures = Vec::new();
    for at in (0..urls.len()).map(|i| (first + i) % urls.len()) {
        let url = &urls[at];
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(url.clone())).await {
            Ok(Ok(connected)) => {
                tracing::info!(node = %redacted(url), "connected to RabbitMQ");
                return Ok((at, connected));
            }
            Ok(Err(e)) => failures.push(format!("{}: {e}", redacted(url))),
            Err(_) => failures.push(format!("{}: timed out connecting", redacted(url))),
        }
    }
    if failures.is_empty() {
        return Err(BrokerError::Unavailable("no RabbitMQ URL was given".into()));
    }
    Err(BrokerError::Unavailable(failures.join("; ")))
}

/// The host and port of the first node of `urls` (a comma-separated list, as
/// [`node_urls`] splits it).
pub fn first_node_address(urls: &str) -> Option<(String, u16)> {
    let first = node_urls(urls).into_iter().next()?;
    let uri = first.parse::<lapin::uri::AMQPUri>().ok()?;
    Some((uri.authority.host, uri.authority.port))
}

/// The node URLs in `urls`: one AMQP URL, or several separated by commas (a comma inside a
/// password is written `%2C`), blanks around each ignored.
pub fn node_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_node_urls_is_split_at_commas() {
        assert_eq!(
            node_urls("amqp://a:5672/%2f, amqp://u:p%2Cw@b:5673/%2f,"),
            ["amqp://a:5672/%2f", "amqp://u:p%2Cw@b:5673/%2f"]
        );
        assert_eq!(node_urls("amqp://a/%2f"), ["amqp://a/%2f"]);
    }

    #[test]
    fn the_first_nodes_address_is_read_with_amqps_default_port() {
        let address = |urls| first_node_address(urls);
        assert_eq!(
            address("amqp://g:g@127.0.0.1:5673/%2f,amqp://b:5674/%2f"),
            Some(("127.0.0.1".to_string(), 5673))
        );
        assert_eq!(
            address("amqp://localhost"),
            Some(("localhost".to_string(), 5672))
        );
        assert_eq!(address(""), None);
    }

    #[test]
    fn quorum_queues_say_so_and_classic_ones_keep_the_earlier_arguments() {
        let quorum = room_queue_arguments(QueueType::Quorum);
        assert!(quorum.inner().contains_key("x-queue-type"));
        assert!(quorum.inner().contains_key("x-single-active-consumer"));
        let classic = inbox_queue_arguments(QueueType::Classic);
        assert!(!classic.inner().contains_key("x-queue-type"));
        assert!(classic.inner().contains_key("x-max-length"));
    }
}
