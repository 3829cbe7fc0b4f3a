//! The session's clock: every deadline of the protocol, in one place.
//!
//! The session owns time the way quinn-proto's connection does: it never
//! reads a clock. The driver passes `now` in ([`super::Session::received`],
//! [`super::Session::handle_timeout`]) and asks when it must be woken next
//! ([`super::Session::poll_timeout`]); it only sleeps until then. That makes
//! every timing rule (CONNECT within the connect timeout, client heart-beats,
//! keep-alive pings answered, token expiry, the drain) testable with a
//! simulated clock.

use std::time::{Duration, Instant};

/// What fired when a deadline passed, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The session's credentials expired.
    Token,
    /// No CONNECT within the connect timeout.
    Connect,
    /// No heart-beat (or any frame) from the client within the negotiated
    /// interval and grace.
    Heartbeat(Duration),
    /// No heart-beats negotiated, and the transport's keep-alive pings got
    /// no answer within two intervals (half-open connection).
    Keepalive(Duration),
    /// The gateway is draining and this session's moment has come.
    Drain,
}

#[derive(Debug, Clone)]
pub(super) struct Timers {
    /// A moment and the Unix time (seconds) at that moment: converts token
    /// times, which are Unix seconds, to instants of the session's clock.
    epoch: (Instant, u64),
    /// The latest `now` the driver passed in.
    pub(super) now: Instant,
    connect_deadline: Instant,
    /// When the client last sent anything (a heart-beat included).
    last_input: Instant,
    /// The client is gone when silent this long (negotiated heart-beat).
    pub(super) expect_within: Option<Duration>,
    /// The transport pings a client that negotiated no heart-beats.
    keepalive: Option<Duration>,
    pub(super) expires_at: Option<Instant>,
    drain_at: Option<Instant>,
    /// Input is not being read (back-pressure): silence is not judged.
    pub(super) paused: bool,
}

impl Timers {
    pub(super) fn new(now: Instant, unix_now: u64, connect_timeout: Duration) -> Timers {
        Timers {
            epoch: (now, unix_now),
            now,
            connect_deadline: now + connect_timeout,
            last_input: now,
            expect_within: None,
            keepalive: None,
            expires_at: None,
            drain_at: None,
            paused: false,
        }
    }

    /// The Unix time (seconds) at the session's current `now`.
    pub(super) fn unix_now(&self) -> u64 {
        self.epoch.1 + self.now.saturating_duration_since(self.epoch.0).as_secs()
    }

    /// The instant of Unix time `at` (seconds); `None` (never) for a time
    /// too far away to represent (an absurd `exp` such as 1e19).
    pub(super) fn instant_of(&self, at: u64) -> Option<Instant> {
        let from_epoch = at.saturating_sub(self.epoch.1);
        self.epoch.0.checked_add(Duration::from_secs(from_epoch))
    }

    pub(super) fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    pub(super) fn input(&mut self, now: Instant) {
        self.advance(now);
        self.last_input = self.now;
    }

    pub(super) fn set_keepalive(&mut self, every: Option<Duration>) {
        self.keepalive = every;
    }

    pub(super) fn pause(&mut self, paused: bool) {
        if self.paused && !paused {
            // Reading resumes: the client's silence is judged from here.
            self.last_input = self.now;
        }
        self.paused = paused;
    }

    pub(super) fn drain_at(&mut self, at: Instant) {
        if self.drain_at.is_none_or(|d| at < d) {
            self.drain_at = Some(at);
        }
    }

    /// When the client's silence ends the session, and what that is.
    fn silence(&self, connected: bool) -> Option<(Instant, Expired)> {
        if !connected || self.paused {
            return None;
        }
        match (self.expect_within, self.keepalive) {
            (Some(within), _) => Some((self.last_input + within, Expired::Heartbeat(within))),
            (None, Some(ping)) => Some((self.last_input + ping * 2, Expired::Keepalive(ping * 2))),
            (None, None) => None,
        }
    }

    /// The next deadline, for a session in the given phase.
    pub(super) fn next(&self, connected: bool, awaiting_connect: bool) -> Option<Instant> {
        self.candidates(connected, awaiting_connect)
            .into_iter()
            .flatten()
            .map(|(at, _)| at)
            .min()
    }

    /// The deadline that has passed at `now`, if any, most urgent first.
    pub(super) fn expired(
        &self,
        now: Instant,
        connected: bool,
        awaiting_connect: bool,
    ) -> Option<Expired> {
        self.candidates(connected, awaiting_connect)
            .into_iter()
            .flatten()
            .find(|(at, _)| *at <= now)
            .map(|(_, what)| what)
    }

    fn candidates(
        &self,
        connected: bool,
        awaiting_connect: bool,
    ) -> [Option<(Instant, Expired)>; 4] {
        [
            self.expires_at
                .filter(|_| connected)
                .map(|at| (at, Expired::Token)),
            awaiting_connect.then_some((self.connect_deadline, Expired::Connect)),
            self.silence(connected),
            self.drain_at
                .filter(|_| connected || awaiting_connect)
                .map(|at| (at, Expired::Drain)),
        ]
    }

    pub(super) fn stop_drain_timer(&mut self) {
        self.drain_at = None;
    }
}
