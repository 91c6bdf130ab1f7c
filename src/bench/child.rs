//! A `mess-chat serve` child process the bench measures on its own (so that its memory is the
//! service's alone), and the resident memory it holds.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{BenchError, rss};

/// Starts `command` (a `serve` with the caller's arguments) with its stdout piped, quiet logs and
/// no stdin, and waits up to `limit` for its "listening" line; returns the child and its base URL.
pub async fn serve(
    mut command: Command,
    what: &str,
    limit: Duration,
) -> Result<(Child, String), BenchError> {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(limit, lines.next_line())
        .await
        .map_err(|_| BenchError::Setup(format!("the {what} service did not start")))??
        .ok_or_else(|| BenchError::Setup(format!("the {what} service exited")))?;
    let base = line
        .strip_prefix("mess-chat listening on ")
        .ok_or_else(|| BenchError::Setup(format!("unexpected line {line:?}")))?
        .to_string();
    Ok((child, base))
}

/// The child's resident memory now, in KiB (0 if it cannot be read).
pub fn rss_kib(child: &Child) -> u64 {
    child.id().and_then(rss::read_pid).map_or(0, |r| r.now_kib)
}
