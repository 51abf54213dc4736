//! The timers of a live front end (`sitrep watch`, the web app), on the
//! driver's clock: when to sync (a push frame, something typed, a change
//! another process made, an alert's escalation falling due, the periodic
//! poll, a retry after a failure, with backoff and jitter), when to connect
//! the push channel again, and when to lock for idleness. The front end
//! reports what happened and asks [`Live::next`] what is due.

use crate::Client;

/// A sync at least this often, in case a push was missed.
pub const POLL_MS: u64 = 30_000;
/// First wait after a failure.
pub const BACKOFF_MIN_MS: u64 = 500;
/// Longest wait between retries.
pub const BACKOFF_MAX_MS: u64 = 30_000;

/// What a live front end should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Due {
    /// Lock: idle for the lock time, with nothing typed waiting.
    Lock,
    /// Run a [`super::Sync`].
    Sync,
    /// Connect the push channel.
    Connect,
    /// Nothing before this time, unless a frame or an input comes first.
    Sleep {
        /// On the driver's clock.
        until_ms: u64,
    },
}

/// A push channel that stayed up this long was a working one: its backoff
/// starts again from the beginning.
pub const STABLE_MS: u64 = 10_000;

/// Waits that grow after each failure, with jitter, capped.
#[derive(Debug, Clone)]
struct Backoff {
    next: u64,
    at: u64,
    failures: u64,
}

impl Backoff {
    fn new(now_ms: u64) -> Self {
        Self {
            next: BACKOFF_MIN_MS,
            at: now_ms,
            failures: 0,
        }
    }

    fn reset(&mut self, now_ms: u64) {
        *self = Self::new(now_ms);
    }

    fn fail(&mut self, now_ms: u64, seed: u64) {
        self.failures += 1;
        // Up to a quarter more, from the seed and the failure count.
        let mut x = seed ^ self.failures.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let jitter = self.next * (x % 1000) / 4000;
        self.at = now_ms + self.next + jitter;
        self.next = (self.next * 2).min(BACKOFF_MAX_MS);
    }
}

/// The state of a live client's timers.
#[derive(Debug, Clone)]
pub struct Live {
    idle_ms: u64,
    last_input: u64,
    last_sync: u64,
    wake: bool,
    online: bool,
    connected: bool,
    connected_at: u64,
    sync: Backoff,
    push: Backoff,
    seed: u64,
    last_full: Option<u64>,
}

impl Live {
    /// Timers starting at `now_ms`, locking after `idle_lock_secs` without
    /// input (0: never); `seed` spreads the retries of clients cut off
    /// together. A first sync is due at once.
    pub fn new(idle_lock_secs: u64, now_ms: u64, seed: u64) -> Self {
        Self {
            idle_ms: idle_lock_secs.saturating_mul(1000),
            last_input: now_ms,
            last_sync: now_ms,
            wake: true,
            online: true,
            connected: false,
            connected_at: now_ms,
            sync: Backoff::new(now_ms),
            push: Backoff::new(now_ms),
            seed,
            last_full: None,
        }
    }

    /// The user did something (typed a line).
    pub fn input(&mut self, now_ms: u64) {
        self.last_input = now_ms;
    }

    /// Something wants a sync soon (a line to send, a change another
    /// process wrote, an alert to show).
    pub fn wake(&mut self) {
        self.wake = true;
    }

    /// A frame on the push channel: a binary one says something new waits
    /// (its content is not trusted for anything else).
    pub fn frame(&mut self, binary: bool) {
        if binary {
            self.wake = true;
        }
    }

    /// A sync finished: `ok`, or failed (retryable or not, it is retried
    /// after the backoff; what was written stays in the outbox).
    pub fn synced(&mut self, ok: bool, now_ms: u64) {
        self.last_sync = now_ms;
        self.wake = false;
        if ok {
            self.online = true;
            self.sync.reset(now_ms);
        } else {
            self.online = false;
            self.connected = false;
            self.sync.fail(now_ms, self.seed);
        }
    }

    /// The push channel connected, or failed to.
    pub fn connected(&mut self, ok: bool, now_ms: u64) {
        self.connected = ok;
        if ok {
            self.connected_at = now_ms;
        } else {
            self.push.fail(now_ms, self.seed ^ 1);
        }
    }

    /// The push channel closed: sync now (the server may have restarted),
    /// connect again at once if it had been up a while, else after the
    /// push channel's own backoff (a channel that closes as soon as it
    /// opens is not reconnected in a loop).
    pub fn disconnected(&mut self, now_ms: u64) {
        self.connected = false;
        self.wake = true;
        if now_ms >= self.connected_at + STABLE_MS {
            self.push.reset(now_ms);
        } else {
            self.push.fail(now_ms, self.seed ^ 1);
        }
    }

    /// Whether the sync about to run should be a whole one ([`super::Sync::new`]:
    /// policy, directory, the user's devices, KeyPackages) rather than a
    /// [`super::Sync::catch_up`]: at start, after an outage, and every
    /// [`POLL_MS`]. Calling it counts the whole sync as started.
    pub fn full_sync_due(&mut self, now_ms: u64) -> bool {
        let due = !self.online || self.last_full.is_none_or(|t| now_ms >= t + POLL_MS);
        if due {
            self.last_full = Some(now_ms);
        }
        due
    }

    /// Whether the last sync reached the server.
    pub fn online(&self) -> bool {
        self.online
    }

    /// When the idle lock falls due (`None`: never), whatever else is
    /// running then (a front end stops a sync that is still going).
    pub fn lock_at(&self, busy: bool) -> Option<u64> {
        (self.idle_ms > 0).then(|| self.last_input + self.idle_ms * if busy { 2 } else { 1 })
    }

    /// What is due at `now_ms`. `busy`: typed work waits to be sent (the
    /// lock then waits one more idle period, no longer: a device left with
    /// an unsent `/ack` during an outage still locks).
    pub fn next(&self, c: &Client, now_ms: u64, busy: bool) -> Due {
        let lock_at = self.lock_at(busy);
        if lock_at.is_some_and(|t| now_ms >= t) {
            return Due::Lock;
        }
        // Something typed is put in the outbox at once, online or not.
        if self.wake {
            return Due::Sync;
        }
        let mut wake_at = Vec::with_capacity(4);
        wake_at.extend(lock_at);
        if !self.online {
            if now_ms >= self.sync.at {
                return Due::Sync;
            }
            wake_at.push(self.sync.at);
        } else {
            let escalation = c.next_escalation_at(self.last_sync);
            if escalation.is_some_and(|t| now_ms >= t) {
                return Due::Sync;
            }
            wake_at.extend(escalation);
            if !self.connected {
                if now_ms >= self.push.at {
                    return Due::Connect;
                }
                wake_at.push(self.push.at);
            }
            let poll_at = self.last_sync + POLL_MS;
            if now_ms >= poll_at {
                return Due::Sync;
            }
            wake_at.push(poll_at);
        }
        let until_ms = wake_at
            .into_iter()
            .filter(|t| *t > now_ms)
            .min()
            .unwrap_or(now_ms + POLL_MS);
        Due::Sleep { until_ms }
    }
}
