//! `MessageProperties` and `ChatMessage`: what travels through the broker and lands in the store.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::names::{Alias, RoomName};

/// Largest accepted message text, in bytes of UTF-8. Larger sends are refused with 413.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Longest accepted client idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Namespace of the ids derived from idempotency keys (UUIDv5).
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6d65_7373_2d63_6861_742d_6964_656d_706f);

/// Whether a message is as its sender published it, or as the room's consumer received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    /// Built by the sender and published; not yet through the room's consumer.
    Sent,
    /// Taken off the room's queue, numbered and stored.
    Received,
}

/// The seed's named constant for a sent message.
pub const MESS_TYPE_SENT: MessageType = MessageType::Sent;
/// The seed's named constant for a received message.
pub const MESS_TYPE_RECEIVED: MessageType = MessageType::Received;

/// Everything about a message except its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageProperties {
    /// Sent or received (see [`MessageType`]).
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
    /// Unique id, assigned at send time; the store is idempotent by it.
    pub id: Uuid,
}

impl MessageProperties {
    /// Properties of a message about to be sent: type SENT, a fresh id, `sent_time` now.
    pub fn new_sent(room_name: RoomName, from_user: Alias, to_user: String) -> Self {
        Self {
            mess_type: MessageType::Sent,
            room_name,
            to_user,
            from_user,
            sent_time: now(),
            rec_time: None,
            sequence_number: None,
            id: Uuid::now_v7(),
        }
    }
}

/// The message id a send with this idempotency key gets: the same room, sender and key always
/// give the same id, so a client's retry is recognised by the store and stored once.
pub fn idempotent_id(room: &RoomName, from: &Alias, key: &str) -> Uuid {
    let name = format!("{room}\u{0}{from}\u{0}{key}");
    Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes())
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

    #[test]
    fn a_new_message_is_sent_dirty_and_unnumbered() {
        let props = MessageProperties::new_sent(
            RoomName::new("lobby").unwrap(),
            Alias::new("ann").unwrap(),
            "lobby".into(),
        );
        let msg = ChatMessage::new("hi".into(), props);
        assert_eq!(msg.mess_props.mess_type, MESS_TYPE_SENT);
        assert!(msg.dirty);
        assert_eq!(msg.mess_props.sequence_number, None);
        assert_eq!(
            msg.mess_props.sent_time.timestamp_subsec_nanos() % 1_000_000,
            0
        );
    }

    #[test]
    fn idempotent_ids_depend_on_room_sender_and_key() {
        let (r, a) = (RoomName::new("r").unwrap(), Alias::new("a").unwrap());
        let id = idempotent_id(&r, &a, "k1");
        assert_eq!(id, idempotent_id(&r, &a, "k1"));
        assert_ne!(id, idempotent_id(&r, &a, "k2"));
        assert_ne!(id, idempotent_id(&r, &Alias::new("b").unwrap(), "k1"));
        assert_ne!(id, idempotent_id(&RoomName::new("s").unwrap(), &a, "k1"));
    }

    #[test]
    fn wire_form_omits_dirty_and_round_trips() {
        let props = MessageProperties::new_sent(
            RoomName::new("lobby").unwrap(),
            Alias::new("ann").unwrap(),
            "bob".into(),
        );
        let msg = ChatMessage::new("héllo & ?".into(), props);
        let json = serde_json::to_value(&msg).unwrap();
        assert!(json.get("dirty").is_none());
        assert_eq!(json["mess_props"]["mess_type"], "sent");
        let back: ChatMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back.message, msg.message);
        assert_eq!(back.mess_props, msg.mess_props);
        assert!(
            !back.dirty,
            "a message read back from the wire is not dirty"
        );
    }
}
