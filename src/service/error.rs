//! `ChatError`: every way a use case can fail, in words a client can act on. The HTTP layer maps
//! each variant to one status code.

use crate::broker::BrokerError;
use crate::model::{Alias, MAX_MESSAGE_BYTES, NameError, RoomName};
use crate::room::RoomError;
use crate::store::StoreError;

/// What a [`super::ChatService`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A parameter is missing or malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A room name or alias breaks the name rules.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The message text is over the limit.
    #[error("message is {0} bytes long; the limit is {MAX_MESSAGE_BYTES} bytes")]
    MessageTooLarge(usize),
    /// The request needs a valid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No room by that name.
    #[error("no room named {0}")]
    RoomNotFound(RoomName),
    /// The alias may not take part in the room.
    #[error("{alias} is not a member of room {room}")]
    NotAMember {
        /// The room.
        room: RoomName,
        /// The alias.
        alias: Alias,
    },
    /// A private room already has its two members.
    #[error("room {room} is a private room of {members}; it cannot take a third alias")]
    PrivateRoomFull {
        /// The room.
        room: RoomName,
        /// Its two members, for the message.
        members: String,
    },
    /// The request contradicts the room's kind (group or private).
    #[error("room {room} is a {actual} room, not a {asked} room")]
    KindConflict {
        /// The room.
        room: RoomName,
        /// What the room is.
        actual: &'static str,
        /// What the request said.
        asked: &'static str,
    },
    /// The alias is registered already.
    #[error("{0}")]
    NameTaken(String),
    /// The operation conflicts with the room's state.
    #[error("{0}")]
    Conflict(String),
    /// The broker already has a queue or exchange of this name, declared with other settings
    /// (another application's): the room cannot use it.
    #[error(
        "the broker already has a queue or exchange named {0} with other settings (another \
         application's?); pick another name"
    )]
    NameClash(String),
    /// An idempotency key already used for a message with another text.
    #[error(
        "idempotency key reused with a different message: the key already sent {stored:?}; use \
         a new key for a new message"
    )]
    IdempotencyKeyReused {
        /// The text stored under the key (shortened).
        stored: String,
    },
    /// The caller went over a rate limit; the same request can succeed after `retry_after`.
    #[error("{message}")]
    RateLimited {
        /// Which limit, and how long to wait.
        message: String,
        /// How long to wait before trying again (whole seconds, at least one).
        retry_after: std::time::Duration,
    },
    /// The caller holds all a quota allows (rooms owned); waiting does not help.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The broker or the store cannot be used right now; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The store holds data this version does not read.
    #[error("{0}")]
    Legacy(String),
    /// The back ends are set up otherwise than this instance is configured (a queue of the other
    /// queue type): an operator must act.
    #[error("{0}")]
    Misconfigured(String),
    /// A fault of the service itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<BrokerError> for ChatError {
    fn from(e: BrokerError) -> Self {
        // The client hears what it can act on; the broker's own words go to the log.
        match e {
            BrokerError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "broker unavailable");
                ChatError::Unavailable("the message broker is unavailable".into())
            }
            BrokerError::Nacked => {
                ChatError::Unavailable("the message broker did not take the message".into())
            }
            // The room's queue is missing on the broker (deleted behind the service's back): its
            // consumer declares it again when it resubscribes, so a retry can succeed.
            BrokerError::Unroutable(room) => ChatError::Unavailable(format!(
                "room {room}'s queue could not take the message; it is being declared again"
            )),
            BrokerError::Clash { name, detail } => {
                tracing::warn!(%name, error = %detail, "broker refused a declare");
                ChatError::NameClash(name)
            }
            BrokerError::QueueType { .. } => {
                tracing::error!(error = %e, "a queue has the other queue type");
                ChatError::Misconfigured(e.to_string())
            }
            BrokerError::Refused(detail) => ChatError::Internal(detail),
        }
    }
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "store unavailable");
                ChatError::Unavailable("the message store is unavailable".into())
            }
            StoreError::Legacy(why) => ChatError::Legacy(why),
            StoreError::Malformed(_) | StoreError::Unnumbered(_) => {
                ChatError::Internal(e.to_string())
            }
        }
    }
}

impl From<RoomError> for ChatError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::NotAMember { room, alias } => ChatError::NotAMember { room, alias },
            RoomError::Gone(room) => ChatError::RoomNotFound(room),
            RoomError::MessageTooLarge(n) => ChatError::MessageTooLarge(n),
            RoomError::NotAGroupRoom(_) | RoomError::OwnerCannotLeave(_) => {
                ChatError::Conflict(e.to_string())
            }
            RoomError::WrongRoom(_) => ChatError::Internal(e.to_string()),
            RoomError::Broker(e) => e.into(),
            RoomError::Store(e) => e.into(),
        }
    }
}
