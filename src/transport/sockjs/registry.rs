//! The HTTP SockJS sessions of this replica, and the task that runs each.
//!
//! A session is found by its id alone (the `server` segment of the URL is
//! for load balancers). Its task is the session's writer and clock: it
//! moves what the STOMP session queued on its [`ClientLink`] into the
//! SockJS buffer (waiting when the buffer is full, so that the client's
//! outbound queue and its slow-client policy take over), sends STOMP
//! heart-beats as SockJS messages, and sleeps until the state machine's
//! next deadline (heartbeat frame, expiry). When the session expires it is
//! forgotten and the STOMP session sees its client close.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::session::{SessionState, Timeout};
use super::writer::{self, Encoded};
use crate::bridge::control::Control;
use crate::metrics::SockjsTransport;
use crate::transport::outbound::ClientLink;

/// One HTTP SockJS session.
#[derive(Debug)]
pub struct Entry {
    state: Mutex<SessionState>,
    /// Wakes the attached receiver: output may be waiting.
    pub to_receiver: Notify,
    /// Wakes the session's task: deadlines or buffer room changed.
    pub to_task: Notify,
    /// Chunks for the STOMP session; taken when the session expires.
    inbound: Mutex<Option<mpsc::Sender<Bytes>>>,
    /// The transport that opened the session (for the sessions gauge).
    pub transport: SockjsTransport,
}

impl Entry {
    pub fn new(
        state: SessionState,
        inbound: mpsc::Sender<Bytes>,
        transport: SockjsTransport,
    ) -> Entry {
        Entry {
            state: Mutex::new(state),
            to_receiver: Notify::new(),
            to_task: Notify::new(),
            inbound: Mutex::new(Some(inbound)),
            transport,
        }
    }

    /// The session's state (a poisoned lock is taken over: the state is
    /// consistent between calls).
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A sender of chunks to the STOMP session, while it runs.
    pub fn inbound(&self) -> Option<mpsc::Sender<Bytes>> {
        self.inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn end_inbound(&self) {
        self.inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// Why a session could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many SockJS sessions")]
pub struct Full;

/// The sessions by id, bounded in number.
#[derive(Debug)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<Entry>>>,
    max_sessions: usize,
    /// Receiving requests open now.
    pub polls: AtomicUsize,
}

impl Registry {
    pub fn new(max_sessions: usize) -> Registry {
        Registry {
            sessions: Mutex::new(HashMap::new()),
            max_sessions,
            polls: AtomicUsize::new(0),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.map().get(id).cloned()
    }

    /// The session `id`, created by `create` when there is none: `Ok((entry,
    /// created))`, or [`Full`] at `max_sessions`.
    pub fn get_or_create(
        &self,
        id: &str,
        create: impl FnOnce() -> Arc<Entry>,
    ) -> Result<(Arc<Entry>, bool), Full> {
        let mut map = self.map();
        if let Some(entry) = map.get(id) {
            return Ok((Arc::clone(entry), false));
        }
        if map.len() >= self.max_sessions {
            return Err(Full);
        }
        let entry = create();
        map.insert(id.to_owned(), Arc::clone(&entry));
        Ok((entry, true))
    }

    /// Forgets `id` if it still is `entry`.
    pub fn remove(&self, id: &str, entry: &Arc<Entry>) {
        let mut map = self.map();
        if map.get(id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            map.remove(id);
        }
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts a receiving request, within `max`; the guard releases it.
    pub fn begin_poll(self: &Arc<Self>, max: usize) -> Option<PollGuard> {
        let previous = self.polls.fetch_add(1, Ordering::AcqRel);
        if max != 0 && previous >= max {
            self.polls.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(PollGuard(Arc::clone(self)))
    }
}

/// Keeps a receiving request counted; see [`Registry::begin_poll`].
#[derive(Debug)]
pub struct PollGuard(Arc<Registry>);

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.0.polls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs session `id` until it expires (see the module docs). `driver` is
/// the STOMP session's task.
pub async fn run(
    registry: Arc<Registry>,
    id: String,
    entry: Arc<Entry>,
    link: Arc<ClientLink>,
    mut driver: JoinHandle<bool>,
    control: Option<Arc<Control>>,
) {
    let gauge = crate::metrics::get().sockjs.sessions(entry.transport);
    gauge.increment(1.0);
    let mut batch = VecDeque::new();
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let mut stomp_heartbeat: Option<Duration> = None;
    let mut last_push = Instant::now();
    // The STOMP side wrote its last frame (or its task ended).
    let mut close_requested = false;
    let mut closed = false;
    let mut driver_done = false;
    loop {
        let deadline = entry.lock().poll_timeout().map(Instant::from_std);
        let heartbeat_at = stomp_heartbeat.map(|every| last_push + every);
        let idle = pending.is_empty() && !close_requested;
        tokio::select! {
            () = entry.to_task.notified() => {}
            () = sleep_until_some(deadline) => {
                let timeout = entry.lock().handle_timeout(std::time::Instant::now());
                match timeout {
                    Timeout::Heartbeat => entry.to_receiver.notify_one(),
                    Timeout::Expired => break,
                    Timeout::Nothing => {}
                }
            }
            () = link.take_all(&mut batch), if idle => {
                let mut encoded = Encoded::default();
                writer::encode(&mut batch, &mut encoded);
                if let Some(every) = encoded.heartbeat {
                    stomp_heartbeat = every;
                    last_push = Instant::now();
                }
                pending.extend(encoded.messages);
                close_requested |= encoded.close;
            }
            () = sleep_until_some(heartbeat_at), if idle => {
                pending.push_back(writer::stomp_heartbeat());
            }
            flushed = &mut driver, if !driver_done => {
                driver_done = true;
                // Normally the session queued a close after its last
                // frame, which arrives through the link; a client cut off
                // gets nothing more.
                if !matches!(flushed, Ok(true)) {
                    close_requested = true;
                }
            }
        }
        if pending.is_empty() && (!close_requested || closed) {
            continue;
        }
        let mut wake = false;
        {
            let mut state = entry.lock();
            while let Some(message) = pending.pop_front() {
                if !state.room_for(message.len()) {
                    pending.push_front(message);
                    break;
                }
                if state.push(message).is_err() {
                    // Closed by the client: nothing more reaches it.
                    pending.clear();
                    break;
                }
                wake = true;
            }
            if wake {
                last_push = Instant::now();
            }
            if close_requested && pending.is_empty() && !closed {
                state.close(3000, "Go away!");
                closed = true;
                wake = true;
            }
        }
        if wake {
            entry.to_receiver.notify_one();
        }
    }
    registry.remove(&id, &entry);
    if let Some(control) = control {
        control.unbind(&id);
    }
    // The STOMP session sees its client close, and its writes fail.
    entry.end_inbound();
    link.close();
    gauge.decrement(1.0);
    if !driver_done {
        // Bounded: the driver ends once its input closed.
        if tokio::time::timeout(Duration::from_secs(10), &mut driver)
            .await
            .is_err()
        {
            driver.abort();
        }
    }
}
