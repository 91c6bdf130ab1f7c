//! The data model: names, messages, room metadata and registered users. Pure data with serde derives; no I/O.

mod event;
mod message;
mod meta;
mod names;
mod user;

pub use event::{ClusterEvent, EventEnvelope, StoredBatch};
pub use message::{
    ChatMessage, MAX_IDEMPOTENCY_KEY_BYTES, MAX_MESSAGE_BYTES, MESS_TYPE_RECEIVED, MESS_TYPE_SENT,
    MessageId, MessageProperties, MessageType, idempotency_name, now,
};
pub use meta::{RoomListMeta, RoomMeta};
pub use names::{Alias, MAX_NAME_LEN, NameError, RoomName};
pub use user::UserRecord;
