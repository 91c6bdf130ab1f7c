//! `MessageProperties` and `ChatMessage`: what travels through the broker and lands in the store.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::names::{Alias, RoomName};

/// Largest accepted message text, in bytes of UTF-8. Larger sends are refused with 413.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Longest accepted client idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Whether a message is as its sender published it, or as the room's consumer received it. The
/// seed's `mess_type: int`: in the store and on the wire it is the integer of its constant,
/// [`MESS_TYPE_SENT`] (1) or [`MESS_TYPE_RECEIVED`] (2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// Built by the sender and published; not yet through the room's consumer.
    Sent,
    /// Taken off the room's queue, numbered and stored.
    Received,
}

/// The seed's named constant for a sent message (its integer is 1).
pub const MESS_TYPE_SENT: MessageType = MessageType::Sent;
/// The seed's named constant for a received message (its integer is 2).
pub const MESS_TYPE_RECEIVED: MessageType = MessageType::Received;

impl MessageType {
    /// The integer stored and sent for this type.
    pub fn code(self) -> u8 {
        match self {
            MessageType::Sent => 1,
            MessageType::Received => 2,
        }
    }

    /// The type of an integer code.
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(MessageType::Sent),
            2 => Some(MessageType::Received),
            _ => None,
        }
    }
}

impl Serialize for MessageType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for MessageType {
    /// The integer code; the names `"sent"` and `"received"` of earlier versions are read too.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Code(u64),
            Name(String),
        }
        let found = match Either::deserialize(deserializer)? {
            Either::Code(code) => MessageType::from_code(code),
            Either::Name(name) => match name.as_str() {
                "sent" => Some(MessageType::Sent),
                "received" => Some(MessageType::Received),
                _ => None,
            },
        };
        found.ok_or_else(|| serde::de::Error::custom("mess_type must be 1 (sent) or 2 (received)"))
    }
}

/// A message's id: the seed's `id: int`. Unique across every instance, assigned at send time,
/// and ordered by time: milliseconds since [`MessageId::EPOCH_MS`] (41 bits), the sending
/// instance's number (6 bits, leased from the store), and a counter within the millisecond (6
/// bits). At most 53 bits, so JavaScript reads it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The start of the id clock: 2026-01-01T00:00:00Z, in milliseconds since 1970.
    pub const EPOCH_MS: i64 = 1_767_225_600_000;
    /// Bits of the instance number.
    pub const INSTANCE_BITS: u32 = 6;
    /// Bits of the counter within a millisecond.
    pub const COUNTER_BITS: u32 = 6;
    /// The most instances that can issue ids at once.
    pub const INSTANCES: u16 = 1 << Self::INSTANCE_BITS;
    /// The most ids one instance issues in one millisecond.
    pub const PER_MS: u16 = 1 << Self::COUNTER_BITS;
    /// Bits of the whole id (53: exact as a JavaScript number).
    pub const BITS: u32 = 53;

    /// The id made of a time (milliseconds since 1970), an instance number and a counter;
    /// `None` if a part is out of its range.
    pub fn compose(unix_ms: i64, instance: u16, counter: u16) -> Option<Self> {
        let ms = u64::try_from(unix_ms.checked_sub(Self::EPOCH_MS)?).ok()?;
        let time_bits = Self::BITS - Self::INSTANCE_BITS - Self::COUNTER_BITS;
        if ms >= 1 << time_bits || instance >= Self::INSTANCES || counter >= Self::PER_MS {
            return None;
        }
        Some(MessageId(
            (ms << (Self::INSTANCE_BITS + Self::COUNTER_BITS))
                | (u64::from(instance) << Self::COUNTER_BITS)
                | u64::from(counter),
        ))
    }

    /// When the id was made, in milliseconds since 1970.
    pub fn unix_ms(self) -> i64 {
        (self.0 >> (Self::INSTANCE_BITS + Self::COUNTER_BITS)) as i64 + Self::EPOCH_MS
    }

    /// The number of the instance that made it.
    pub fn instance(self) -> u16 {
        ((self.0 >> Self::COUNTER_BITS) & u64::from(Self::INSTANCES - 1)) as u16
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Everything about a message except its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageProperties {
    /// Sent or received: 1 ([`MESS_TYPE_SENT`]) or 2 ([`MESS_TYPE_RECEIVED`]).
    #[schema(value_type = u8, minimum = 1, maximum = 2)]
    pub mess_type: MessageType,
    /// The room the message belongs to.
    #[schema(value_type = String)]
    pub room_name: RoomName,
    /// The destination: the other alias of a private room, or the group's exchange (room name).
    pub to_user: String,
    /// The sender's alias.
    #[schema(value_type = String)]
    pub from_user: Alias,
    /// When the sender built it (millisecond precision, so it survives a store round trip).
    pub sent_time: DateTime<Utc>,
    /// When the room's consumer took it off the queue; `None` until then.
    pub rec_time: Option<DateTime<Utc>>,
    /// The message's place in its room, from 1 without gaps; `None` until received.
    pub sequence_number: Option<u64>,
    /// Unique id, assigned at send time (time-ordered, at most 53 bits); the store is idempotent
    /// by it.
    #[schema(value_type = u64)]
    pub id: MessageId,
}

impl MessageProperties {
    /// Properties of a message about to be sent: type SENT, `sent_time` now, the given id.
    pub fn new_sent(room_name: RoomName, from_user: Alias, to_user: String, id: MessageId) -> Self {
        Self {
            mess_type: MessageType::Sent,
            room_name,
            to_user,
            from_user,
            sent_time: now(),
            rec_time: None,
            sequence_number: None,
            id,
        }
    }
}

/// The name under which the store keeps the id of the message sent with an idempotency key: the
/// same room, sender and key always name the same message, and different ones never do.
pub fn idempotency_name(room: &RoomName, from: &Alias, key: &str) -> String {
    format!("{room}\u{0}{from}\u{0}{key}")
}

/// A message: its text, its properties, and whether it still has to be saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatMessage {
    /// The text.
    pub message: String,
    /// Type, room, sender, destination, times, sequence number, id.
    pub mess_props: MessageProperties,
    /// True while the message is in a room's cache but not yet in the store.
    #[serde(skip)]
    pub dirty: bool,
}

impl ChatMessage {
    /// A message that has not been saved yet.
    pub fn new(message: String, mess_props: MessageProperties) -> Self {
        Self {
            message,
            mess_props,
            dirty: true,
        }
    }
}

/// The current time, truncated to milliseconds: the precision both stores keep.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(to: &str) -> MessageProperties {
        MessageProperties::new_sent(
            RoomName::new("lobby").unwrap(),
            Alias::new("ann").unwrap(),
            to.into(),
            MessageId(42),
        )
    }

    #[test]
    fn a_new_message_is_sent_dirty_and_unnumbered() {
        let msg = ChatMessage::new("hi".into(), props("lobby"));
        assert_eq!(msg.mess_props.mess_type, MESS_TYPE_SENT);
        assert!(msg.dirty);
        assert_eq!(msg.mess_props.sequence_number, None);
        assert_eq!(
            msg.mess_props.sent_time.timestamp_subsec_nanos() % 1_000_000,
            0
        );
    }

    #[test]
    fn idempotency_names_depend_on_room_sender_and_key_and_never_meet() {
        let (r, a) = (RoomName::new("r").unwrap(), Alias::new("a").unwrap());
        let name = idempotency_name(&r, &a, "k1");
        assert_eq!(name, idempotency_name(&r, &a, "k1"));
        assert_ne!(name, idempotency_name(&r, &a, "k2"));
        assert_ne!(name, idempotency_name(&r, &Alias::new("b").unwrap(), "k1"));
        assert_ne!(
            name,
            idempotency_name(&RoomName::new("s").unwrap(), &a, "k1")
        );
        // A key cannot pass for another sender's: names never hold NUL.
        assert_ne!(
            idempotency_name(&r, &a, "x\u{0}y"),
            idempotency_name(&r, &Alias::new("a-x").unwrap(), "y")
        );
    }

    #[test]
    fn ids_are_time_ordered_within_53_bits_and_take_apart() {
        let early = MessageId::compose(MessageId::EPOCH_MS + 5, 3, 7).unwrap();
        assert_eq!(early.unix_ms(), MessageId::EPOCH_MS + 5);
        assert_eq!(early.instance(), 3);
        let later = MessageId::compose(MessageId::EPOCH_MS + 6, 0, 0).unwrap();
        assert!(
            later > early,
            "a later millisecond makes a larger id, whatever the instance"
        );
        let last = MessageId::compose(
            MessageId::EPOCH_MS + (1 << 41) - 1,
            MessageId::INSTANCES - 1,
            MessageId::PER_MS - 1,
        )
        .unwrap();
        assert!(last.0 < 1 << 53, "exact as a JavaScript number");
        assert!(MessageId::compose(MessageId::EPOCH_MS - 1, 0, 0).is_none());
        assert!(MessageId::compose(MessageId::EPOCH_MS, MessageId::INSTANCES, 0).is_none());
        assert!(MessageId::compose(MessageId::EPOCH_MS, 0, MessageId::PER_MS).is_none());
    }

    #[test]
    fn the_wire_form_has_the_seeds_integers_and_omits_dirty() {
        let msg = ChatMessage::new("héllo & ?".into(), props("bob"));
        let json = serde_json::to_value(&msg).unwrap();
        assert!(json.get("dirty").is_none());
        assert_eq!(json["mess_props"]["mess_type"], 1);
        assert_eq!(json["mess_props"]["id"], 42);
        let back: ChatMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back.message, msg.message);
        assert_eq!(back.mess_props, msg.mess_props);
        assert!(
            !back.dirty,
            "a message read back from the wire is not dirty"
        );
    }

    #[test]
    fn earlier_type_names_are_still_read() {
        let received: MessageType = serde_json::from_str("\"received\"").unwrap();
        assert_eq!(received, MESS_TYPE_RECEIVED);
        assert_eq!(serde_json::to_string(&received).unwrap(), "2");
        assert!(serde_json::from_str::<MessageType>("3").is_err());
    }
}
