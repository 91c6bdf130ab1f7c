//! What converting an earlier version's messages needs on every back end: new ids, made from each
//! message's own `sent_time` so that they stay time-ordered, and unique across the whole store.

use std::collections::HashMap;

use super::StoreError;
use crate::model::MessageId;

/// Ids for converted messages: their own millisecond (instance number 0: the conversion runs
/// while no instance serves, before any of them issues ids again), and a counter per
/// millisecond across the whole store; a full millisecond lends from the next one.
#[derive(Default)]
pub struct MigrationIds {
    used: HashMap<i64, u16>,
}

impl MigrationIds {
    /// The next id for a message sent at `sent_ms` (milliseconds since 1970).
    pub fn id_for(&mut self, sent_ms: i64) -> Result<MessageId, StoreError> {
        let mut ms = sent_ms.max(MessageId::EPOCH_MS);
        loop {
            let counter = self.used.entry(ms).or_default();
            if *counter < MessageId::PER_MS {
                let id = MessageId::compose(ms, 0, *counter).ok_or_else(|| {
                    StoreError::Malformed("a sent_time outside the id clock's range".into())
                })?;
                *counter += 1;
                return Ok(id);
            }
            ms += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_ids_follow_sent_times_and_never_repeat() {
        let mut ids = MigrationIds::default();
        let t = MessageId::EPOCH_MS + 1000;
        let all: Vec<MessageId> = (0..200).map(|_| ids.id_for(t).unwrap()).collect();
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 200);
        assert_eq!(all, unique, "in order");
        assert_eq!(all[0].unix_ms(), t);
        assert!(ids.id_for(t + 10).unwrap() > all[199]);
    }
}
