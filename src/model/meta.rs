//! Metadata documents: what the store keeps about a room and about the room list.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::names::{Alias, RoomName};

/// A room's metadata: everything but its messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomMeta {
    /// The room's name (also its queue, exchange and collection name).
    #[schema(value_type = String)]
    pub name: RoomName,
    /// Group room (any number of members, an exchange) or private room (two members).
    pub group_room: bool,
    /// Who created the room.
    #[schema(value_type = String)]
    pub owner_alias: Alias,
    /// Every member, the owner included, in name order.
    #[schema(value_type = Vec<String>)]
    pub members: Vec<Alias>,
    /// When the room was created.
    pub create_time: DateTime<Utc>,
    /// When the room last changed (members or messages).
    pub modify_time: DateTime<Utc>,
    /// How many times the membership changed: of two copies of a room's metadata, the one with
    /// the higher version is the newer (instances hear changes in no particular order).
    #[serde(default)]
    pub version: u64,
}

/// The room list's own metadata: its name and the names of its rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomListMeta {
    /// The list's name (one list per deployment; `"main"` by default).
    pub name: String,
    /// The rooms in the list, in name order.
    pub rooms: Vec<RoomName>,
    /// When the list was created.
    pub create_time: DateTime<Utc>,
    /// When a room was last added or removed.
    pub modify_time: DateTime<Utc>,
}
