//! How this instance's room consumers are doing, for `/readyz` and `/metrics`: a room whose
//! consumer is not subscribed (still starting, or failing to subscribe or to store) has its
//! messages wait in its queue until it recovers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics as m;
use crate::model::RoomName;
use crate::room::retrieve::Health;

/// How long a consumer may be starting or failing before its room counts as not stored (a
/// resubscription after a cancel, or one failed write, is not worth reporting).
pub(super) const STALL_GRACE: Duration = Duration::from_secs(2);

/// Why a room is not consumed, and since when.
struct NotConsuming {
    since: Instant,
    why: String,
}

/// Every room with a consumer on this instance; those not subscribed with since when and why.
/// A std mutex: every section is short and sync.
#[derive(Default)]
pub(super) struct RoomHealth {
    rooms: Mutex<HashMap<RoomName, Option<NotConsuming>>>,
}

impl RoomHealth {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, Option<NotConsuming>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A consumer for `room` is starting: the room counts as not consumed until it subscribes.
    pub fn starting(&self, room: &RoomName) {
        let mut rooms = self.rooms();
        rooms.entry(room.clone()).or_insert_with(|| {
            Some(NotConsuming {
                since: Instant::now(),
                why: "its consumer is starting".into(),
            })
        });
        publish(&rooms);
    }

    /// A consumer's news.
    pub fn report(&self, room: &RoomName, health: Health) {
        let mut rooms = self.rooms();
        match health {
            Health::Consuming => {
                rooms.insert(room.clone(), None);
            }
            Health::Stopped => {
                rooms.remove(room);
            }
            Health::Failing(why) => {
                let state = rooms.entry(room.clone()).or_insert(None);
                match state {
                    Some(not) => not.why = why,
                    None => {
                        *state = Some(NotConsuming {
                            since: Instant::now(),
                            why,
                        })
                    }
                }
            }
        }
        publish(&rooms);
    }

    /// The rooms whose consumer has not been consuming for at least `grace`, in name order, with
    /// why.
    pub fn stalled(&self, grace: Duration) -> Vec<(RoomName, String)> {
        let mut stalled: Vec<(RoomName, String)> = self
            .rooms()
            .iter()
            .filter_map(|(room, state)| {
                let not = state.as_ref()?;
                (not.since.elapsed() >= grace).then(|| (room.clone(), not.why.clone()))
            })
            .collect();
        stalled.sort();
        stalled
    }
}

/// Sets the rooms gauges (known, consuming).
fn publish(rooms: &HashMap<RoomName, Option<NotConsuming>>) {
    let consuming = rooms.values().filter(|state| state.is_none()).count();
    metrics::gauge!(m::ROOMS_KNOWN).set(rooms.len() as f64);
    metrics::gauge!(m::ROOMS_CONSUMING).set(consuming as f64);
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

    #[test]
    fn a_starting_consumer_counts_until_it_subscribes_and_a_stopped_one_not_at_all() {
        let health = RoomHealth::default();
        let (a, b) = (RoomName::new("a").unwrap(), RoomName::new("b").unwrap());
        health.starting(&a);
        health.starting(&b);
        assert_eq!(health.stalled(Duration::ZERO).len(), 2);
        health.report(&a, Health::Consuming);
        health.report(&b, Health::Stopped);
        assert!(health.stalled(Duration::ZERO).is_empty());
        // A consumer restarting keeps its state until it reports.
        health.starting(&a);
        assert!(health.stalled(Duration::ZERO).is_empty());
    }
}
