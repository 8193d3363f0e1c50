//! The one back-off every actor uses between retries and restarts: exponential from 50 ms to
//! 5 s, with ±20 % jitter so that nodes restarted together do not retry in lock-step.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
    }
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The next wait (jittered), doubling the one after it up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.8..=1.2))
    }

    /// After a success: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next delay; false if `cancel` fired first.
    pub async fn wait(&mut self, cancel: &tokio_util::sync::CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_maximum_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        for (got, base) in d.iter().zip([100u128, 200, 400, 400]) {
            assert!(
                (base * 8 / 10..=base * 12 / 10).contains(got),
                "{got} vs {base}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
