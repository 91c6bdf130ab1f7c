//! The other instances of the deployment, as this one hears them on the events exchange, and the
//! barriers that make a change (a deletion, a membership change) visible on every instance before
//! the instance that made it answers: each instance says it is alive every few seconds, and
//! answers a barrier once it has applied the change.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

/// How often an instance says it is alive.
pub(super) const ALIVE_EVERY: Duration = Duration::from_secs(2);
/// An instance not heard for this long is no longer waited for.
const PEER_TIMEOUT: Duration = Duration::from_secs(7);
/// Longest wait for every instance to apply a change; an instance slower than this is logged
/// and not waited for.
pub(super) const BARRIER_WAIT: Duration = Duration::from_secs(3);

/// Who is alive and which barriers are open. A std mutex: every section is short and sync.
#[derive(Default)]
pub(super) struct Peers {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When each other instance was last heard.
    heard: HashMap<Uuid, Instant>,
    /// Open barriers: the instances still to answer, and who waits.
    barriers: HashMap<Uuid, Barrier>,
}

struct Barrier {
    waiting: HashSet<Uuid>,
    done: Option<oneshot::Sender<()>>,
}

impl Barrier {
    /// Wakes the waiter if nobody is left to answer.
    fn settle(&mut self) {
        if self.waiting.is_empty()
            && let Some(done) = self.done.take()
        {
            let _ = done.send(());
        }
    }
}

impl Peers {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `peer` is alive; `true` if it was not known (so it may not know this instance
    /// either).
    pub fn heard(&self, peer: Uuid) -> bool {
        self.state().heard.insert(peer, Instant::now()).is_none()
    }

    /// `peer` stopped: nobody waits for it any more.
    pub fn left(&self, peer: Uuid) {
        let mut state = self.state();
        state.heard.remove(&peer);
        for barrier in state.barriers.values_mut() {
            barrier.waiting.remove(&peer);
            barrier.settle();
        }
    }

    /// How many other instances are alive.
    pub fn alive(&self) -> usize {
        let state = self.state();
        state
            .heard
            .values()
            .filter(|t| t.elapsed() < PEER_TIMEOUT)
            .count()
    }

    /// Opens barrier `id` for every instance alive now; the receiver fires once all answered.
    pub fn open(&self, id: Uuid) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state();
        let waiting = state
            .heard
            .iter()
            .filter(|(_, t)| t.elapsed() < PEER_TIMEOUT)
            .map(|(peer, _)| *peer)
            .collect();
        let mut barrier = Barrier {
            waiting,
            done: Some(tx),
        };
        barrier.settle();
        if barrier.done.is_some() {
            state.barriers.insert(id, barrier);
        }
        rx
    }

    /// `peer` applied the change of barrier `id`.
    pub fn applied(&self, id: Uuid, peer: Uuid) {
        let mut state = self.state();
        if let Some(barrier) = state.barriers.get_mut(&id) {
            barrier.waiting.remove(&peer);
            barrier.settle();
            if barrier.done.is_none() {
                state.barriers.remove(&id);
            }
        }
    }

    /// Gives up on barrier `id`; returns the instances that did not answer.
    pub fn close(&self, id: Uuid) -> Vec<Uuid> {
        let barrier = self.state().barriers.remove(&id);
        barrier
            .map(|b| b.waiting.into_iter().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_barrier_waits_for_every_live_instance_and_no_other() {
        let peers = Peers::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(peers.heard(a));
        assert!(!peers.heard(a), "known already");
        peers.heard(b);
        let id = Uuid::new_v4();
        let mut done = peers.open(id);
        peers.applied(id, a);
        assert!(done.try_recv().is_err(), "b has not answered");
        peers.applied(id, b);
        assert!(done.try_recv().is_ok());

        // An instance that leaves is not waited for; nor is anyone when nobody else is alive.
        let id = Uuid::new_v4();
        let mut done = peers.open(id);
        peers.applied(id, a);
        peers.left(b);
        assert!(done.try_recv().is_ok());
        peers.left(a);
        assert!(peers.open(Uuid::new_v4()).try_recv().is_ok());
        assert_eq!(peers.alive(), 0);
    }

    #[test]
    fn closing_a_barrier_names_who_did_not_answer() {
        let peers = Peers::default();
        let a = Uuid::new_v4();
        peers.heard(a);
        let id = Uuid::new_v4();
        let _done = peers.open(id);
        assert_eq!(peers.close(id), [a]);
        assert!(peers.close(id).is_empty());
    }
}
