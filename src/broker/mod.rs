//! The broker layer: one [`Broker`] trait, two back ends.
//!
//! - [`rmq::RabbitBroker`]: RabbitMQ through `lapin` (the only module that imports it).
//! - [`memory::MemoryBroker`]: an in-process broker with the same semantics, for the embedded
//!   default and for tests of the layers above.
//!
//! Topology, the same on both (see the README for where it departs from the seed, and why):
//! - a room `R` has a durable queue `R`, consumed by the service (one active consumer at a time).
//!   Every send is published to it through the default exchange, *mandatory*: the broker confirms
//!   a send only once queue `R` holds it, and returns it if the queue is missing;
//! - a group room also has a fanout exchange `R`; each member alias `A` has an inbox queue
//!   `inbox.A` bound to it. Once the room's consumer stored a batch it fans the numbered messages
//!   out there ([`Broker::fan_out`]), so an inbox holds each message with its sequence number;
//! - one fanout exchange, [`EVENTS_EXCHANGE`], carries cluster events; each instance reads them
//!   from an exclusive, auto-deleted queue of its own ([`Broker::subscribe_events`]).
//!
//! Publishing answers only once the broker has confirmed the message; a delivery stays
//! unacknowledged until [`Delivery::ack`], and is redelivered if its consumer goes away first.
//! A send is published transient first ([`Broker::publish_in_memory`]) and persistent only if it
//! is not stored soon (see `service/send.rs`): a persistent message on one of many idle queues
//! costs RabbitMQ a disk sync of that queue's index of its own.

pub mod memory;
pub mod rmq;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::model::{Alias, RoomName};

/// How many messages a member's inbox queue keeps (oldest dropped first), so that an absent
/// member cannot fill the broker.
pub const INBOX_MAX_LENGTH: i64 = 10_000;
/// How long a message waits in a member's inbox queue before the broker drops it (7 days).
pub const INBOX_MESSAGE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// The fanout exchange of cluster events. Room names cannot hold a `.`, so no room's exchange
/// can be this one.
pub const EVENTS_EXCHANGE: &str = "mess-chat.events";
/// Most events an instance's events queue holds (oldest dropped first): an instance that falls
/// this far behind catches up from the store.
pub const EVENTS_MAX_LENGTH: i64 = 100_000;
/// Prefix of a member's inbox queue: alias `A` reads `inbox.A`. A room's queue is named after the
/// room and can hold no `.`, so an inbox and a room's queue are never one queue, even for a
/// private room named after its recipient (as the course's client names them).
pub const INBOX_PREFIX: &str = "inbox.";

/// The name of `alias`'s inbox queue.
pub fn inbox_queue(alias: &Alias) -> String {
    format!("{INBOX_PREFIX}{alias}")
}

/// The kind of queue rooms and inboxes get on RabbitMQ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Classic queues: one node holds each queue (the default; enough for one broker node).
    #[default]
    Classic,
    /// Quorum queues: replicated over the cluster's nodes by Raft, so a queue outlives the loss
    /// of a minority of them.
    Quorum,
}

impl QueueType {
    /// The name RabbitMQ gives it (`x-queue-type`).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached or the connection broke; try again later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused to route the message (no queue bound): nothing was stored.
    #[error("message for room {0} could not be routed to any queue")]
    Unroutable(String),
    /// The broker answered the publish with a negative confirm.
    #[error("broker did not confirm the message")]
    Nacked,
    /// A queue or exchange of this name exists with other settings (a declare was refused with
    /// `PRECONDITION_FAILED`).
    #[error("{name} exists on the broker with other settings: {detail}")]
    Clash {
        /// The queue or exchange.
        name: String,
        /// The broker's words.
        detail: String,
    },
    /// A queue of this name exists with the other queue type (classic or quorum) than the one
    /// this instance is configured with: every instance of a deployment must use one type.
    #[error(
        "queue {name} exists on the broker as another queue type than this instance's \
         --queue-type {configured}: {detail}"
    )]
    QueueType {
        /// The queue.
        name: String,
        /// The type this instance declares.
        configured: QueueType,
        /// The broker's words.
        detail: String,
    },
    /// The broker rejected an operation.
    #[error("broker refused the operation: {0}")]
    Refused(String),
}

/// A message broker as the rooms need it.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Declares the room's queue (and, for a group room, its exchange). Idempotent.
    async fn declare_room(&self, room: &RoomName, group_room: bool) -> Result<(), BrokerError>;

    /// Declares `alias`'s inbox queue and binds it to the group room's exchange. Idempotent.
    async fn bind_member(&self, room: &RoomName, alias: &Alias) -> Result<(), BrokerError>;

    /// Removes the binding of `alias`'s inbox queue to the group room's exchange.
    async fn unbind_member(&self, room: &RoomName, alias: &Alias) -> Result<(), BrokerError>;

    /// Deletes the room's queue and (group rooms) its exchange. Member inboxes stay.
    async fn delete_room(&self, room: &RoomName, group_room: bool) -> Result<(), BrokerError>;

    /// Deletes an alias's inbox queue (used when cleaning up).
    async fn delete_inbox(&self, alias: &Alias) -> Result<(), BrokerError>;

    /// Publishes a persistent message to the room's queue and returns once the broker confirmed
    /// that the queue holds it; [`BrokerError::Unroutable`] if the queue does not exist.
    async fn publish(&self, room: &RoomName, body: Vec<u8>) -> Result<(), BrokerError>;

    /// As [`Broker::publish`], but the message is transient: the broker keeps it in memory only,
    /// so it confirms it without writing it to disk, and loses it if it restarts before the
    /// room's consumer took it. For a send whose client is answered only once it is stored, or
    /// once a persistent copy of it is confirmed.
    async fn publish_in_memory(&self, room: &RoomName, body: Vec<u8>) -> Result<(), BrokerError>;

    /// Copies stored messages to the inboxes of a group room's members (through the room's
    /// exchange), persistent, and returns once the broker confirmed them.
    async fn fan_out(&self, room: &RoomName, bodies: Vec<Vec<u8>>) -> Result<(), BrokerError>;

    /// Publishes a cluster event to every instance and returns once the broker confirmed it.
    async fn publish_event(&self, body: Vec<u8>) -> Result<(), BrokerError>;

    /// Starts reading cluster events from a queue of this caller's own, which exists as long as
    /// the stream does. Deliveries need no acknowledgement.
    async fn subscribe_events(&self) -> Result<Box<dyn DeliveryStream>, BrokerError>;

    /// Starts consuming the room's queue with manual acknowledgements. At most one consumer of a
    /// room queue is active at a time (single active consumer).
    async fn consume(&self, room: &RoomName) -> Result<Box<dyn DeliveryStream>, BrokerError>;

    /// Starts consuming `alias`'s inbox queue (a copy of every message of its group rooms).
    async fn consume_inbox(&self, alias: &Alias) -> Result<Box<dyn DeliveryStream>, BrokerError>;

    /// Whether a confirmed message survives a crash of this process (RabbitMQ: yes, persistent
    /// messages on durable queues; the in-process broker: no).
    fn durable(&self) -> bool;

    /// Checks that the broker can be used now (connecting if need be).
    async fn ping(&self) -> Result<(), BrokerError>;
}

/// The deliveries of one consumer, in queue order.
#[async_trait]
pub trait DeliveryStream: Send + Sync {
    /// The next delivery; `None` once the consumer was cancelled or its connection closed.
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>>;

    /// Whether the consumer can still receive.
    fn is_open(&self) -> bool {
        true
    }

    /// Completes once the consumer can no longer receive, in case a dead connection never ends
    /// `next` (the back end watches its connections; a consumer needs no timer of its own).
    fn closed(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
}

/// Settles one delivery with the broker.
#[async_trait]
pub trait Acknowledge: Send + Sync {
    /// The message was handled: the broker may forget it.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// The message cannot be handled (malformed): drop it without redelivery.
    async fn reject(self: Box<Self>) -> Result<(), BrokerError>;
}

/// The settlement of a delivery the broker counted as acknowledged when it sent it (a queue
/// consumed without acknowledgements, such as an instance's cluster events).
pub struct AlreadyAcked;

#[async_trait]
impl Acknowledge for AlreadyAcked {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn reject(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// One message taken off a queue, not yet acknowledged.
pub struct Delivery {
    /// The message body, as published.
    pub body: Vec<u8>,
    /// True when the broker delivered this message before without an ack.
    pub redelivered: bool,
    /// How to settle it.
    acker: Box<dyn Acknowledge>,
}

impl Delivery {
    /// Wraps a body with the back end's way of settling it.
    pub fn new(body: Vec<u8>, redelivered: bool, acker: Box<dyn Acknowledge>) -> Self {
        Self {
            body,
            redelivered,
            acker,
        }
    }

    /// Acknowledges the delivery: call only once the work that justifies it is done.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.acker.ack().await
    }

    /// Rejects the delivery without requeueing it.
    pub async fn reject(self) -> Result<(), BrokerError> {
        self.acker.reject().await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("redelivered", &self.redelivered)
            .finish()
    }
}
