//! Capped exponential backoff with jitter, as a pure calculator: the caller sleeps.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, each scaled by a jitter factor the caller
/// draws (so this stays deterministic and testable).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and never exceeding `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay. `jitter` in `0.0..=1.0` picks a point between half and all of the
    /// nominal delay ("equal jitter"), so many clients retrying together spread out.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let nominal = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            1.0
        };
        nominal.mul_f64(0.5 + 0.5 * jitter)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay(1.0).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.next_delay(0.0).as_millis(), 500);
        b.reset();
        assert_eq!(b.next_delay(f64::NAN).as_millis(), 100);
    }
}
