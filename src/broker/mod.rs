//! The broker layer: one [`Broker`] trait, two back ends.
//!
//! - [`rmq::RabbitBroker`]: RabbitMQ through `lapin` (the only module that imports it).
//! - [`memory::MemoryBroker`]: an in-process broker with the same semantics, for the embedded
//!   default and for tests of the layers above.
//!
//! Topology, the same on both (seed semantics): a group room `R` is a fanout exchange `R` with the
//! room's queue `R` bound to it, plus one inbox queue per member alias, bound to `R`; a private
//! room is its queue `R` alone. Publishing answers only once the broker has confirmed the message;
//! a delivery stays unacknowledged until [`Delivery::ack`], and is redelivered if its consumer goes
//! away first.

pub mod memory;
pub mod rmq;

use async_trait::async_trait;

use crate::model::{Alias, RoomName};

/// How many messages a member's inbox queue keeps (oldest dropped first), so that an absent
/// member cannot fill the broker.
pub const INBOX_MAX_LENGTH: i64 = 10_000;
/// How long a message waits in a member's inbox queue before the broker drops it (7 days).
pub const INBOX_MESSAGE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

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
    /// The broker rejected an operation (for example a declare with other arguments).
    #[error("broker refused the operation: {0}")]
    Refused(String),
}

/// A message broker as the rooms need it.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Declares the room's queue (and, for a group room, its exchange and the binding). Idempotent.
    async fn declare_room(&self, room: &RoomName, group_room: bool) -> Result<(), BrokerError>;

    /// Declares `alias`'s inbox queue and binds it to the group room's exchange. Idempotent.
    async fn bind_member(&self, room: &RoomName, alias: &Alias) -> Result<(), BrokerError>;

    /// Removes the binding of `alias`'s inbox queue to the group room's exchange.
    async fn unbind_member(&self, room: &RoomName, alias: &Alias) -> Result<(), BrokerError>;

    /// Deletes the room's queue and (group rooms) its exchange. Member inboxes stay.
    async fn delete_room(&self, room: &RoomName, group_room: bool) -> Result<(), BrokerError>;

    /// Deletes an alias's inbox queue (used when cleaning up).
    async fn delete_inbox(&self, alias: &Alias) -> Result<(), BrokerError>;

    /// Publishes a persistent message to the room and returns once the broker confirmed it.
    async fn publish(
        &self,
        room: &RoomName,
        group_room: bool,
        body: Vec<u8>,
    ) -> Result<(), BrokerError>;

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
pub trait DeliveryStream: Send {
    /// The next delivery; `None` once the consumer was cancelled or its connection closed.
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>>;

    /// Whether the consumer can still receive. Checked now and then while idle, in case a dead
    /// connection never ends `next`.
    fn is_open(&self) -> bool {
        true
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
