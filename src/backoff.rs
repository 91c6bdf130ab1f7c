//! Exponential backoff for reconnect and retry loops, cut short by the shutdown signal.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First pause after a failure.
const FIRST: Duration = Duration::from_millis(50);
/// Longest pause between two attempts.
const MAX: Duration = Duration::from_secs(2);

/// Doubling pauses from [`FIRST`] up to [`MAX`].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Backoff {
    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    /// Sleeps for the next pause; returns `false` (at once) if `shutdown` fires first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.next;
        self.next = (self.next * 2).min(MAX);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_double_up_to_the_cap_and_reset_starts_over() {
        let token = CancellationToken::new();
        let mut backoff = Backoff::default();
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            assert!(backoff.wait(&token).await);
        }
        // 50+100+200+400+800+1600 ms, then 4 × 2000 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(3150 + 8000));
        backoff.reset();
        let start = tokio::time::Instant::now();
        backoff.wait(&token).await;
        assert_eq!(start.elapsed(), FIRST);
    }

    #[tokio::test]
    async fn shutdown_cuts_the_wait_short() {
        let token = CancellationToken::new();
        token.cancel();
        assert!(!Backoff::default().wait(&token).await);
    }
}
