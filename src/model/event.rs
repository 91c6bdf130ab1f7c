//! Cluster events: what one instance tells every other instance (through the broker's events
//! exchange) so that all of them serve the same rooms, history and live feeds.
//!
//! The store is the truth; events only spare the other instances a store read. An instance that
//! misses events (its events queue was lost while it was disconnected) catches up from the store.
//!
//! A change that other instances must have applied before anyone acts on it (a deletion, a
//! membership change) is published with `barrier` set: each instance that applies it answers
//! [`ClusterEvent::Applied`], and the publisher waits for every instance it knows to be alive
//! (instances announce themselves with [`ClusterEvent::Alive`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::message::ChatMessage;
use super::meta::RoomMeta;
use super::names::RoomName;

/// One event, as published: who sent it and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// The instance that published it (each `mess-chat serve` process picks a random id at start).
    pub origin: Uuid,
    /// Set when the origin waits for every instance to answer [`ClusterEvent::Applied`] with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub barrier: Option<Uuid>,
    /// What happened.
    pub event: ClusterEvent,
}

/// One room's stored batch, within [`ClusterEvent::StoredBatches`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBatch {
    /// The room.
    pub room: RoomName,
    /// The stored messages, numbered.
    pub messages: Vec<ChatMessage>,
}

/// Something every instance must learn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// The room's numbering consumer stored these messages (and any redelivered ones it found
    /// stored already, with their first numbers). Instances put the new ones in their caches and
    /// live feeds in sequence order, and wake the senders waiting for any of them.
    Stored {
        /// The room.
        room: RoomName,
        /// The stored messages, numbered.
        messages: Vec<ChatMessage>,
    },
    /// Several rooms' stored batches in one event: batches stored at about the same time (on
    /// many rooms, mostly one message each) travel together, one publish for all of them.
    /// Applied as one [`ClusterEvent::Stored`] each, in order.
    StoredBatches {
        /// Each room's batch.
        batches: Vec<StoredBatch>,
    },
    /// A room was created: every instance starts a consumer for it (one will be active).
    RoomCreated {
        /// The new room.
        room: RoomName,
    },
    /// A room's metadata changed (a member joined, left or was removed).
    RoomChanged {
        /// The metadata as stored now.
        meta: RoomMeta,
    },
    /// A room was deleted: instances drop it, end its live feeds, stop its consumer and answer
    /// its waiting senders with "not found".
    RoomDeleted {
        /// The deleted room.
        room: RoomName,
    },
    /// The room's queue was deleted behind the service (and declared again): messages it held
    /// and had not delivered are gone. Senders waiting for one must not hear it is safe.
    QueueLost {
        /// The room.
        room: RoomName,
    },
    /// The origin is alive (sent every few seconds, and at start).
    Alive,
    /// The origin stops: no instance waits for it any more.
    Leaving,
    /// The origin applied the event published with this barrier by instance `to`.
    Applied {
        /// Whose barrier.
        to: Uuid,
        /// The barrier.
        barrier: Uuid,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alias, MessageId, MessageProperties};

    #[test]
    fn several_rooms_batches_travel_in_one_event_and_read_back_the_same() {
        let batch = |room: &str, text: &str| {
            let room = RoomName::new(room).unwrap();
            let props = MessageProperties::new_sent(
                room.clone(),
                Alias::new("ann").unwrap(),
                String::new(),
                MessageId(7),
            );
            let mut stored = ChatMessage::new(text.into(), props);
            stored.dirty = false;
            StoredBatch {
                room,
                messages: vec![stored],
            }
        };
        let envelope = EventEnvelope {
            origin: Uuid::nil(),
            barrier: None,
            event: ClusterEvent::StoredBatches {
                batches: vec![batch("a", "one"), batch("b", "two")],
            },
        };
        let wire = serde_json::to_value(&envelope).unwrap();
        assert_eq!(wire["event"]["kind"], "stored_batches");
        assert_eq!(wire["event"]["batches"][1]["room"], "b");
        let back: EventEnvelope = serde_json::from_value(wire).unwrap();
        assert_eq!(back, envelope);
    }
}
