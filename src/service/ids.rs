//! Message ids, unique across every instance: each instance leases a number (one of
//! [`MessageId::INSTANCES`]) from the store and makes ids of the clock, its number and a counter
//! within the millisecond ([`MessageId`]). The lease is renewed every [`RENEW_EVERY`] and lasts
//! [`LEASE_TTL`] from its last renewal; an instance stops making ids [`SAFETY`] before its lease
//! could expire, so that another instance taking the number later never makes an id this one made
//! (as long as the instances' clocks differ by less than that).
//!
//! The lease is long on purpose: while the store is down nobody can take a number, and an
//! instance that cannot renew keeps making ids, so sends are still accepted (the broker holds them)
//! through a store outage of up to ten minutes. The price is that a crashed instance's number is
//! taken again only ten minutes later (a clean stop gives it back at once): at most
//! [`MessageId::INSTANCES`] instances may start within any ten minutes without stopping cleanly.
//!
//! Without a lease (the store cannot be reached at start, or for longer than the lease) sends are
//! refused with 503: nothing is published without an id.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ChatError, ChatService};
use crate::backoff::Backoff;
use crate::model::MessageId;

/// How long a lease lasts unless renewed.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(10 * 60);
/// How often a lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long the first catch-up waits for the instance's first lease.
const FIRST_LEASE_WAIT: Duration = Duration::from_secs(1);
/// How long before its lease could expire an instance stops making ids.
const SAFETY: Duration = Duration::from_secs(5);

/// This instance's id maker. A std mutex: every section is short and sync.
pub(super) struct Ids {
    state: Mutex<State>,
}

struct State {
    /// The leased number and until when ids may be made with it.
    lease: Option<(u16, Instant)>,
    /// The millisecond of the last id made (it may run ahead of the clock under a burst of more
    /// than [`MessageId::PER_MS`] ids a millisecond).
    last_ms: i64,
    /// Ids made in `last_ms` so far, minus one.
    counter: u16,
}

impl Default for Ids {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                lease: None,
                last_ms: 0,
                counter: 0,
            }),
        }
    }
}

impl Ids {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new id.
    pub fn next(&self) -> Result<MessageId, ChatError> {
        let mut state = self.state();
        let number = match state.lease {
            Some((number, valid_until)) if Instant::now() < valid_until => number,
            _ => {
                return Err(ChatError::Unavailable(
                    "this instance has no number to make message ids with (it cannot reach the \
                     message store)"
                        .into(),
                ));
            }
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        if now_ms > state.last_ms {
            state.last_ms = now_ms;
            state.counter = 0;
        } else {
            state.counter += 1;
            if state.counter >= MessageId::PER_MS {
                state.last_ms += 1;
                state.counter = 0;
            }
        }
        MessageId::compose(state.last_ms, number, state.counter)
            .ok_or_else(|| ChatError::Internal("the clock is outside the id range".into()))
    }

    /// Whether ids can be made now (a lease is held and has not run out).
    pub fn usable(&self) -> bool {
        self.state()
            .lease
            .is_some_and(|(_, valid_until)| Instant::now() < valid_until)
    }

    /// The leased number, if any.
    pub fn number(&self) -> Option<u16> {
        self.state().lease.map(|(number, _)| number)
    }

    fn leased(&self, number: u16, renewed_at: Instant) {
        self.state().lease = Some((number, renewed_at + LEASE_TTL - SAFETY));
    }

    fn lost(&self) {
        self.state().lease = None;
    }
}

impl ChatService {
    /// This instance's leased number, waiting a little for the first lease (taken at start,
    /// beside subscribing to the cluster events); `None` if there is none by then.
    pub(super) async fn leased_number(&self) -> Option<u16> {
        let deadline = Instant::now() + FIRST_LEASE_WAIT;
        loop {
            let number = self.inner.ids.number();
            if number.is_some() || Instant::now() >= deadline {
                return number;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Keeps this instance's lease of a number: takes one, renews it, takes another if it was
    /// lost, gives it back on shutdown. `ready` fires once the first is held.
    pub(super) async fn keep_leasing(
        self,
        shutdown: CancellationToken,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let (store, holder) = (self.inner.store.clone(), self.inner.instance);
        let ids = &self.inner.ids;
        let mut ready = Some(ready);
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let asked = Instant::now();
            let number = match ids.number() {
                Some(number) => match store.renew_instance(number, holder, LEASE_TTL).await {
                    Ok(true) => Some(number),
                    Ok(false) => {
                        tracing::warn!(number, "lost this instance's number; taking another");
                        ids.lost();
                        None
                    }
                    Err(e) => {
                        // Ids stay valid until the lease could expire; try again soon.
                        tracing::warn!(error = %e, "cannot renew this instance's number");
                        if !backoff.wait(&shutdown).await {
                            break;
                        }
                        continue;
                    }
                },
                None => None,
            };
            let number = match number {
                Some(number) => Some(number),
                None => match take(&store, holder).await {
                    Ok(Some(number)) => {
                        tracing::info!(number, "leased an instance number for message ids");
                        Some(number)
                    }
                    Ok(None) => {
                        tracing::error!(
                            "every instance number is held: at most {} instances can send",
                            MessageId::INSTANCES
                        );
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot lease an instance number");
                        None
                    }
                },
            };
            let Some(number) = number else {
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            };
            ids.leased(number, asked);
            backoff.reset();
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(RENEW_EVERY) => {}
            }
        }
        if let Some(number) = ids.number() {
            ids.lost();
            let _ = store.release_instance(number, holder).await;
        }
    }
}

async fn take(
    store: &std::sync::Arc<dyn crate::store::Store>,
    holder: Uuid,
) -> Result<Option<u16>, crate::store::StoreError> {
    store
        .lease_instance(holder, MessageId::INSTANCES, LEASE_TTL)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_increasing_even_past_the_counter_in_one_millisecond() {
        let ids = Ids::default();
        assert!(ids.next().is_err(), "no ids without a lease");
        ids.leased(5, Instant::now());
        let made: Vec<MessageId> = (0..1000).map(|_| ids.next().unwrap()).collect();
        assert!(made.windows(2).all(|w| w[0] < w[1]));
        assert!(made.iter().all(|id| id.instance() == 5));
        ids.lost();
        assert!(ids.next().is_err());
    }
}
