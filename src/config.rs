//! The configuration file of `mess-chat serve` (`--config FILE`): TOML with the same keys as the
//! command-line flags, e.g.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f"   # or a list of a cluster's nodes' URLs
//! queue_type = "classic"                              # or "quorum"
//! mongo_url = "mongodb://127.0.0.1:27017/?retryWrites=false"
//! mongo_db = "mess_chat"
//! cache_capacity = 1000
//! log_format = "json"
//! max_rooms_owned = 1000
//! sends_per_second = 50
//! ```
//!
//! Precedence: a flag, then its `MESS_CHAT_*` environment variable, then the file, then the
//! built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every key the file may hold; unknown keys are refused, so a typo is not silently ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--amqp-url`: one URL, or a list of a cluster's nodes' URLs.
    pub amqp_url: Option<UrlList>,
    /// `--queue-type`.
    pub queue_type: Option<crate::broker::QueueType>,
    /// `--mongo-url`.
    pub mongo_url: Option<String>,
    /// `--mongo-db`.
    pub mongo_db: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--no-auth`.
    pub no_auth: Option<bool>,
    /// `--cache-capacity`.
    pub cache_capacity: Option<usize>,
    /// `--cache-total`.
    pub cache_total: Option<usize>,
    /// `--store-wait-ms`.
    pub store_wait_ms: Option<u64>,
    /// `--default-room`.
    pub default_room: Option<String>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--log-format` (`text` or `json`).
    pub log_format: Option<String>,
    /// `--max-rooms-owned`.
    pub max_rooms_owned: Option<u64>,
    /// `--sends-per-second`.
    pub sends_per_second: Option<u32>,
    /// `--send-burst`.
    pub send_burst: Option<u32>,
    /// `--room-creations-per-second`.
    pub room_creations_per_second: Option<u32>,
    /// `--room-creation-burst`.
    pub room_creation_burst: Option<u32>,
    /// `--registrations-per-minute`.
    pub registrations_per_minute: Option<u32>,
    /// `--registration-burst`.
    pub registration_burst: Option<u32>,
}

/// One URL, or a list of them (`["amqp://a/%2f", "amqp://b/%2f"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum UrlList {
    /// One URL (which may itself list several, separated by commas).
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl UrlList {
    /// The URLs as the command line writes them: separated by commas.
    pub fn joined(&self) -> String {
        match self {
            UrlList::One(url) => url.clone(),
            UrlList::Many(urls) => urls.join(","),
        }
    }
}

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML of the expected shape.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        source: toml::de::Error,
    },
}

/// `url` with the password of its user part replaced by `***`, for logs and messages:
/// `amqp://guest:guest@127.0.0.1:5672/%2f` → `amqp://guest:***@127.0.0.1:5672/%2f`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

impl FileConfig {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let file = FileConfig::parse(
            r#"
            listen = "127.0.0.1:9000"
            amqp_url = ["amqp://127.0.0.1:5681/%2f", "amqp://127.0.0.1:5682/%2f"]
            queue_type = "quorum"
            mongo_url = "mongodb://127.0.0.1:27017/?retryWrites=false"
            mongo_db = "chat"
            data_dir = "/tmp/chat"
            no_auth = true
            cache_capacity = 10
            store_wait_ms = 250
            log_format = "json"
            max_rooms_owned = 5
            sends_per_second = 1
            send_burst = 2
            room_creations_per_second = 3
            room_creation_burst = 4
            registrations_per_minute = 6
            registration_burst = 7
            "#,
        )
        .unwrap();
        assert_eq!(file.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(
            file.amqp_url.unwrap().joined(),
            "amqp://127.0.0.1:5681/%2f,amqp://127.0.0.1:5682/%2f"
        );
        assert_eq!(file.queue_type, Some(crate::broker::QueueType::Quorum));
        assert_eq!(file.mongo_db.as_deref(), Some("chat"));
        assert_eq!(file.cache_capacity, Some(10));
        assert_eq!(file.store_wait_ms, Some(250));
        assert_eq!(file.no_auth, Some(true));
        assert_eq!(file.max_rooms_owned, Some(5));
        assert_eq!(file.send_burst, Some(2));
        assert_eq!(file.registration_burst, Some(7));
    }

    #[test]
    fn credentials_never_reach_a_log_line() {
        assert_eq!(
            redacted("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redacted("mongodb://u:p%40ss@db:1,db2:2/?authSource=admin"),
            "mongodb://u:***@db:1,db2:2/?authSource=admin"
        );
        assert_eq!(
            redacted("mongodb://127.0.0.1:27017/?retryWrites=false"),
            "mongodb://127.0.0.1:27017/?retryWrites=false"
        );
        assert_eq!(redacted("not a url"), "not a url");
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        assert!(FileConfig::parse("lisen = \"127.0.0.1:1\"").is_err());
        assert!(FileConfig::parse("listen = \"not an address\"").is_err());
        assert!(FileConfig::parse("cache_capacity = -1").is_err());
        assert_eq!(FileConfig::parse("").unwrap(), FileConfig::default());
    }
}
