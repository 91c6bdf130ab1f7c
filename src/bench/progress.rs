//! The bench's progress display on stderr: one indicatif bar per phase on a terminal (filling
//! with time for timed phases, with the count for counted ones), else one plain line per finished
//! phase, so that a log file reads well too. The results table goes to stdout, untouched by this.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

const BAR_TEMPLATE: &str = "{prefix:>9.bold} {msg:<40} [{bar:30.cyan/blue}] {elapsed:>4}";
const DONE_TEMPLATE: &str = "{prefix:>9.bold} {msg}";

/// Where phases report: a terminal gets bars, anything else gets lines.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The back end the phases belong to, shown before each line.
    prefix: String,
    /// Whether stderr is a terminal (bars) or not (plain lines).
    bars: bool,
}

/// One phase in progress; [`Phase::finish`] prints its outcome.
pub struct Phase {
    /// What the phase does, repeated in its final line.
    label: String,
    /// The back end, shown before each plain line.
    prefix: String,
    /// The bar on a terminal; `None` for plain lines.
    bar: Option<ProgressBar>,
    /// Moves a timed phase's bar along with the clock.
    ticker: Option<JoinHandle<()>>,
    /// When the phase began, for its final line.
    started: Instant,
}

impl Progress {
    /// Progress for the phases of one back end.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            bars: std::io::stderr().is_terminal(),
        }
    }

    /// A phase that runs for about `duration`.
    pub fn timed(&self, label: impl Into<String>, duration: Duration) -> Phase {
        let mut phase = self.start(label.into(), duration.as_millis() as u64);
        if let Some(bar) = phase.bar.clone() {
            let started = phase.started;
            phase.ticker = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    bar.set_position(started.elapsed().as_millis() as u64);
                }
            }));
        }
        phase
    }

    /// A phase of `total` steps, advanced with [`Phase::inc`].
    pub fn counted(&self, label: impl Into<String>, total: u64) -> Phase {
        self.start(label.into(), total)
    }

    /// A line of its own (a note, or what the next phases are about).
    pub fn note(&self, text: &str) {
        eprintln!("{:>9} {text}", self.prefix);
    }

    fn start(&self, label: String, length: u64) -> Phase {
        let bar = self.bars.then(|| {
            let style = ProgressStyle::with_template(BAR_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
            bar.set_style(style);
            bar.set_prefix(self.prefix.clone());
            bar.set_message(label.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Phase {
            label,
            prefix: self.prefix.clone(),
            bar,
            ticker: None,
            started: Instant::now(),
        }
    }
}

impl Phase {
    /// Advances a counted phase.
    pub fn inc(&self, steps: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(steps);
        }
    }

    /// Ends the phase, leaving one line with its outcome.
    pub fn finish(mut self, outcome: &str) {
        self.stop_ticker();
        let line = format!(
            "{}: {outcome} ({:.1} s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
        match self.bar.take() {
            Some(bar) => {
                let style = ProgressStyle::with_template(DONE_TEMPLATE)
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.finish_with_message(line);
            }
            None => eprintln!("{:>9} {line}", self.prefix),
        }
    }

    fn stop_ticker(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }
}

impl Drop for Phase {
    /// A phase abandoned by an error leaves its bar where it stopped.
    fn drop(&mut self) {
        self.stop_ticker();
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}
