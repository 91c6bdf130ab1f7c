//! Latency samples and their percentiles (nearest rank), and the tally of failed requests: the
//! pure arithmetic behind the bench's figures.

use std::collections::BTreeMap;
use std::time::Duration;

/// Durations measured by one phase, in no particular order.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<Duration>,
    sorted: bool,
}

impl Samples {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one duration.
    pub fn push(&mut self, value: Duration) {
        self.values.push(value);
        self.sorted = false;
    }

    /// Takes in another phase's samples.
    pub fn merge(&mut self, other: Samples) {
        self.values.extend(other.values);
        self.sorted = false;
    }

    /// How many durations were recorded.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `q`-th percentile (0 < q ≤ 100) by nearest rank: the smallest sample with at least
    /// `q`% of the samples at or below it. `None` without samples.
    pub fn percentile(&mut self, q: f64) -> Option<Duration> {
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
        percentile_of_sorted(&self.values, q)
    }

    /// The percentile in milliseconds (NaN without samples, which the report shows as "n/a").
    pub fn percentile_ms(&mut self, q: f64) -> f64 {
        self.percentile(q)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
}

impl From<Vec<Duration>> for Samples {
    fn from(values: Vec<Duration>) -> Self {
        Self {
            values,
            sorted: false,
        }
    }
}

/// Nearest-rank percentile of an ascending slice.
pub fn percentile_of_sorted(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((q / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// Failed requests by kind (an HTTP status with the error code of its body, or a transport
/// error), so the report can say what went wrong and how often.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Errors {
    counts: BTreeMap<String, u64>,
}

impl Errors {
    /// Counts one failure of this kind.
    pub fn record(&mut self, kind: impl Into<String>) {
        *self.counts.entry(kind.into()).or_default() += 1;
    }

    /// Adds another tally to this one.
    pub fn merge(&mut self, other: Errors) {
        for (kind, n) in other.counts {
            *self.counts.entry(kind).or_default() += n;
        }
    }

    /// All failures counted.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// One line, most frequent kind first: `"12× 503 unavailable, 1× timeout"`; empty if none.
    pub fn summary(&self) -> String {
        let mut kinds: Vec<(&String, &u64)> = self.counts.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        kinds
            .iter()
            .map(|(kind, n)| format!("{n}× {kind}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_hundred() {
        let mut samples = Samples::new();
        for v in (1..=100).rev() {
            samples.push(ms(v));
        }
        assert_eq!(samples.percentile(50.0), Some(ms(50)));
        assert_eq!(samples.percentile(99.0), Some(ms(99)));
        assert_eq!(samples.percentile(100.0), Some(ms(100)));
        assert_eq!(samples.percentile(0.1), Some(ms(1)));
    }

    #[test]
    fn p99_of_few_samples_is_the_worst_one() {
        let sorted = [ms(1), ms(2), ms(3), ms(40)];
        assert_eq!(percentile_of_sorted(&sorted, 99.0), Some(ms(40)));
        assert_eq!(percentile_of_sorted(&sorted, 50.0), Some(ms(2)));
    }

    #[test]
    fn no_samples_have_no_percentile() {
        let mut samples = Samples::new();
        assert_eq!(samples.percentile(50.0), None);
        assert!(samples.percentile_ms(50.0).is_nan());
    }

    #[test]
    fn merged_samples_are_sorted_again() {
        let mut a = Samples::new();
        a.push(ms(5));
        assert_eq!(a.percentile(50.0), Some(ms(5)));
        let mut b = Samples::new();
        b.push(ms(1));
        b.push(ms(2));
        a.merge(b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.percentile(50.0), Some(ms(2)));
    }

    #[test]
    fn error_summary_puts_the_most_frequent_kind_first() {
        let mut errors = Errors::default();
        errors.record("timeout");
        let mut more = Errors::default();
        more.record("503 unavailable");
        more.record("503 unavailable");
        errors.merge(more);
        assert_eq!(errors.total(), 3);
        assert_eq!(errors.summary(), "2× 503 unavailable, 1× timeout");
        assert_eq!(Errors::default().summary(), "");
    }
}
