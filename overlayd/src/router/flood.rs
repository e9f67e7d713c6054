//! Handshake floods as an operator sees them: when the shared rate limiter starts
//! answering handshakes with cookies (more than [`HANDSHAKE_RATE_LIMIT`](super::HANDSHAKE_RATE_LIMIT)
//! a second, WireGuard's "under load") and when it stops, as two security events with the
//! rate. The data path only bumps two counters (handshake messages whose mac1 held, and
//! cookie replies); the once-a-second reset of the limiter reads them and decides, so a
//! flood of any size costs one event when it starts and one when it ends.
//!
//! A flood is over after [`QUIET_SECONDS`] seconds without a cookie reply: a flood that
//! pauses for a second (or a limiter reset that lands mid-burst) stays one flood.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::util::lock;

/// Seconds without a cookie reply after which a flood is over.
pub const QUIET_SECONDS: u32 = 3;

/// The counters the data path bumps, and the state the limiter's reset keeps.
#[derive(Debug)]
pub(super) struct FloodWatch {
    /// Handshake messages whose mac1 held since the last [`FloodWatch::second`].
    handshakes: AtomicU64,
    /// Cookie replies sent since then.
    cookies: AtomicU64,
    state: Mutex<FloodState>,
}

impl FloodWatch {
    pub(super) fn new(now: Instant) -> FloodWatch {
        FloodWatch {
            handshakes: AtomicU64::new(0),
            cookies: AtomicU64::new(0),
            state: Mutex::new(FloodState::new(now)),
        }
    }

    /// A handshake message passed mac1 (answered or not).
    pub(super) fn handshake(&self) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
    }

    /// A cookie reply went out instead of an answer.
    pub(super) fn cookie(&self) {
        self.cookies.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the counts since the last call (about a second ago) and says whether a flood
    /// started or ended.
    pub(super) fn second(&self, now: Instant) -> Option<FloodChange> {
        let handshakes = self.handshakes.swap(0, Ordering::Relaxed);
        let cookies = self.cookies.swap(0, Ordering::Relaxed);
        lock(&self.state).second(handshakes, cookies, now)
    }
}

/// A flood starting or ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FloodChange {
    /// Cookie replies went out in the last second and none had for [`QUIET_SECONDS`].
    Started {
        /// Handshake messages a second over the last second.
        rate: u64,
        /// Cookie replies in it.
        cookies: u64,
    },
    /// No cookie reply for [`QUIET_SECONDS`].
    Ended {
        /// Seconds from the start to the last cookie reply.
        seconds: u64,
        /// The highest rate of handshake messages a second seen during it.
        peak_rate: u64,
        /// Cookie replies sent during it.
        cookies: u64,
    },
}

/// What the once-a-second check remembers: when it last ran, and the flood under way.
#[derive(Debug)]
struct FloodState {
    last: Instant,
    flood: Option<Flood>,
}

#[derive(Debug)]
struct Flood {
    started: Instant,
    last_cookie: Instant,
    peak_rate: u64,
    cookies: u64,
    quiet: u32,
}

impl FloodState {
    fn new(now: Instant) -> FloodState {
        FloodState {
            last: now,
            flood: None,
        }
    }

    /// One period's counts, ending at `now`.
    fn second(&mut self, handshakes: u64, cookies: u64, now: Instant) -> Option<FloodChange> {
        let elapsed_ms = now.saturating_duration_since(self.last).as_millis().max(1);
        self.last = now;
        // A rate a second, whatever the period (the timers thread may run late), rounded.
        let rate = u64::try_from((u128::from(handshakes) * 1000 + elapsed_ms / 2) / elapsed_ms)
            .unwrap_or(u64::MAX);
        match &mut self.flood {
            None if cookies > 0 => {
                self.flood = Some(Flood {
                    started: now,
                    last_cookie: now,
                    peak_rate: rate,
                    cookies,
                    quiet: 0,
                });
                Some(FloodChange::Started { rate, cookies })
            }
            None => None,
            Some(flood) if cookies > 0 => {
                flood.peak_rate = flood.peak_rate.max(rate);
                flood.cookies += cookies;
                flood.last_cookie = now;
                flood.quiet = 0;
                None
            }
            Some(flood) => {
                flood.quiet += 1;
                if flood.quiet < QUIET_SECONDS {
                    return None;
                }
                let ended = FloodChange::Ended {
                    seconds: flood
                        .last_cookie
                        .saturating_duration_since(flood.started)
                        .as_secs()
                        .max(1),
                    peak_rate: flood.peak_rate,
                    cookies: flood.cookies,
                };
                self.flood = None;
                Some(ended)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_one_start_and_one_end_with_its_rate() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut state = FloodState::new(t0);
        // Calm: handshakes, no cookies.
        assert_eq!(state.second(40, 0, at(1)), None);
        // 300 a second: cookies for the 200 over the limit.
        assert_eq!(
            state.second(300, 200, at(2)),
            Some(FloodChange::Started {
                rate: 300,
                cookies: 200
            })
        );
        assert_eq!(state.second(500, 400, at(3)), None);
        // A quiet second in the middle is still the same flood.
        assert_eq!(state.second(20, 0, at(4)), None);
        assert_eq!(state.second(250, 150, at(5)), None);
        assert_eq!(state.second(0, 0, at(6)), None);
        assert_eq!(state.second(0, 0, at(7)), None);
        assert_eq!(
            state.second(0, 0, at(8)),
            Some(FloodChange::Ended {
                seconds: 3,
                peak_rate: 500,
                cookies: 750
            })
        );
        assert_eq!(state.second(0, 0, at(9)), None);
    }

    #[test]
    fn the_rate_is_per_second_whatever_the_period() {
        let t0 = Instant::now();
        let mut state = FloodState::new(t0);
        assert_eq!(
            state.second(600, 1, t0 + Duration::from_millis(2000)),
            Some(FloodChange::Started {
                rate: 300,
                cookies: 1
            })
        );
    }

    #[test]
    fn the_watch_takes_its_counters_each_second() {
        let t0 = Instant::now();
        let watch = FloodWatch::new(t0);
        for _ in 0..150 {
            watch.handshake();
        }
        watch.cookie();
        assert!(matches!(
            watch.second(t0 + Duration::from_secs(1)),
            Some(FloodChange::Started { rate: 150, .. })
        ));
        assert_eq!(watch.second(t0 + Duration::from_secs(2)), None);
    }
}
