//! A circuit breaker per model: stop sending requests to a model that keeps failing, try it
//! again with one probe after a cool-down.
//!
//! - **Closed**: requests flow. It opens after `consecutive` failures in a row, or when at
//!   least `min_samples` of the last `window` outcomes are in and `failure_ratio_pct` of them
//!   failed.
//! - **Open** until its cool-down ends: `base_cooldown` doubled for each time it opened in a
//!   row (capped at `max_cooldown`), and never shorter than the provider's `Retry-After`.
//! - **Half-open**: exactly one request (the probe) goes through; success closes it, failure
//!   opens it again with the next, longer cool-down.
//!
//! Only failures that say something about the model count (see `UpstreamError::
//! trips_breaker`): a 400, 413 or 422 is the request's fault and never opens it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    pub consecutive: u32,
    pub window: usize,
    pub min_samples: usize,
    pub failure_ratio_pct: u32,
    pub base_cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            consecutive: 3,
            window: 20,
            min_samples: 10,
            failure_ratio_pct: 50,
            base_cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// For the `revo_router_breaker_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    state: State,
    /// Outcomes while closed, newest last (true: failed).
    recent: VecDeque<bool>,
    consecutive: u32,
    /// Times opened in a row (resets on a success).
    opened: u32,
    until: Instant,
    probing: bool,
}

impl Breaker {
    pub fn new() -> Breaker {
        Breaker {
            state: State::Closed,
            recent: VecDeque::new(),
            consecutive: 0,
            opened: 0,
            until: Instant::now(),
            probing: false,
        }
    }

    /// The state now (an open breaker whose cool-down ended reads half-open).
    pub fn state(&self, now: Instant) -> State {
        match self.state {
            State::Open if now >= self.until => State::HalfOpen,
            s => s,
        }
    }

    /// When an open breaker lets its probe through.
    pub fn retry_at(&self) -> Option<Instant> {
        (self.state == State::Open).then_some(self.until)
    }

    /// Whether a request could go now, without taking the probe.
    pub fn available(&self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::HalfOpen => !self.probing,
            State::Open => false,
        }
    }

    /// Takes the right to send a request now: always while closed, once (the probe) while
    /// half-open.
    pub fn acquire(&mut self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen if self.probing => false,
            State::HalfOpen => {
                self.state = State::HalfOpen;
                self.probing = true;
                true
            }
        }
    }

    pub fn success(&mut self, s: &BreakerSettings) {
        self.consecutive = 0;
        self.probing = false;
        if self.state != State::Closed {
            self.state = State::Closed;
            self.recent.clear();
            self.opened = 0;
        }
        self.push(false, s);
    }

    /// A request the model failed (only failures that trip breakers are reported).
    pub fn failure(&mut self, now: Instant, retry_after: Option<Duration>, s: &BreakerSettings) {
        if self.state == State::HalfOpen || self.probing {
            self.probing = false;
            return self.open(now, retry_after, s);
        }
        self.consecutive += 1;
        self.push(true, s);
        let failed = self.recent.iter().filter(|f| **f).count();
        let ratio_hit = self.recent.len() >= s.min_samples
            && failed * 100 >= self.recent.len() * s.failure_ratio_pct as usize;
        if self.consecutive >= s.consecutive || ratio_hit {
            self.open(now, retry_after, s);
        }
    }

    /// Gives the probe back unused (the request went elsewhere before it was sent).
    pub fn release(&mut self) {
        self.probing = false;
    }

    fn push(&mut self, failed: bool, s: &BreakerSettings) {
        self.recent.push_back(failed);
        while self.recent.len() > s.window {
            self.recent.pop_front();
        }
    }

    fn open(&mut self, now: Instant, retry_after: Option<Duration>, s: &BreakerSettings) {
        let doubling = 2u32.saturating_pow(self.opened.min(16));
        let cooldown = s
            .base_cooldown
            .saturating_mul(doubling)
            .min(s.max_cooldown)
            .max(retry_after.unwrap_or_default());
        self.state = State::Open;
        self.opened += 1;
        self.consecutive = 0;
        self.recent.clear();
        self.until = now + cooldown;
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            base_cooldown: Duration::from_secs(1),
            ..BreakerSettings::default()
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_lets_one_probe_through() {
        let s = settings();
        let mut b = Breaker::new();
        let t0 = Instant::now();
        b.failure(t0, None, &s);
        b.failure(t0, None, &s);
        assert_eq!(b.state(t0), State::Closed);
        b.failure(t0, None, &s);
        assert_eq!(b.state(t0), State::Open);
        assert!(!b.acquire(t0));
        let later = t0 + Duration::from_millis(1001);
        assert_eq!(b.state(later), State::HalfOpen);
        assert!(b.acquire(later), "the probe");
        assert!(!b.acquire(later), "only one probe");
        // The probe fails: open again, for twice as long.
        b.failure(later, None, &s);
        assert!(!b.available(later + Duration::from_millis(1500)));
        assert!(b.acquire(later + Duration::from_millis(2001)));
        b.success(&s);
        assert_eq!(b.state(later), State::Closed);
    }

    #[test]
    fn the_cool_down_is_never_shorter_than_retry_after() {
        let s = settings();
        let mut b = Breaker::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.failure(t0, Some(Duration::from_secs(30)), &s);
        }
        assert_eq!(b.state(t0 + Duration::from_secs(29)), State::Open);
        assert_eq!(b.state(t0 + Duration::from_secs(30)), State::HalfOpen);
    }

    #[test]
    fn opens_on_a_failure_ratio_without_a_run_of_failures() {
        let s = settings();
        let mut b = Breaker::new();
        let t0 = Instant::now();
        for i in 0..10 {
            if i % 2 == 1 {
                b.failure(t0, None, &s);
            } else {
                b.success(&s);
            }
        }
        assert_eq!(b.state(t0), State::Open);
    }
}
