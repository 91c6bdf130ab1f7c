//! Validated names: a [`RoomName`] or an [`Alias`] can only hold a string that is safe as an AMQP
//! queue or exchange name *and* as a MongoDB collection name.
//!
//! One alphabet serves both: ASCII letters, digits, `_` and `-`, starting with a letter or a digit,
//! at most [`MAX_NAME_LEN`] bytes. That rules out, by construction, everything either system
//! reserves or forbids: `amq.*` and `system.*` (no dots), `$`, NUL, `/`, `..`, empty names and
//! over-long ones. Names that start with `_` stay free for the service's own collections.
//!
//! Names are case-insensitive, as people expect of chat aliases: `Ann` and `ann` are one alias,
//! `Lobby` and `lobby` one room. A name is kept in lower case, so every queue, exchange and
//! collection name is too.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted room name or alias, in bytes (well under AMQP's 255 and MongoDB's limits).
pub const MAX_NAME_LEN: usize = 64;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct NameError {
    /// Which kind of name was checked ("room name" or "alias").
    pub kind: &'static str,
    /// The rejected value, shortened so an error never echoes megabytes back.
    pub value: String,
    /// What rule it broke, in words a user can act on.
    pub reason: &'static str,
}

fn check(kind: &'static str, value: &str) -> Result<(), NameError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > MAX_NAME_LEN {
        Some("must be at most 64 characters long")
    } else if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("must start with a letter or a digit")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Some("may contain only ASCII letters, digits, '_' and '-'")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(NameError {
            kind,
            value: value.chars().take(80).collect(),
            reason,
        }),
    }
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `value` against the name alphabet; the name is kept in lower case.
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let mut value = value.into();
                check($kind, &value)?;
                value.make_ascii_lowercase();
                Ok(Self(value))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

validated_name!(
    /// A room's name: also its queue name, its exchange name (group rooms) and its collection name.
    RoomName,
    "room name"
);

validated_name!(
    /// A user's alias: also the name of the user's inbox queue.
    Alias,
    "alias"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_safe_alphabet() {
        for ok in [
            "general",
            "a",
            "Room-1",
            "bob_2",
            "0day",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert!(RoomName::new(ok).is_ok(), "{ok:?} should be valid");
            assert!(Alias::new(ok).is_ok(), "{ok:?} should be valid");
        }
    }

    #[test]
    fn rejects_names_reserved_or_forbidden_by_amqp_or_mongodb() {
        let too_long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "amq.gen",
            "system.users",
            "a$b",
            "a\0b",
            "a/b",
            "..",
            "a.b",
            "_hidden",
            "-x",
            "with space",
            "é",
            "room\n",
            &too_long,
        ] {
            let err = RoomName::new(bad).expect_err(bad);
            assert_eq!(err.kind, "room name");
            assert!(
                Alias::new(bad).is_err(),
                "{bad:?} should be an invalid alias"
            );
        }
    }

    #[test]
    fn names_are_case_insensitive_and_kept_in_lower_case() {
        assert_eq!(Alias::new("Ann").unwrap(), Alias::new("ann").unwrap());
        assert_eq!(RoomName::new("Room-1").unwrap().as_str(), "room-1");
        let parsed: Alias = serde_json::from_str("\"BOB\"").unwrap();
        assert_eq!(parsed.as_str(), "bob");
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let name: RoomName = serde_json::from_str("\"lobby\"").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"lobby\"");
        assert!(serde_json::from_str::<RoomName>("\"amq.x\"").is_err());
    }

    #[test]
    fn error_never_echoes_huge_input() {
        let err = Alias::new("y".repeat(10_000)).unwrap_err();
        assert!(err.value.len() <= 80);
    }
}
