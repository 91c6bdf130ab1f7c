//! What one alias (or one client address) may take: a quota of rooms owned, and rate limits on
//! sends and room creations per alias and on registrations per client address, so that no single
//! caller can exhaust the deployment.
//!
//! The rate limits are `governor`'s keyed GCRA limiters: each key costs a few dozen bytes until
//! its allowance is whole again, and one task ([`ChatService::keep_limits_small`]) forgets the
//! keys that are back to a fresh state every [`FORGET_EVERY`], so the state stays bounded by the
//! callers of the last seconds (minutes, for registrations). They are per instance: N instances behind a load balancer allow up to
//! N times the rate. The quota is counted in the store, so it holds across instances.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

use super::{ChatError, ChatService};
use crate::model::Alias;

/// How often the limiters forget the keys that are back to a fresh state.
pub const FORGET_EVERY: Duration = Duration::from_secs(10);

/// A rate limit: `count` per `period` on average, bursts of up to `burst` at once. A `count`
/// of 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many per `period` on average (0: unlimited).
    pub count: u32,
    /// The period `count` is measured over.
    pub period: Duration,
    /// How many may come at once after a quiet while (at least 1).
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate {
        count: 0,
        period: Duration::from_secs(1),
        burst: 0,
    };

    /// `count` a second, bursts of `burst`.
    pub const fn per_second(count: u32, burst: u32) -> Self {
        Self {
            count,
            period: Duration::from_secs(1),
            burst,
        }
    }

    /// `count` a minute, bursts of `burst`.
    pub const fn per_minute(count: u32, burst: u32) -> Self {
        Self {
            count,
            period: Duration::from_secs(60),
            burst,
        }
    }

    /// `governor`'s quota for this rate; `None` when unlimited.
    fn quota(&self) -> Option<Quota> {
        let count = NonZeroU32::new(self.count)?;
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        let every = self.period.checked_div(count.get())?;
        Some(Quota::with_period(every)?.allow_burst(burst))
    }

    /// "50 a second (bursts of 200)", for messages.
    fn describe(&self) -> String {
        let unit = if self.period == Duration::from_secs(60) {
            "minute".to_string()
        } else if self.period == Duration::from_secs(1) {
            "second".to_string()
        } else {
            format!("{} s", self.period.as_secs_f64())
        };
        format!("{} a {unit} (bursts of {})", self.count, self.burst.max(1))
    }
}

/// The limits of one deployment (see the README's *Limits*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most rooms one alias may own at once (`None`: no quota). Counted in the store, so it holds
    /// across instances; concurrent creations by one alias may pass it by at most their number.
    pub rooms_owned: Option<u64>,
    /// Sends per alias.
    pub sends: Rate,
    /// Room creations per alias (explicit, or by a first send).
    pub room_creations: Rate,
    /// Registrations per client address (the TCP peer's; an IPv6 peer counts by its /64).
    pub registrations: Rate,
}

impl Limits {
    /// No quota, no rate limit: the library's default (benches and tests drive one alias hard).
    pub const NONE: Limits = Limits {
        rooms_owned: None,
        sends: Rate::UNLIMITED,
        room_creations: Rate::UNLIMITED,
        registrations: Rate::UNLIMITED,
    };

    /// What `mess-chat serve` applies unless told otherwise: generous for people, a wall for a
    /// script.
    pub const SERVE: Limits = Limits {
        rooms_owned: Some(1000),
        sends: Rate::per_second(50, 200),
        room_creations: Rate::per_second(10, 100),
        registrations: Rate::per_minute(10, 30),
    };
}

/// One keyed limiter and the rate it enforces.
struct Limiter<K: std::hash::Hash + Eq + Clone> {
    rate: Rate,
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            limiter: rate.quota().map(DefaultKeyedRateLimiter::keyed),
        }
    }

    /// Takes one cell for `key`, or says how long to wait for one.
    fn check(&self, key: &K) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Takes one cell for `key`, or refuses with `RateLimited`, saying `what` (given the rate,
    /// described) was too much.
    fn admit(&self, key: &K, what: impl FnOnce(String) -> String) -> Result<(), ChatError> {
        self.check(key)
            .map_err(|wait| limited(what(self.rate.describe()), wait))
    }

    fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn keys(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// The rate limiters of one instance.
pub(crate) struct RateLimits {
    sends: Limiter<Alias>,
    room_creations: Limiter<Alias>,
    registrations: Limiter<IpAddr>,
}

impl RateLimits {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            sends: Limiter::new(limits.sends),
            room_creations: Limiter::new(limits.room_creations),
            registrations: Limiter::new(limits.registrations),
        }
    }

    fn forget_idle(&self) {
        self.sends.forget_idle();
        self.room_creations.forget_idle();
        self.registrations.forget_idle();
    }

    /// Keys held now, over all limiters.
    fn keys(&self) -> usize {
        self.sends.keys() + self.room_creations.keys() + self.registrations.keys()
    }
}

/// `RateLimited`, waiting at least a second (`Retry-After` counts whole seconds).
fn limited(what: String, wait: Duration) -> ChatError {
    let retry_after = Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64);
    metrics::counter!(crate::metrics::RATE_LIMITED).increment(1);
    ChatError::RateLimited {
        message: format!("{what}; try again in {} s", retry_after.as_secs()),
        retry_after,
    }
}

/// The key of a client address: an IPv4 address (or an IPv4-mapped IPv6 one) as itself, an IPv6
/// address by its /64, since one host usually holds a whole /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl ChatService {
    /// Refuses a send by `alias` over its rate.
    pub(super) fn check_send_rate(&self, alias: &Alias) -> Result<(), ChatError> {
        let limits = &self.inner.rate_limits.sends;
        limits.admit(alias, |rate| {
            format!("too many sends by {alias}: at most {rate}")
        })
    }

    /// Refuses a room creation by `alias` over its rate.
    pub(super) fn check_room_creation_rate(&self, alias: &Alias) -> Result<(), ChatError> {
        let limits = &self.inner.rate_limits.room_creations;
        limits.admit(alias, |rate| {
            format!("too many rooms created by {alias}: at most {rate}")
        })
    }

    /// Refuses a registration from `client` over its address's rate (none when the address is
    /// not known).
    pub(super) fn check_registration_rate(&self, client: Option<IpAddr>) -> Result<(), ChatError> {
        let Some(ip) = client else {
            return Ok(());
        };
        let limits = &self.inner.rate_limits.registrations;
        limits.admit(&address_key(ip), |rate| {
            format!("too many registrations from {ip}: at most {rate}")
        })
    }

    /// Refuses a new room owned by `owner` once it owns its quota.
    pub(super) async fn check_rooms_owned(&self, owner: &Alias) -> Result<(), ChatError> {
        let Some(quota) = self.inner.config.limits.rooms_owned else {
            return Ok(());
        };
        let owned = self.inner.store.rooms_owned(owner).await?;
        if owned >= quota {
            metrics::counter!(crate::metrics::QUOTA_EXCEEDED).increment(1);
            return Err(ChatError::QuotaExceeded(format!(
                "{owner} owns {owned} rooms; the quota is {quota} rooms owned per alias: delete \
                 one to create another"
            )));
        }
        Ok(())
    }

    /// Every [`FORGET_EVERY`], drops the limiters' keys that are back to a fresh state, until
    /// `stop`: the one task that keeps their memory bounded.
    pub(super) async fn keep_limits_small(self, stop: CancellationToken) {
        super::every(FORGET_EVERY, stop, || {
            let limits = &self.inner.rate_limits;
            limits.forget_idle();
            metrics::gauge!(crate::metrics::RATE_LIMIT_KEYS).set(limits.keys() as f64);
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_next_waits_about_one_period_share() {
        let limiter = Limiter::new(Rate::per_second(10, 3));
        let key = 1u32;
        for _ in 0..3 {
            assert!(limiter.check(&key).is_ok());
        }
        let wait = limiter.check(&key).expect_err("over the burst");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(
            limiter.check(&2u32).is_ok(),
            "another key has its own burst"
        );
    }

    #[test]
    fn an_unlimited_rate_never_refuses() {
        let limiter = Limiter::new(Rate::UNLIMITED);
        for _ in 0..10_000 {
            assert!(limiter.check(&0u8).is_ok());
        }
        assert_eq!(limiter.keys(), 0);
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        let e = limited("x".into(), Duration::from_millis(10));
        assert!(matches!(e, ChatError::RateLimited { retry_after, .. }
            if retry_after == Duration::from_secs(1)));
        let e = limited("x".into(), Duration::from_millis(2100));
        assert!(matches!(e, ChatError::RateLimited { retry_after, .. }
            if retry_after == Duration::from_secs(3)));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rates_describe_themselves() {
        assert_eq!(
            Rate::per_minute(10, 30).describe(),
            "10 a minute (bursts of 30)"
        );
    }
}
