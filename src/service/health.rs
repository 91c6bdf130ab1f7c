//! Which rooms this instance cannot store right now (their consumer cannot subscribe, or cannot
//! write to the store), for `/readyz`: a room's messages wait in its queue until it recovers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::RoomName;
use crate::room::retrieve::Health;

/// How long a consumer may fail before its room counts as not stored (a resubscription after a
/// cancel, or one failed write, is not worth reporting).
pub(super) const STALL_GRACE: Duration = Duration::from_secs(2);

/// Failing consumers, since when and why. A std mutex: every section is short and sync.
#[derive(Default)]
pub(super) struct RoomHealth {
    failing: Mutex<HashMap<RoomName, (Instant, String)>>,
}

impl RoomHealth {
    fn failing(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, (Instant, String)>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A consumer's news.
    pub fn report(&self, room: &RoomName, health: Health) {
        let mut failing = self.failing();
        match health {
            Health::Consuming | Health::Stopped => {
                failing.remove(room);
            }
            Health::Failing(why) => {
                let entry = failing
                    .entry(room.clone())
                    .or_insert_with(|| (Instant::now(), String::new()));
                entry.1 = why;
            }
        }
    }

    /// The rooms whose consumer has failed for at least `grace`, in name order, with why.
    pub fn stalled(&self, grace: Duration) -> Vec<(RoomName, String)> {
        let mut stalled: Vec<(RoomName, String)> = self
            .failing()
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= grace)
            .map(|(room, (_, why))| (room.clone(), why.clone()))
            .collect();
        stalled.sort();
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_stalled_from_its_first_failure_until_it_consumes_again() {
        let health = RoomHealth::default();
        let room = RoomName::new("r").unwrap();
        health.report(&room, Health::Failing("cannot consume".into()));
        assert!(
            health.stalled(Duration::from_secs(60)).is_empty(),
            "not for long yet"
        );
        health.report(&room, Health::Failing("cannot store".into()));
        assert_eq!(
            health.stalled(Duration::ZERO),
            [(room.clone(), "cannot store".to_string())]
        );
        health.report(&room, Health::Consuming);
        assert!(health.stalled(Duration::ZERO).is_empty());
    }
}
