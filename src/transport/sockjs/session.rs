//! One SockJS session over HTTP, as a pure state machine driven by time.
//!
//! A SockJS session outlives the HTTP requests that carry it: messages for
//! the client wait in the session's buffer until a *receiving* request
//! (a poll, or a streaming response) takes them. This type decides
//! everything about that, and does no I/O: the caller passes `now`, asks
//! [`SessionState::poll_timeout`] when it next needs to be woken and calls
//! [`SessionState::handle_timeout`] then (the quinn-proto shape), so that
//! every rule is unit-tested without sockets or sleeps:
//!
//! - the first receiver gets the open frame `o`;
//! - one receiver at a time: a second one gets
//!   `c[2010,"Another connection still open"]` and ends;
//! - a polling receiver ends as soon as it got one frame (returning at once
//!   when messages are waiting); a streaming one stays until it wrote
//!   `response_limit` bytes, so that browsers free what they buffered;
//! - a receiver that wrote nothing for `heartbeat` gets `h` (proxies cut
//!   silent responses);
//! - without a receiver the session lives `disconnect_delay` more, then
//!   expires; a receiver the client aborted ends it at once;
//! - once closed, every receiver gets what was still buffered and the close
//!   frame (`c[3000,"Go away!"]` ...) until the session expires;
//! - the buffer is bounded in bytes: [`SessionState::push`] refuses what
//!   does not fit (one message always fits an empty buffer), and the caller
//!   waits, which pushes back on the client's outbound queue and from there
//!   on its slow-client policy.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::frame::{self, Wire};

/// The timing and size settings of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Idle time of a receiver before it gets a heartbeat frame.
    pub heartbeat: Duration,
    /// Life of a session without a receiver.
    pub disconnect_delay: Duration,
    /// Bytes a streaming receiver writes before it ends.
    pub response_limit: usize,
    /// Bytes of messages the session buffers for its client.
    pub max_buffered_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat: Duration::from_secs(25),
            disconnect_delay: Duration::from_secs(5),
            response_limit: 128 * 1024,
            max_buffered_bytes: 1024 * 1024,
        }
    }
}

/// Identifies one receiving request of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReceiverId(u64);

/// How a receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One frame per request (`xhr`, `jsonp`).
    Polling,
    /// Frames until the response limit (`xhr_streaming`, `eventsource`,
    /// `htmlfile`).
    Streaming,
}

/// The answer to [`SessionState::attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// The request is the session's receiver.
    Attached(ReceiverId),
    /// Another receiver is attached: write this frame and end.
    AnotherStillOpen(Vec<u8>),
}

/// What a receiver writes next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Frames, wrapped for the receiver's transport (may be empty).
    pub data: Vec<u8>,
    /// The response ends after `data`; the receiver is detached.
    pub end: bool,
}

/// What [`SessionState::handle_timeout`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Nothing due yet.
    Nothing,
    /// The receiver has a heartbeat to take.
    Heartbeat,
    /// The session is over: forget it and end the application session.
    Expired,
}

/// Why [`SessionState::push`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the session's buffer is full")]
    Full,
    #[error("the session is closed")]
    Closed,
}

#[derive(Debug)]
struct Receiver {
    id: ReceiverId,
    kind: Kind,
    wire: Wire,
    sent: usize,
    last_write: Instant,
    heartbeat_due: bool,
}

/// The state of one session; see the module docs.
#[derive(Debug)]
pub struct SessionState {
    settings: Settings,
    opened: bool,
    /// The close frame, once the session is closed.
    closing: Option<Vec<u8>>,
    /// The client aborted a receiver: the session expires at once.
    interrupted: bool,
    expired: bool,
    /// Messages, each encoded with [`frame::quote`].
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    receiver: Option<Receiver>,
    /// When the session expires while it has no receiver.
    expires_at: Instant,
    next_id: u64,
}

impl SessionState {
    /// A new session, created by its first request at `now` (which then
    /// attaches).
    pub fn new(settings: Settings, now: Instant) -> SessionState {
        SessionState {
            settings,
            opened: false,
            closing: None,
            interrupted: false,
            expired: false,
            queue: VecDeque::new(),
            queued_bytes: 0,
            receiver: None,
            expires_at: now + settings.disconnect_delay,
            next_id: 0,
        }
    }

    /// A receiving request arrives.
    pub fn attach(&mut self, kind: Kind, wire: Wire, now: Instant) -> Attach {
        if self.receiver.is_some() {
            return Attach::AnotherStillOpen(frame::close(2010, "Another connection still open"));
        }
        self.next_id += 1;
        let id = ReceiverId(self.next_id);
        self.receiver = Some(Receiver {
            id,
            kind,
            wire,
            sent: 0,
            last_write: now,
            heartbeat_due: false,
        });
        Attach::Attached(id)
    }

    /// Whether `id` is attached and has something to write.
    pub fn has_output(&self, id: ReceiverId) -> bool {
        self.receiver.as_ref().is_some_and(|r| {
            r.id == id
                && (!self.opened
                    || !self.queue.is_empty()
                    || self.closing.is_some()
                    || r.heartbeat_due)
        })
    }

    /// Whether `id` is still the session's receiver.
    pub fn is_attached(&self, id: ReceiverId) -> bool {
        self.receiver.as_ref().is_some_and(|r| r.id == id)
    }

    /// Takes what receiver `id` writes now; `None` when it is not (or no
    /// longer) attached.
    pub fn take_output(&mut self, id: ReceiverId, now: Instant) -> Option<Output> {
        let receiver = self.receiver.as_mut().filter(|r| r.id == id)?;
        let polling = receiver.kind == Kind::Polling;
        let mut data = Vec::new();
        let mut end = false;
        if !self.opened {
            self.opened = true;
            receiver.wire.wrap(frame::OPEN, &mut data);
            end = polling;
        }
        if !end && !self.queue.is_empty() {
            let frame = frame::messages(self.queue.iter().map(Vec::as_slice));
            self.queue.clear();
            self.queued_bytes = 0;
            receiver.wire.wrap(&frame, &mut data);
            end = polling || receiver.sent + data.len() >= self.settings.response_limit;
        }
        if !end {
            if let Some(close) = &self.closing {
                receiver.wire.wrap(close, &mut data);
                end = true;
            }
        }
        if data.is_empty() && receiver.heartbeat_due {
            receiver.wire.wrap(frame::HEARTBEAT, &mut data);
            end = polling;
        }
        receiver.heartbeat_due = false;
        if !data.is_empty() {
            receiver.last_write = now;
            receiver.sent += data.len();
            if receiver.sent >= self.settings.response_limit {
                end = true;
            }
        }
        if end {
            self.receiver = None;
            if !self.interrupted {
                self.expires_at = now + self.settings.disconnect_delay;
            }
        }
        Some(Output { data, end })
    }

    /// Receiver `id` is gone. `aborted`: the client went away before the
    /// response ended, which ends the session (SockJS cannot know what the
    /// client got of it).
    pub fn detach(&mut self, id: ReceiverId, aborted: bool, now: Instant) {
        if !self.is_attached(id) {
            return;
        }
        self.receiver = None;
        if aborted {
            if self.closing.is_none() {
                self.closing = Some(frame::close(1002, "Connection interrupted"));
            }
            self.interrupted = true;
            self.expires_at = now;
        } else {
            self.expires_at = now + self.settings.disconnect_delay;
        }
    }

    /// Buffers one message (encoded with [`frame::quote`]) for the client.
    pub fn push(&mut self, message: Vec<u8>) -> Result<(), PushError> {
        if self.closing.is_some() || self.expired {
            return Err(PushError::Closed);
        }
        if !self.room_for(message.len()) {
            return Err(PushError::Full);
        }
        self.queued_bytes += message.len();
        self.queue.push_back(message);
        Ok(())
    }

    /// Whether a message of `len` bytes fits the buffer now.
    pub fn room_for(&self, len: usize) -> bool {
        self.queue.is_empty()
            || self.queued_bytes.saturating_add(len) <= self.settings.max_buffered_bytes
    }

    /// Bytes of messages waiting for a receiver.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// The application closed the session: receivers get what is buffered,
    /// then `c[code,"reason"]`.
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.closing.is_none() {
            self.closing = Some(frame::close(code, reason));
        }
    }

    /// Whether the session was closed (by the application or the client).
    pub fn is_closed(&self) -> bool {
        self.closing.is_some()
    }

    /// Whether the session is over.
    pub fn is_expired(&self) -> bool {
        self.expired
    }

    /// When [`SessionState::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.expired {
            return None;
        }
        Some(match &self.receiver {
            Some(r) if r.heartbeat_due => return None,
            Some(r) => r.last_write + self.settings.heartbeat,
            None => self.expires_at,
        })
    }

    /// Handles the deadline of [`SessionState::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) -> Timeout {
        if self.expired {
            return Timeout::Expired;
        }
        let settings = self.settings;
        match &mut self.receiver {
            Some(r) if !r.heartbeat_due && now >= r.last_write + settings.heartbeat => {
                r.heartbeat_due = true;
                Timeout::Heartbeat
            }
            Some(_) => Timeout::Nothing,
            None if now >= self.expires_at => {
                self.expired = true;
                self.queue.clear();
                self.queued_bytes = 0;
                Timeout::Expired
            }
            None => Timeout::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn settings() -> Settings {
        Settings {
            heartbeat: 25_000 * MS,
            disconnect_delay: 5_000 * MS,
            response_limit: 4096,
            max_buffered_bytes: 100,
        }
    }

    fn quoted(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        frame::quote(s, &mut out);
        out
    }

    fn attach(s: &mut SessionState, kind: Kind, now: Instant) -> ReceiverId {
        match s.attach(kind, Wire::Xhr, now) {
            Attach::Attached(id) => id,
            other => panic!("not attached: {other:?}"),
        }
    }

    fn out(s: &mut SessionState, id: ReceiverId, now: Instant) -> (String, bool) {
        let o = s.take_output(id, now).expect("attached");
        (String::from_utf8(o.data).expect("utf-8"), o.end)
    }

    /// A session whose first poll took `o`.
    fn opened(t0: Instant) -> SessionState {
        let mut s = SessionState::new(settings(), t0);
        let id = attach(&mut s, Kind::Polling, t0);
        assert_eq!(out(&mut s, id, t0), ("o\n".into(), true));
        s
    }

    #[test]
    fn first_poll_opens_and_ends() {
        let t0 = Instant::now();
        let mut s = SessionState::new(settings(), t0);
        let id = attach(&mut s, Kind::Polling, t0);
        assert!(s.has_output(id));
        assert_eq!(out(&mut s, id, t0), ("o\n".into(), true));
        assert!(!s.is_attached(id));
        assert_eq!(s.take_output(id, t0), None);
    }

    #[test]
    fn first_poll_sends_only_the_open_frame_even_with_messages_queued() {
        let t0 = Instant::now();
        let mut s = SessionState::new(settings(), t0);
        s.push(quoted("early")).expect("room");
        let id = attach(&mut s, Kind::Polling, t0);
        assert_eq!(out(&mut s, id, t0), ("o\n".into(), true));
        let id = attach(&mut s, Kind::Polling, t0);
        assert_eq!(out(&mut s, id, t0), ("a[\"early\"]\n".into(), true));
    }

    #[test]
    fn poll_returns_at_once_when_messages_wait() {
        let t0 = Instant::now();
        let mut s = opened(t0);
        s.push(quoted("a")).expect("room");
        s.push(quoted("b")).expect("room");
        let id = attach(&mut s, Kind::Polling, t0);
        assert_eq!(out(&mut s, id, t0), ("a[\"a\",\"b\"]\n".into(), true));
        assert_eq!(s.queued_bytes(), 0);
    }

    #[test]
    fn poll_waits_until_a_message_arrives() {
        let t0 = Instant::now();
        let mut s = opened(t0);
        let id = attach(&mut s, Kind::Polling, t0);
        assert!(!s.has_output(id));
        assert_eq!(out(&mut s, id, t0), (String::new(), false));
        s.push(quoted("x")).expect("room");
        assert!(s.has_output(id));
        assert_eq!(out(&mut s, id, t0 + MS), ("a[\"x\"]\n".into(), true));
    }

    #[test]
    fn a_second_receiver_gets_2010_and_the_first_stays() {
        let t0 = Instant::now();
        let mut s = opened(t0);
        let first = attach(&mut s, Kind::Polling, t0);
        assert_eq!(
            s.attach(Kind::Streaming, Wire::Xhr, t0),
            Attach::AnotherStillOpen(br#"c[2010,"Another connection still open"]"#.to_vec())
        );
        assert!(s.is_attached(first));
        s.push(quoted("x")).expect("room");
        assert_eq!(out(&mut s, first, t0), ("a[\"x\"]\n".into(), true));
    }

    #[test]
    fn streaming_receiver_stays_until_the_response_limit() {
        let t0 = Instant::now();
        let mut s = SessionState::new(
            Settings {
                max_buffered_bytes: 1 << 20,
                ..settings()
            },
            t0,
        );
        let id = attach(&mut s, Kind::Streaming, t0);
        assert_eq!(out(&mut s, id, t0), ("o\n".into(), false));
        // As sockjs-protocol's test: 4096 bytes, messages of 130 characters.
        let msg = "x".repeat(128);
        for i in 0..31 {
            s.push(quoted(&msg)).expect("room");
            let (data, end) = out(&mut s, id, t0);
            assert_eq!(data, format!("a[\"{msg}\"]\n"));
            assert_eq!(end, i == 30, "message {i}");
        }
        assert!(!s.is_attached(id));
        // The next streaming request carries on.
        let id = attach(&mut s, Kind::Streaming, t0);
        s.push(quoted("more")).expect("room");
        assert_eq!(out(&mut s, id, t0), ("a[\"more\"]\n".into(), false));
    }

    #[test]
    fn streaming_receiver_gets_queued_messages_with_the_open_frame() {
        let t0 = Instant::now();
        let mut s = SessionState::new(settings(), t0);
        s.push(quoted("a")).expect("room");
        let id = attach(&mut s, Kind::Streaming, t0);
        assert_eq!(out(&mut s, id, t0), ("o\na[\"a\"]\n".into(), false));
    }

    #[test]
    fn heartbeat_after_25_seconds_of_silence() {
        let t0 = Instant::now();
        let mut s = SessionState::new(settings(), t0);
        let id = attach(&mut s, Kind::Streaming, t0);
        out(&mut s, id, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + 25_000 * MS));
        assert_eq!(s.handle_timeout(t0 + 24_999 * MS), Timeout::Nothing);
        assert!(!s.has_output(id));
        let t1 = t0 + 25_000 * MS;
        assert_eq!(s.handle_timeout(t1), Timeout::Heartbeat);
        assert_eq!(s.poll_timeout(), None, "waiting for the receiver");
        assert!(s.has_output(id));
        assert_eq!(out(&mut s, id, t1), ("h\n".into(), false));
        assert_eq!(s.poll_timeout(), Some(t1 + 25_000 * MS));
        // Writing messages postpones the heartbeat.
        s.push(quoted("m")).expect("room");
        let t2 = t1 + 10_000 * MS;
        out(&mut s, id, t2);
        assert_eq!(s.poll_timeout(), Some(t2 + 25_000 * MS));
    }

    #[test]
    fn heartbeat_ends_a_poll() {
        let t0 = Instant::now();
        let mut s = opened(t0);
        let id = attach(&mut s, Kind::Polling, t0);
        let t1 = t0 + 25_000 * MS;
        assert_eq!(s.handle_timeout(t1), Timeout::Heartbeat);
        assert_eq!(out(&mut s, id, t1), ("h\n".into(), true));
    }

    #[test]
    fn heartbeat_is_dropped_when_messages_go_instead() {
        let t0 = Instant::now();
        let mut s = opened(t0);
        let id = attach(&mut s, Kind::Polling, t0);
        let t1 = t0 + 25_000 * MS;
        assert_eq!(s.handle_timeout(t1), Timeout::Heartbeat);
        s.push(quoted("m")).expect("room");
        assert_eq!(out(&mut s, id, t1), ("a[\"m\"]\n".into(), true));
        let id = attach(&mut s, Kind::Polling, t1);
        assert!(!s.has_output(id));
    }

    #[test]
    fn expires_five_seconds_after_the_last_receiver() {
        let t0 = Instant::now();
        let mut s = opened(t0);
        assert_eq!(s.poll_timeout(), Some(t0 + 5_000 * MS));
        // A receiver in between postpones expiry.
        let t1 = t0 + 4_000 * MS;
        let id = attach(&mut s, Kind::Polling, t1);
        assert_eq!(s.handle_timeout(t0 + 5_000 * MS), Timeout::Nothing);
        let t2 = t0 + 30_000 * MS;
        assert_eq!(s.handle_timeout(t2), Timeout::Heartbeat);
        assert_eq!(out(&mut s, id, t2), ("h\n".into(), true));
        assert_eq!(s.poll_timeout(), Some(t2 + 5_000 * MS));
        assert_eq!(s.handle_timeout(t2 + 4_999 * MS), Timeout::Nothing);
        assert_eq!(s.handle_timeout(t2 + 5_000 * MS), Timeout::Expired);
        assert!(s.is_expired());
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.push(quoted("late")), Err(PushError::Closed));
    }

    #[test]
    fn a_session_nobody_polls_expires() {
        let t0 = Instant::now();
        let mut s = SessionState::new(settings(), t0);
        assert_eq!(s.handle_timeout(t0 + 5_000 * MS), Timeout::Expired);
    }

    #[test]
    fn detached_receiver_starts_the_disconnect_delay() {
        let t0 = Instant::now();
        let mut s = opened(t0);
        let id = attach(&mut s, Kind::Streaming, t0);
        let t1 = t0 + 1_000 * MS;
        s.detach(id, false, t1);
        assert!(!s.is_closed());
        assert_eq!(s.poll_timeout(), Some(t1 + 5_000 * MS));
        // Detaching twice, or a stale id, changes nothing.
        s.detach(id, true, t1);
        assert!(!s.is_closed());
    }

    #[test]
    fn aborted_receiver_ends_the_session() {
        let t0 = Instant::now();
        let mut s = opened(t0);
        let id = attach(&mut s, Kind::Polling, t0);
        s.detach(id, true, t0 + MS);
        assert!(s.is_closed());
        assert_eq!(s.poll_timeout(), Some(t0 + MS));
        let id = attach(&mut s, Kind::Polling, t0 + MS);
        assert_eq!(
            out(&mut s, id, t0 + MS),
            ("c[1002,\"Connection interrupted\"]\n".into(), true)
        );
        assert_eq!(s.handle_timeout(t0 + MS), Timeout::Expired);
    }

    #[test]
    fn closed_session_flushes_then_serves_the_close_frame_until_it_expires() {
        let t0 = Instant::now();
        let mut s = opened(t0);
        s.push(quoted("last")).expect("room");
        s.close(3000, "Go away!");
        assert_eq!(s.push(quoted("after")), Err(PushError::Closed));
        let id = attach(&mut s, Kind::Polling, t0);
        assert_eq!(out(&mut s, id, t0), ("a[\"last\"]\n".into(), true));
        for i in 0..3 {
            let t = t0 + i * 1_000 * MS;
            let id = attach(&mut s, Kind::Polling, t);
            assert_eq!(out(&mut s, id, t), ("c[3000,\"Go away!\"]\n".into(), true));
        }
        assert_eq!(s.handle_timeout(t0 + 7_000 * MS), Timeout::Expired);
    }

    #[test]
    fn close_reaches_the_attached_streaming_receiver() {
        let t0 = Instant::now();
        let mut s = SessionState::new(settings(), t0);
        let id = attach(&mut s, Kind::Streaming, t0);
        assert_eq!(out(&mut s, id, t0), ("o\n".into(), false));
        s.push(quoted("bye")).expect("room");
        s.close(3000, "Go away!");
        assert!(s.has_output(id));
        assert_eq!(
            out(&mut s, id, t0),
            ("a[\"bye\"]\nc[3000,\"Go away!\"]\n".into(), true)
        );
        // A later streaming request gets the close frame, not 2010.
        let id = attach(&mut s, Kind::Streaming, t0);
        assert_eq!(out(&mut s, id, t0), ("c[3000,\"Go away!\"]\n".into(), true));
    }

    #[test]
    fn close_before_open_still_opens_first() {
        let t0 = Instant::now();
        let mut s = SessionState::new(settings(), t0);
        s.close(3000, "Go away!");
        let id = attach(&mut s, Kind::Streaming, t0);
        assert_eq!(
            out(&mut s, id, t0),
            ("o\nc[3000,\"Go away!\"]\n".into(), true)
        );
    }

    #[test]
    fn buffer_is_bounded_in_bytes() {
        let t0 = Instant::now();
        let mut s = opened(t0);
        let big = quoted(&"x".repeat(60)); // 62 bytes
        s.push(big.clone()).expect("fits");
        assert_eq!(s.push(big.clone()), Err(PushError::Full));
        assert_eq!(s.queued_bytes(), 62);
        s.push(quoted(&"y".repeat(36)))
            .expect("38 more: exactly 100");
        assert_eq!(s.push(quoted("")), Err(PushError::Full));
        let id = attach(&mut s, Kind::Polling, t0);
        out(&mut s, id, t0);
        // One message always fits an empty buffer.
        s.push(quoted(&"z".repeat(500))).expect("alone");
        assert_eq!(s.push(quoted("")), Err(PushError::Full));
    }

    #[test]
    fn wires_are_applied_per_receiver() {
        let t0 = Instant::now();
        let mut s = SessionState::new(settings(), t0);
        let id = match s.attach(
            Kind::Polling,
            Wire::Jsonp {
                callback: "cb".into(),
            },
            t0,
        ) {
            Attach::Attached(id) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(out(&mut s, id, t0), ("/**/cb(\"o\");\r\n".into(), true));
        let id = match s.attach(Kind::Streaming, Wire::EventSource, t0) {
            Attach::Attached(id) => id,
            other => panic!("{other:?}"),
        };
        s.push(quoted("%")).expect("room");
        assert_eq!(
            out(&mut s, id, t0),
            ("data: a[\"%25\"]\r\n\r\n".into(), false)
        );
    }

    #[test]
    fn response_limit_counts_wrapped_bytes() {
        let t0 = Instant::now();
        let mut s = SessionState::new(
            Settings {
                response_limit: 10,
                ..settings()
            },
            t0,
        );
        let id = attach(&mut s, Kind::Streaming, t0);
        assert_eq!(out(&mut s, id, t0), ("o\n".into(), false));
        s.push(quoted("abcde")).expect("room"); // a["abcde"]\n = 11 bytes
        assert_eq!(out(&mut s, id, t0), ("a[\"abcde\"]\n".into(), true));
    }
}
