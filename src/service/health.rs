//! How this instance's room consumers are doing, for `/readyz` and `/metrics`: a room whose
//! consumer is not subscribed (still starting, or failing to subscribe or to store) has its
//! messages wait in its queue until it recovers.

use std::collections::{HashMap, HashSet};
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
    /// Started with the instance: counted at once, without the grace.
    starting: bool,
}

/// Every room with a consumer on this instance; those not subscribed with since when and why.
/// A std mutex: every section is short and sync.
#[derive(Default)]
pub(super) struct RoomHealth {
    rooms: Mutex<Rooms>,
}

/// The rooms' states, and how many consume (kept as they change: counting 10,000 rooms on each
/// report made starting them quadratic).
#[derive(Default)]
struct Rooms {
    states: HashMap<RoomName, Option<NotConsuming>>,
    consuming: usize,
    /// The rooms whose consumer here stored a batch since it last subscribed.
    numbering: HashSet<RoomName>,
}

impl Rooms {
    /// Sets a room's state (`None`: forgets it), keeping the count, and publishes the gauges.
    fn set(&mut self, room: &RoomName, state: Option<Option<NotConsuming>>) {
        let old = match state {
            Some(state) => self.states.insert(room.clone(), state),
            None => self.states.remove(room),
        };
        if matches!(old, Some(None)) {
            self.consuming -= 1;
        }
        if matches!(self.states.get(room), Some(None)) {
            self.consuming += 1;
        }
        metrics::gauge!(m::ROOMS_KNOWN).set(self.states.len() as f64);
        metrics::gauge!(m::ROOMS_CONSUMING).set(self.consuming as f64);
    }

    /// Marks whether this instance numbers `room` now, and publishes the gauge.
    fn numbering(&mut self, room: &RoomName, numbering: bool) {
        let changed = match numbering {
            true => !self.numbering.contains(room) && self.numbering.insert(room.clone()),
            false => self.numbering.remove(room),
        };
        if changed {
            metrics::gauge!(m::ROOMS_NUMBERING).set(self.numbering.len() as f64);
        }
    }
}

impl RoomHealth {
    fn rooms(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A consumer for `room` is starting: the room counts as not consumed until it subscribes,
    /// at once if `at_start` (the instance is starting: it is not ready before its rooms are),
    /// else after the grace (a room just created, or a consumer restarting, is not worth it).
    pub fn starting(&self, room: &RoomName, at_start: bool) {
        let mut rooms = self.rooms();
        if !rooms.states.contains_key(room) {
            let starting = NotConsuming {
                since: Instant::now(),
                why: "its consumer is starting".into(),
                starting: at_start,
            };
            rooms.set(room, Some(Some(starting)));
        }
    }

    /// A consumer's news.
    pub fn report(&self, room: &RoomName, health: Health) {
        let mut rooms = self.rooms();
        // A new subscription may be standing by; a stored batch shows it is the active one.
        rooms.numbering(room, matches!(health, Health::Stored));
        match health {
            Health::Consuming | Health::Stored => rooms.set(room, Some(None)),
            Health::Stopped => rooms.set(room, None),
            Health::Failing(why) => match rooms.states.get_mut(room) {
                Some(Some(not)) => not.why = why,
                _ => {
                    let failing = NotConsuming {
                        since: Instant::now(),
                        why,
                        starting: false,
                    };
                    rooms.set(room, Some(Some(failing)));
                }
            },
        }
    }

    /// How many rooms this instance numbers: their consumer here stored a batch since it last
    /// subscribed (so it is the active one).
    pub fn numbering_count(&self) -> usize {
        self.rooms().numbering.len()
    }

    /// How many consumers started with the instance have not subscribed yet.
    pub fn starting_count(&self) -> usize {
        self.rooms()
            .states
            .values()
            .filter(|state| state.as_ref().is_some_and(|not| not.starting))
            .count()
    }

    /// The rooms whose consumer is starting, or has been failing for at least `grace`, in name
    /// order, with why.
    pub fn stalled(&self, grace: Duration) -> Vec<(RoomName, String)> {
        let mut stalled: Vec<(RoomName, String)> = self
            .rooms()
            .states
            .iter()
            .filter_map(|(room, state)| {
                let not = state.as_ref()?;
                (not.starting || not.since.elapsed() >= grace)
                    .then(|| (room.clone(), not.why.clone()))
            })
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

    #[test]
    fn a_starting_consumer_counts_until_it_subscribes_and_a_stopped_one_not_at_all() {
        let health = RoomHealth::default();
        let (a, b) = (RoomName::new("a").unwrap(), RoomName::new("b").unwrap());
        health.starting(&a, true);
        health.starting(&b, true);
        assert_eq!(
            health.stalled(Duration::from_secs(60)).len(),
            2,
            "a starting consumer counts at once"
        );
        health.report(&a, Health::Consuming);
        health.report(&b, Health::Stopped);
        assert!(health.stalled(Duration::ZERO).is_empty());
        // A consumer restarting keeps its state until it reports.
        health.starting(&a, true);
        assert!(health.stalled(Duration::ZERO).is_empty());
        let rooms = health.rooms();
        assert_eq!((rooms.states.len(), rooms.consuming), (1, 1));
    }

    #[test]
    fn the_count_of_consuming_rooms_follows_every_change() {
        let health = RoomHealth::default();
        let rooms: Vec<RoomName> = (0..5)
            .map(|i| RoomName::new(format!("r{i}")).unwrap())
            .collect();
        for room in &rooms {
            health.starting(room, false);
            health.report(room, Health::Consuming);
        }
        health.report(&rooms[0], Health::Failing("cannot store".into()));
        health.report(&rooms[0], Health::Failing("still cannot".into()));
        health.report(&rooms[1], Health::Stopped);
        health.report(&rooms[2], Health::Consuming);
        let counted = health.rooms().consuming;
        let actual = health
            .rooms()
            .states
            .values()
            .filter(|s| s.is_none())
            .count();
        assert_eq!((counted, actual), (3, 3));
    }

    #[test]
    fn a_room_is_numbered_here_from_a_stored_batch_until_its_consumer_subscribes_again() {
        let health = RoomHealth::default();
        let (a, b) = (RoomName::new("a").unwrap(), RoomName::new("b").unwrap());
        for room in [&a, &b] {
            health.starting(room, false);
            health.report(room, Health::Consuming);
        }
        assert_eq!(health.numbering_count(), 0, "subscribed, maybe standing by");
        health.report(&a, Health::Stored);
        health.report(&a, Health::Stored);
        health.report(&b, Health::Stored);
        assert_eq!(health.numbering_count(), 2);
        health.report(&a, Health::Consuming);
        assert_eq!(
            health.numbering_count(),
            1,
            "a new subscription may stand by"
        );
        health.report(&b, Health::Failing("cannot store".into()));
        assert_eq!(health.numbering_count(), 0);
        health.report(&b, Health::Stored);
        health.report(&b, Health::Stopped);
        assert_eq!(health.numbering_count(), 0);
        assert_eq!(
            health.rooms().consuming,
            1,
            "a stored batch counts as consuming"
        );
    }
}
