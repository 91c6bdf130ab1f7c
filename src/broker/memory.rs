//! The embedded broker: exchanges, queues and bindings in process memory, with the same
//! semantics as the RabbitMQ back end (sends routed to the room's queue or refused, fanout group
//! exchanges to bounded member inboxes, cluster events to a queue per subscriber, manual acks,
//! redelivery of what a consumer left unacked, one active consumer per queue).
//!
//! It is not durable: a message it confirmed but the room had not stored yet is gone if the
//! process dies. So the service never acknowledges a send through this broker before the message
//! is stored (see `ChatService::send`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    Acknowledge, AlreadyAcked, Broker, BrokerError, Delivery, DeliveryStream, EVENTS_EXCHANGE,
    EVENTS_MAX_LENGTH, inbox_queue,
};

/// How many copies a member's inbox keeps here (oldest dropped first). The in-process broker
/// holds them in the service's own memory, and nothing in the service reads them (the history
/// does): 10,000 copies per member, as on RabbitMQ, made a busy room of 100 members hold about
/// 330 MiB.
pub const INBOX_MAX_LENGTH: usize = 50;
use crate::model::{Alias, RoomName};

/// An in-process broker; cheap to share behind an `Arc`.
#[derive(Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Exchanges, queues and counters. A std mutex: every critical section is short and sync.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Fanout exchanges by name, each with the names of the queues bound to it.
    exchanges: HashMap<String, BTreeSet<String>>,
    queues: HashMap<String, Queue>,
    /// Source of delivery tags and consumer ids.
    next_id: u64,
}

struct Queue {
    ready: VecDeque<Message>,
    /// Delivered, not yet settled: tag → (consumer id, message).
    unacked: HashMap<u64, (u64, Message)>,
    /// Oldest messages are dropped beyond this length (member inboxes only).
    max_length: Option<usize>,
    /// The consumer allowed to take messages (single active consumer).
    active_consumer: Option<u64>,
    /// Deleted with its consumer, which takes messages without acknowledgements (an instance's
    /// events queue).
    auto_delete: bool,
    /// Wakes consumers waiting for a message or for their turn.
    notify: Arc<Notify>,
}

#[derive(Clone)]
struct Message {
    body: Vec<u8>,
    redelivered: bool,
}

impl Queue {
    fn new(max_length: Option<usize>) -> Self {
        Self {
            ready: VecDeque::new(),
            unacked: HashMap::new(),
            max_length,
            active_consumer: None,
            auto_delete: false,
            notify: Arc::new(Notify::new()),
        }
    }

    fn push(&mut self, body: Vec<u8>) {
        self.ready.push_back(Message {
            body,
            redelivered: false,
        });
        if let Some(max) = self.max_length {
            while self.ready.len() > max {
                self.ready.pop_front();
            }
        }
        self.notify.notify_waiters();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn consume_queue(&self, name: &str) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        let mut state = self.shared.state();
        state.next_id += 1;
        let id = state.next_id;
        let Some(queue) = state.queues.get(name) else {
            return Err(BrokerError::Refused(format!("no queue {name}")));
        };
        Ok(Box::new(MemoryDeliveries {
            shared: self.shared.clone(),
            queue: name.to_string(),
            notify: queue.notify.clone(),
            id,
            auto_ack: queue.auto_delete,
        }))
    }

    /// Pushes `bodies` to every queue bound to `exchange`; `Refused` if there is no such exchange.
    fn route(&self, exchange: &str, bodies: Vec<Vec<u8>>) -> Result<(), BrokerError> {
        let mut state = self.shared.state();
        let Some(bound) = state.exchanges.get(exchange) else {
            return Err(BrokerError::Refused(format!("no exchange {exchange}")));
        };
        let bound: Vec<String> = bound.iter().cloned().collect();
        for target in bound {
            if let Some(queue) = state.queues.get_mut(&target) {
                for body in &bodies {
                    queue.push(body.clone());
                }
            }
        }
        Ok(())
    }

    /// How many messages wait (ready, not delivered) in a queue; for tests and diagnostics.
    pub fn ready_count(&self, queue: &str) -> Option<usize> {
        self.shared.state().queues.get(queue).map(|q| q.ready.len())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn declare_room(&self, room: &RoomName, group_room: bool) -> Result<(), BrokerError> {
        let mut state = self.shared.state();
        let name = room.to_string();
        state
            .queues
            .entry(name.clone())
            .or_insert_with(|| Queue::new(None));
        if group_room {
            state.exchanges.entry(name).or_default();
        }
        Ok(())
    }

    async fn bind_member(&self, room: &RoomName, alias: &Alias) -> Result<(), BrokerError> {
        let mut state = self.shared.state();
        let inbox = inbox_queue(alias);
        let Some(bound) = state.exchanges.get_mut(room.as_str()) else {
            return Err(BrokerError::Refused(format!("no exchange {room}")));
        };
        bound.insert(inbox.clone());
        state
            .queues
            .entry(inbox)
            .or_insert_with(|| Queue::new(Some(INBOX_MAX_LENGTH)));
        Ok(())
    }

    async fn unbind_member(&self, room: &RoomName, alias: &Alias) -> Result<(), BrokerError> {
        if let Some(bound) = self.shared.state().exchanges.get_mut(room.as_str()) {
            bound.remove(&inbox_queue(alias));
        }
        Ok(())
    }

    async fn delete_room(&self, room: &RoomName, _group_room: bool) -> Result<(), BrokerError> {
        let mut state = self.shared.state();
        state.exchanges.remove(room.as_str());
        if let Some(queue) = state.queues.remove(room.as_str()) {
            queue.notify.notify_waiters();
        }
        Ok(())
    }

    async fn delete_inbox(&self, alias: &Alias) -> Result<(), BrokerError> {
        let mut state = self.shared.state();
        let inbox = inbox_queue(alias);
        if let Some(queue) = state.queues.remove(&inbox) {
            queue.notify.notify_waiters();
        }
        for bound in state.exchanges.values_mut() {
            bound.remove(&inbox);
        }
        Ok(())
    }

    async fn publish(&self, room: &RoomName, body: Vec<u8>) -> Result<(), BrokerError> {
        let mut state = self.shared.state();
        match state.queues.get_mut(room.as_str()) {
            Some(queue) => {
                queue.push(body);
                Ok(())
            }
            None => Err(BrokerError::Unroutable(room.to_string())),
        }
    }

    async fn publish_in_memory(&self, room: &RoomName, body: Vec<u8>) -> Result<(), BrokerError> {
        // Everything this broker holds is in memory.
        self.publish(room, body).await
    }

    async fn fan_out(&self, room: &RoomName, bodies: Vec<Vec<u8>>) -> Result<(), BrokerError> {
        self.route(room.as_str(), bodies)
    }

    async fn publish_event(&self, body: Vec<u8>) -> Result<(), BrokerError> {
        self.shared
            .state()
            .exchanges
            .entry(EVENTS_EXCHANGE.to_string())
            .or_default();
        self.route(EVENTS_EXCHANGE, vec![body])
    }

    async fn subscribe_events(&self) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        let name = {
            let mut state = self.shared.state();
            state.next_id += 1;
            let name = format!("events.{}", state.next_id);
            let mut queue = Queue::new(Some(EVENTS_MAX_LENGTH as usize));
            queue.auto_delete = true;
            state.queues.insert(name.clone(), queue);
            state
                .exchanges
                .entry(EVENTS_EXCHANGE.to_string())
                .or_default()
                .insert(name.clone());
            name
        };
        self.consume_queue(&name)
    }

    async fn consume(&self, room: &RoomName) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        self.consume_queue(room.as_str())
    }

    async fn consume_inbox(&self, alias: &Alias) -> Result<Box<dyn DeliveryStream>, BrokerError> {
        self.consume_queue(&inbox_queue(alias))
    }

    fn durable(&self) -> bool {
        false
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// One consumer of one queue; dropping it requeues what it had not acked.
struct MemoryDeliveries {
    shared: Arc<Shared>,
    queue: String,
    notify: Arc<Notify>,
    /// This consumer's id (also the owner recorded on its unacked messages).
    id: u64,
    /// Messages count as settled once taken (an auto-deleted events queue).
    auto_ack: bool,
}

impl MemoryDeliveries {
    /// Takes the next ready message if this consumer is (or can become) the active one.
    /// `None` inside means "nothing yet"; an outer `None` means the queue is gone.
    fn try_take(&self) -> Option<Option<Delivery>> {
        let mut state = self.shared.state();
        state.next_id += 1;
        let tag = state.next_id;
        let queue = state.queues.get_mut(&self.queue)?;
        if queue.active_consumer.is_none() {
            queue.active_consumer = Some(self.id);
        }
        if queue.active_consumer != Some(self.id) {
            return Some(None);
        }
        let Some(message) = queue.ready.pop_front() else {
            return Some(None);
        };
        if self.auto_ack {
            return Some(Some(Delivery::new(
                message.body,
                message.redelivered,
                Box::new(AlreadyAcked),
            )));
        }
        queue.unacked.insert(tag, (self.id, message.clone()));
        let acker = MemoryAcker {
            shared: self.shared.clone(),
            queue: self.queue.clone(),
            tag,
        };
        Some(Some(Delivery::new(
            message.body,
            message.redelivered,
            Box::new(acker),
        )))
    }
}

#[async_trait]
impl DeliveryStream for MemoryDeliveries {
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_take() {
                None => return None,
                Some(Some(delivery)) => return Some(Ok(delivery)),
                Some(None) => notified.await,
            }
        }
    }
}

impl Drop for MemoryDeliveries {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        if self.auto_ack {
            state.queues.remove(&self.queue);
            for bound in state.exchanges.values_mut() {
                bound.remove(&self.queue);
            }
            return;
        }
        let Some(queue) = state.queues.get_mut(&self.queue) else {
            return;
        };
        if queue.active_consumer == Some(self.id) {
            queue.active_consumer = None;
        }
        let mut mine: Vec<u64> = queue
            .unacked
            .iter()
            .filter(|(_, (owner, _))| *owner == self.id)
            .map(|(tag, _)| *tag)
            .collect();
        mine.sort_unstable();
        for tag in mine.into_iter().rev() {
            if let Some((_, mut message)) = queue.unacked.remove(&tag) {
                message.redelivered = true;
                queue.ready.push_front(message);
            }
        }
        queue.notify.notify_waiters();
    }
}

struct MemoryAcker {
    shared: Arc<Shared>,
    queue: String,
    tag: u64,
}

impl MemoryAcker {
    fn settle(&self) -> Result<(), BrokerError> {
        let mut state = self.shared.state();
        let settled = state
            .queues
            .get_mut(&self.queue)
            .and_then(|queue| queue.unacked.remove(&self.tag));
        match settled {
            Some(_) => Ok(()),
            None => Err(BrokerError::Unavailable(
                "delivery is no longer held by this consumer".into(),
            )),
        }
    }
}

#[async_trait]
impl Acknowledge for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.settle()
    }

    async fn reject(self: Box<Self>) -> Result<(), BrokerError> {
        self.settle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_member_inbox_keeps_only_its_newest_copies() {
        let broker = MemoryBroker::new();
        let room = RoomName::new("r").unwrap();
        let ann = Alias::new("ann").unwrap();
        broker.declare_room(&room, true).await.unwrap();
        broker.bind_member(&room, &ann).await.unwrap();
        let bodies: Vec<Vec<u8>> = (0..INBOX_MAX_LENGTH + 10)
            .map(|i| i.to_string().into_bytes())
            .collect();
        broker.fan_out(&room, bodies).await.unwrap();
        assert_eq!(
            broker.ready_count(&inbox_queue(&ann)),
            Some(INBOX_MAX_LENGTH)
        );
        let mut inbox = broker.consume_inbox(&ann).await.unwrap();
        let first = inbox.next().await.unwrap().unwrap();
        assert_eq!(first.body, b"10", "the oldest went first");
    }
}
