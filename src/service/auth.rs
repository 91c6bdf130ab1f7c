//! Per-alias bearer tokens. Registering an alias returns a token `<alias>.<secret>`; the store
//! keeps only the SHA-256 of the secret, so a leaked database does not leak tokens. The secret is
//! 244 random bits, so a fast hash is enough (no password-style stretching needed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::ChatError;
use crate::model::{Alias, UserRecord, now};
use crate::store::Store;

/// Registers aliases and checks tokens; remembers the hashes it has already looked up.
pub struct Auth {
    store: Arc<dyn Store>,
    /// Token hashes by alias, filled on registration and first use. A std mutex: short sections.
    known: Mutex<HashMap<Alias, String>>,
}

fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Auth {
    /// Token checks against `store`'s users.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Registers `alias` and returns its token (shown once; only its hash is kept).
    pub async fn register(&self, alias: &Alias) -> Result<String, ChatError> {
        let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let record = UserRecord {
            alias: alias.clone(),
            token_hash: hash(&secret),
            create_time: now(),
        };
        if !self.store.create_user(&record).await? {
            return Err(ChatError::NameTaken(format!(
                "alias {alias} is already registered"
            )));
        }
        self.remember(alias, record.token_hash);
        Ok(format!("{alias}.{secret}"))
    }

    fn remember(&self, alias: &Alias, token_hash: String) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(alias.clone(), token_hash);
    }

    /// The alias a token belongs to, or `Unauthorized`.
    pub async fn authenticate(&self, token: &str) -> Result<Alias, ChatError> {
        let invalid = || ChatError::Unauthorized("invalid token".into());
        let (alias, secret) = token.split_once('.').ok_or_else(invalid)?;
        let alias = Alias::new(alias).map_err(|_| invalid())?;
        let cached = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            known.get(&alias).cloned()
        };
        let expected = match cached {
            Some(h) => h,
            None => {
                let record = self.store.load_user(&alias).await?.ok_or_else(invalid)?;
                self.remember(&alias, record.token_hash.clone());
                record.token_hash
            }
        };
        if hash(secret) == expected {
            Ok(alias)
        } else {
            Err(invalid())
        }
    }
}
