//! A registered alias: who may act as it. Only a hash of its token is ever stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::names::Alias;

/// A registered alias and the hash of its bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The alias.
    pub alias: Alias,
    /// SHA-256 of the token's secret part, hex-encoded.
    pub token_hash: String,
    /// When the alias was registered.
    pub create_time: DateTime<Utc>,
}
