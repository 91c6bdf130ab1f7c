//! The report as people read it: a table of every back end's figures, values in their units,
//! each beside its baseline, the ratio, the target and PASS or MISS, under a header
//! naming the date, the machine and the back ends, and followed by what went wrong.

use super::report::{Measure, Report, Row, Target, Unit};

/// A target as the table shows it: `≥ 0.5× base`, `< 5 ms`, `≥ 20,000/s`.
pub fn describe_target(target: &Target, unit: Unit) -> String {
    let bound = if target.at_least { "≥" } else { "<" };
    match target.on {
        Measure::Ratio => format!("{bound} {}× base", trim_float(target.limit)),
        Measure::Value => match unit {
            Unit::PerSecond => format!("{bound} {}/s", thousands(target.limit.round() as u64)),
            Unit::Millis => format!("{bound} {} ms", trim_float(target.limit)),
            Unit::Micros => format!("{bound} {} µs", trim_float(target.limit)),
            Unit::Mib => format!("{bound} {} MiB", trim_float(target.limit)),
            Unit::Kib => format!("{bound} {} KiB", trim_float(target.limit)),
            Unit::Rooms => format!("{bound} {} rooms", thousands(target.limit.round() as u64)),
        },
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
        Unit::Micros => format!("{} µs", thousands(v.round() as u64)),
        Unit::Mib => format!("{v:.1} MiB"),
        Unit::Kib => format!("{v:.1} KiB"),
        Unit::Rooms => format!("{} rooms", thousands(v.round() as u64)),
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
        row.target
            .map(|t| describe_target(&t, row.unit))
            .unwrap_or_default(),
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
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
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
    use crate::bench::report::tests::report;

    #[test]
    fn values_are_shown_in_their_units() {
        assert_eq!(
            format_value(Some(1234567.4), Unit::PerSecond),
            "1,234,567/s"
        );
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
        for cell in [
            "6,000/s",
            "raw publish 10,000/s",
            "0.60×",
            "≥ 0.5× base",
            "PASS",
        ] {
            assert!(acked.contains(cell), "{cell:?} missing from {acked:?}");
        }
        let p50 = lines
            .iter()
            .find(|l| l.contains("p50"))
            .expect("the p50 row");
        assert!(p50.contains("< 5 ms") && p50.ends_with("MISS"), "{p50:?}");
        assert!(text.contains("embedded: 3× 503 unavailable"));
        // Columns line up: the baseline column starts at the same place in every line.
        let header = lines.iter().find(|l| l.starts_with("backend")).unwrap();
        assert_eq!(header.find("baseline"), acked.find("raw publish"));
    }
}
