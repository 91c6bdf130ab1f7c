//! What a bench run measures and for how long: the back ends it can run on, and the sizes and
//! lengths of its phases for the default run and for `--quick`.

use std::time::Duration;

/// Which back ends one bench process measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-process broker and a redb file in a temporary directory.
    Embedded,
    /// RabbitMQ and a MongoDB-protocol server.
    Real,
}

impl Backend {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Real => "real",
        }
    }
}

/// How long and how big each phase is.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rooms created for the memory figure.
    pub rooms: usize,
    /// Room creations in flight at once.
    pub rooms_in_flight: usize,
    /// Rooms the throughput and latency load is spread over.
    pub pool: usize,
    /// Length of each baseline.
    pub baseline: Duration,
    /// Unmeasured start of each closed-loop run.
    pub warmup: Duration,
    /// Measured length of each closed-loop run.
    pub closed: Duration,
    /// Concurrencies of the closed-loop runs.
    pub concurrencies: Vec<usize>,
    /// Length of each open-loop run.
    pub open: Duration,
    /// Offered rates of the open-loop runs, per second.
    pub rates: Vec<f64>,
    /// Length of the history run.
    pub history: Duration,
    /// Longest wait, after a phase, for the service to store what it had accepted.
    pub settle_limit: Duration,
}

impl Plan {
    /// The default run: about a minute per back end.
    pub fn standard() -> Self {
        Self {
            rooms: 1000,
            rooms_in_flight: 100,
            pool: 16,
            baseline: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            closed: Duration::from_secs(5),
            concurrencies: vec![1, 32, 256],
            open: Duration::from_secs(5),
            rates: vec![100.0, 1000.0],
            history: Duration::from_secs(3),
            settle_limit: Duration::from_secs(30),
        }
    }

    /// The `--quick` smoke run: about ten seconds per back end, 200 rooms.
    pub fn quick() -> Self {
        Self {
            rooms: 200,
            baseline: Duration::from_millis(600),
            warmup: Duration::from_millis(200),
            closed: Duration::from_millis(800),
            open: Duration::from_millis(1500),
            history: Duration::from_millis(600),
            settle_limit: Duration::from_secs(10),
            ..Self::standard()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_plan_is_shorter_but_measures_the_same_figures() {
        let (standard, quick) = (Plan::standard(), Plan::quick());
        assert_eq!(standard.concurrencies, vec![1, 32, 256]);
        assert_eq!(quick.concurrencies, standard.concurrencies);
        assert_eq!(quick.rates, standard.rates);
        assert!(quick.closed < standard.closed && quick.rooms < standard.rooms);
    }
}
