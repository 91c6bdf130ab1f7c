//! The bench's results: figures as rows (value, the baseline it is compared to, the ratio, the
//! issue's target and PASS/MISS) and the machine they were measured on. Serialized, this is the
//! `--json` document; [`super::table`] shows it to people.

use serde::{Deserialize, Serialize};

/// One run of `mess-chat bench`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// When the run started, RFC 3339 in UTC.
    pub date: String,
    /// What it ran on.
    pub machine: Machine,
    /// Whether it was the short smoke run (`--quick`), whose figures are rougher.
    pub quick: bool,
    /// One entry per back end measured.
    pub backends: Vec<BackendReport>,
}

/// The machine a run was measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Cores available to the process.
    pub cores: usize,
    /// CPU model, from `/proc/cpuinfo`.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
}

/// The figures of one back end, all measured in one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendReport {
    /// `embedded` or `real`.
    pub backend: String,
    /// What the broker was.
    pub broker: String,
    /// What the store was.
    pub store: String,
    /// How the service was loaded.
    pub load: String,
    /// The figures, in the order the table shows them.
    pub rows: Vec<Row>,
    /// Failed requests and other things that went wrong, one line each.
    pub problems: Vec<String>,
}

/// The unit of a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Operations per second.
    PerSecond,
    /// Milliseconds.
    Millis,
    /// Microseconds.
    Micros,
    /// Mebibytes.
    Mib,
    /// Kibibytes.
    Kib,
    /// A count of rooms.
    Rooms,
}

/// Which number a target constrains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// The figure itself.
    Value,
    /// The figure divided by its baseline.
    Ratio,
}

/// A goal from the issue, e.g. "p99 below 50 ms" or "at least half the baseline".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// What is constrained.
    pub on: Measure,
    /// `true`: at least `limit`; `false`: below `limit`.
    pub at_least: bool,
    /// The bound.
    pub limit: f64,
}

impl Target {
    /// The figure must be at least `limit`.
    pub fn at_least(limit: f64) -> Self {
        Self {
            on: Measure::Value,
            at_least: true,
            limit,
        }
    }

    /// The figure must be below `limit`.
    pub fn below(limit: f64) -> Self {
        Self {
            on: Measure::Value,
            at_least: false,
            limit,
        }
    }

    /// The figure must be at least `limit` times its baseline.
    pub fn ratio_at_least(limit: f64) -> Self {
        Self {
            on: Measure::Ratio,
            at_least: true,
            limit,
        }
    }

    /// The figure must be below `limit` times its baseline.
    pub fn ratio_below(limit: f64) -> Self {
        Self {
            on: Measure::Ratio,
            at_least: false,
            limit,
        }
    }

    /// Whether `measured` meets the target; a missing figure does not.
    pub fn met_by(&self, measured: Option<f64>) -> bool {
        match measured {
            Some(v) if self.at_least => v >= self.limit,
            Some(v) => v < self.limit,
            None => false,
        }
    }
}

/// A baseline figure a service figure is compared to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Which baseline, e.g. "raw publish".
    pub name: String,
    /// Its value, in the unit of the row.
    pub value: Option<f64>,
}

/// One figure of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// What was measured.
    pub figure: String,
    /// The measured value; `None` when nothing could be measured.
    pub value: Option<f64>,
    /// Its unit.
    pub unit: Unit,
    /// What it is compared to, if anything.
    pub baseline: Option<Baseline>,
    /// `value / baseline`.
    pub ratio: Option<f64>,
    /// The goal for it, if any.
    pub target: Option<Target>,
    /// Whether the goal is met (`None` without a goal).
    pub pass: Option<bool>,
}

impl Row {
    /// A figure; a NaN or infinite value counts as not measured.
    pub fn new(figure: impl Into<String>, value: f64, unit: Unit) -> Self {
        Self {
            figure: figure.into(),
            value: value.is_finite().then_some(value),
            unit,
            baseline: None,
            ratio: None,
            target: None,
            pass: None,
        }
    }

    /// Compares the figure to a baseline in the same unit.
    pub fn against(mut self, name: impl Into<String>, baseline: f64) -> Self {
        let baseline = baseline.is_finite().then_some(baseline);
        self.ratio = match (self.value, baseline) {
            (Some(v), Some(b)) if b > 0.0 => Some(v / b),
            _ => None,
        };
        self.baseline = Some(Baseline {
            name: name.into(),
            value: baseline,
        });
        self.judge();
        self
    }

    /// Replaces the ratio with one measured in pairs: the median, over rounds taken in turn with
    /// the baseline's, of each round's figure over the baseline's round beside it. A machine
    /// whose speed drifts during the run disturbs it less than the ratio of the two medians
    /// (which the value and baseline columns still show).
    pub fn paired(mut self, ratio: Option<f64>) -> Self {
        self.ratio = ratio.filter(|r| r.is_finite());
        self.judge();
        self
    }

    /// Sets the figure's goal.
    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self.judge();
        self
    }

    fn judge(&mut self) {
        self.pass = self.target.map(|t| {
            t.met_by(match t.on {
                Measure::Value => self.value,
                Measure::Ratio => self.ratio,
            })
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report of one embedded back end with these rows and one problem.
    pub(crate) fn report(rows: Vec<Row>) -> Report {
        Report {
            date: "2026-01-02T03:04:05Z".into(),
            machine: Machine {
                cores: 2,
                cpu: "Test CPU".into(),
                kernel: "6.1".into(),
            },
            quick: false,
            backends: vec![BackendReport {
                backend: "embedded".into(),
                broker: "in-process".into(),
                store: "redb".into(),
                load: "16 rooms".into(),
                rows,
                problems: vec!["3× 503 unavailable".into()],
            }],
        }
    }

    #[test]
    fn a_paired_ratio_replaces_the_ratio_of_the_medians_and_is_judged() {
        let row = Row::new("x", 6.0, Unit::PerSecond)
            .against("b", 8.0)
            .target(Target::ratio_at_least(0.8))
            .paired(Some(0.85));
        assert_eq!((row.ratio, row.pass), (Some(0.85), Some(true)));
        let row = row.paired(None);
        assert_eq!((row.ratio, row.pass), (None, Some(false)));
    }

    #[test]
    fn a_ratio_target_is_judged_against_the_baseline() {
        let row = Row::new("acked sends", 600.0, Unit::PerSecond)
            .target(Target::ratio_at_least(0.5))
            .against("raw publish", 1000.0);
        assert_eq!(row.ratio, Some(0.6));
        assert_eq!(row.pass, Some(true));
        let row = Row::new("acked sends", 400.0, Unit::PerSecond)
            .against("raw publish", 1000.0)
            .target(Target::ratio_at_least(0.5));
        assert_eq!(row.pass, Some(false));
    }

    #[test]
    fn a_value_target_is_strict_below_and_inclusive_at_least() {
        assert!(!Target::below(5.0).met_by(Some(5.0)));
        assert!(Target::below(5.0).met_by(Some(4.99)));
        assert!(Target::at_least(20_000.0).met_by(Some(20_000.0)));
        assert!(!Target::at_least(1.0).met_by(None));
    }

    #[test]
    fn a_figure_that_could_not_be_measured_misses_its_target() {
        let row = Row::new("p99", f64::NAN, Unit::Millis).target(Target::below(50.0));
        assert_eq!(row.value, None);
        assert_eq!(row.pass, Some(false));
    }

    #[test]
    fn the_json_form_round_trips() {
        let original = report(vec![
            Row::new("history p50", 0.8, Unit::Millis).target(Target::below(2.0)),
            Row::new("p99", f64::NAN, Unit::Millis),
        ]);
        let json = serde_json::to_string(&original).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.backends[0].rows, original.backends[0].rows);
        assert!(json.contains("\"pass\":true"));
    }
}
