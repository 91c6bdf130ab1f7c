//! The bench's results: figures as rows (value, the baseline it is compared to, the ratio, the
//! issue's target and PASS/MISS), the machine they were measured on, and their two forms, a
//! table for people and a JSON document for tools.

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
    /// Mebibytes.
    Mib,
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

    /// Whether `measured` meets the target; a missing figure does not.
    pub fn met_by(&self, measured: Option<f64>) -> bool {
        match measured {
            Some(v) if self.at_least => v >= self.limit,
            Some(v) => v < self.limit,
            None => false,
        }
    }

    fn describe(&self, unit: Unit) -> String {
        let bound = if self.at_least { "≥" } else { "<" };
        match self.on {
            Measure::Ratio => format!("{bound} {}× base", trim_float(self.limit)),
            Measure::Value => match unit {
                Unit::PerSecond => format!("{bound} {}/s", thousands(self.limit.round() as u64)),
                Unit::Millis => format!("{bound} {} ms", trim_float(self.limit)),
                Unit::Mib => format!("{bound} {} MiB", trim_float(self.limit)),
            },
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

/// A number without trailing zeros: `0.5`, `20`.
fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// An integer with thousands separators: `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A value in its unit, as the table shows it; `n/a` when missing.
pub fn format_value(value: Option<f64>, unit: Unit) -> String {
    let Some(v) = value else {
        return "n/a".into();
    };
    match unit {
        Unit::PerSecond if v < 100.0 => format!("{v:.1}/s"),
        Unit::PerSecond => format!("{}/s", thousands(v.round() as u64)),
        Unit::Millis if v < 10.0 => format!("{v:.2} ms"),
        Unit::Millis if v < 100.0 => format!("{v:.1} ms"),
        Unit::Millis => format!("{} ms", thousands(v.round() as u64)),
        Unit::Mib => format!("{v:.1} MiB"),
    }
}

/// A ratio: two decimals, or four when it is small.
pub fn format_ratio(ratio: Option<f64>) -> String {
    match ratio {
        Some(r) if r >= 0.1 => format!("{r:.2}×"),
        Some(r) => format!("{r:.4}×"),
        None => String::new(),
    }
}

const HEADERS: [&str; 7] = [
    "backend", "figure", "value", "baseline", "ratio", "target", "result",
];

fn cells(backend: &str, row: &Row) -> [String; 7] {
    let baseline = row
        .baseline
        .as_ref()
        .map(|b| format!("{} {}", b.name, format_value(b.value, row.unit)))
        .unwrap_or_default();
    let result = match row.pass {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "",
    };
    [
        backend.to_string(),
        row.figure.clone(),
        format_value(row.value, row.unit),
        baseline,
        format_ratio(row.ratio),
        row.target.map(|t| t.describe(row.unit)).unwrap_or_default(),
        result.to_string(),
    ]
}

/// The report as a text table with a header naming the date, the machine and the back ends.
pub fn table(report: &Report) -> String {
    let m = &report.machine;
    let mut out = format!(
        "mess-chat bench, {} — {} cores ({}), Linux {}{}\n",
        report.date,
        m.cores,
        m.cpu,
        m.kernel,
        if report.quick {
            " — quick run, rough figures"
        } else {
            ""
        }
    );
    for b in &report.backends {
        out += &format!(
            "{}: broker {}; store {}\n  load: {}\n",
            b.backend, b.broker, b.store, b.load
        );
    }
    let mut lines: Vec<[String; 7]> = vec![HEADERS.map(String::from)];
    for b in &report.backends {
        lines.extend(b.rows.iter().map(|row| cells(&b.backend, row)));
    }
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0))
        .collect();
    out.push('\n');
    for (i, line) in lines.iter().enumerate() {
        if i > 1 && line[0] != lines[i - 1][0] {
            out.push('\n');
        }
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            // Numbers are right-aligned, words left-aligned.
            if c == 2 || c == 4 {
                text += &format!("{}{cell}  ", " ".repeat(pad));
            } else {
                text += &format!("{cell}{}  ", " ".repeat(pad));
            }
        }
        out += text.trim_end();
        out.push('\n');
    }
    out.push('\n');
    for b in &report.backends {
        if b.problems.is_empty() {
            out += &format!("{}: no failed requests\n", b.backend);
        }
        for problem in &b.problems {
            out += &format!("{}: {problem}\n", b.backend);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rows: Vec<Row>) -> Report {
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
    fn values_are_shown_in_their_units() {
        assert_eq!(format_value(Some(1234567.4), Unit::PerSecond), "1,234,567/s");
        assert_eq!(format_value(Some(12.34), Unit::PerSecond), "12.3/s");
        assert_eq!(format_value(Some(1.234), Unit::Millis), "1.23 ms");
        assert_eq!(format_value(Some(42.25), Unit::Millis), "42.2 ms");
        assert_eq!(format_value(Some(1500.0), Unit::Millis), "1,500 ms");
        assert_eq!(format_value(Some(40.06), Unit::Mib), "40.1 MiB");
        assert_eq!(format_value(None, Unit::Mib), "n/a");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(format_ratio(Some(0.5)), "0.50×");
        assert_eq!(format_ratio(Some(0.01234)), "0.0123×");
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
    fn the_table_shows_targets_verdicts_and_problems() {
        let text = table(&report(vec![
            Row::new("raw confirmed publish", 10_000.0, Unit::PerSecond),
            Row::new("acked sends/s, concurrency 256", 6_000.0, Unit::PerSecond)
                .against("raw publish", 10_000.0)
                .target(Target::ratio_at_least(0.5)),
            Row::new("send→stored p50 @ 1000/s", 7.5, Unit::Millis).target(Target::below(5.0)),
        ]));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("mess-chat bench, 2026-01-02T03:04:05Z — 2 cores (Test CPU)"));
        let acked = lines
            .iter()
            .find(|l| l.contains("concurrency 256"))
            .expect("the acked row");
        for cell in ["6,000/s", "raw publish 10,000/s", "0.60×", "≥ 0.5× base", "PASS"] {
            assert!(acked.contains(cell), "{cell:?} missing from {acked:?}");
        }
        let p50 = lines.iter().find(|l| l.contains("p50")).expect("the p50 row");
        assert!(p50.contains("< 5 ms") && p50.ends_with("MISS"), "{p50:?}");
        assert!(text.contains("embedded: 3× 503 unavailable"));
        // Columns line up: the baseline column starts at the same place in every line.
        let header = lines.iter().find(|l| l.starts_with("backend")).unwrap();
        assert_eq!(header.find("baseline"), acked.find("raw publish"));
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
