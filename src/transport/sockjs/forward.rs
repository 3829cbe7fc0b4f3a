//! SockJS without sticky sessions: requests for a session that lives on
//! another replica are forwarded to it over RabbitMQ.
//!
//! A SockJS session over HTTP lives on the replica that got its first
//! request (its *home*: the STOMP session, its buffer, its timers). A load
//! balancer that does not stick may send the session's next request to any
//! replica. That replica does not hold the session, so it asks the home
//! through the replicas' control queues ([`crate::bridge::control`]): each
//! replica binds its queue with the id of every session it holds, a request
//! is published `mandatory` with the session id as routing key, and a
//! `basic.return` means no replica holds it, which is answered exactly as
//! an unknown session is locally (404 for a send; a receiving request opens
//! a new session here).
//!
//! The home performs the request on its local session ([`serve`]): a send
//! feeds the chunks to the STOMP session; a receiving request attaches a
//! *remote receiver* to the session's state machine, with the client's own
//! wire, and relays what it takes as replies (one for a poll, a sequence
//! until the response limit for a stream, heartbeats included). The
//! forwarding replica writes the HTTP response as a local request would
//! (headers, CORS, prelude); it only copies the frames. So the session's
//! rules (one receiver at a time and 2010, the disconnect delay counted from
//! the end of the last receiving request, close frames, an aborted receiver
//! ending the session) are the state machine's, whichever replica the
//! request came through.
//!
//! Bounds: requests pending at once in each direction
//! (`sockjs.max_forwarded_requests`, 503 beyond), bodies parsed and bounded
//! by the forwarding replica as for a local send, replies per call bounded
//! by the response limit, the home's open receivers counted under its
//! `sockjs.max_concurrent_polls`. A home that does not answer within
//! `sockjs.forward_timeout_ms` gives 503; a response that already started
//! and then hears nothing for a heartbeat period plus that timeout ends
//! with `c[1006,"Session home not answering"]`. A home whose replies are
//! returned (the forwarding replica is gone) detaches its receiver as if
//! the client went away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{self, Wire};
use super::http::{ReceiverStream, Sockjs};
use super::relay::{receiver_of, Reply, Request};
use super::session::Attach;
use crate::bridge::control::{Call, CallError, Control, Incoming, ReplyTo};
use crate::metrics::{Forwarded, SockjsTransport};

/// The close frame of a response whose home stopped answering.
pub const HOME_LOST: (u16, &str) = (1006, "Session home not answering");

/// Why a forwarded request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// No replica holds the session.
    #[error("session not found")]
    NotFound,
    /// A bound was reached, the broker is down, or the home did not
    /// answer in time.
    #[error("session's replica unavailable: {0}")]
    Unavailable(String),
}

/// This replica's side of forwarding: its control queue and the remote
/// receivers it runs for other replicas.
#[derive(Debug)]
pub struct Forwarding {
    pub control: Arc<Control>,
    /// Remote receivers by correlation id, for `abort`.
    remotes: Mutex<HashMap<String, CancellationToken>>,
    timeout: Duration,
}

impl Forwarding {
    pub fn new(control: Arc<Control>, timeout: Duration) -> Forwarding {
        Forwarding {
            control,
            remotes: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Sends `request` for session `id` and waits (bounded) for the first
    /// reply.
    async fn call(
        &self,
        id: &str,
        transport: SockjsTransport,
        request: Request,
    ) -> Result<(Call, Reply), ForwardError> {
        let metrics = &crate::metrics::get().sockjs;
        let call = match self.control.call(id, request.encode()).await {
            Ok(call) => call,
            Err(CallError::NoHome) => {
                metrics.forwarded(transport, Forwarded::Sent);
                metrics.forwarded(transport, Forwarded::Returned);
                return Err(ForwardError::NotFound);
            }
            // Without its control queue (broker down) a replica answers as
            // before forwarding existed: it knows its own sessions only.
            Err(CallError::Unavailable) => return Err(ForwardError::NotFound),
            Err(e) => return Err(ForwardError::Unavailable(e.to_string())),
        };
        metrics.forwarded(transport, Forwarded::Sent);
        let mut call = call;
        let first = tokio::time::timeout(self.timeout, call.next()).await;
        match first {
            Ok(Some(message)) => match Reply::decode(message) {
                Ok(Reply::Unknown) => Err(ForwardError::NotFound),
                Ok(Reply::Busy) => Err(ForwardError::Unavailable("busy".into())),
                Ok(reply) => Ok((call, reply)),
                Err(e) => Err(ForwardError::Unavailable(e.to_string())),
            },
            Ok(None) => Err(ForwardError::Unavailable("control queue lost".into())),
            Err(_) => Err(ForwardError::Unavailable("no answer in time".into())),
        }
    }

    /// Forwards a send (the messages already parsed and bounded here).
    pub async fn send(
        &self,
        id: &str,
        transport: SockjsTransport,
        messages: Vec<String>,
    ) -> Result<(), ForwardError> {
        let request = Request::Send {
            transport,
            messages,
        };
        match self.call(id, transport, request).await? {
            (_, Reply::Done) => Ok(()),
            (_, other) => Err(ForwardError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Forwards a receiving request; the frames come through the returned
    /// [`Remote`].
    pub async fn receive(
        self: &Arc<Self>,
        id: &str,
        transport: SockjsTransport,
        wire: &Wire,
        heartbeat: Duration,
    ) -> Result<Remote, ForwardError> {
        let callback = match wire {
            Wire::Jsonp { callback } => Some(callback.clone()),
            _ => None,
        };
        let request = Request::Receive {
            transport,
            callback,
        };
        let (call, first) = self.call(id, transport, request).await?;
        let (first, ended) = match first {
            Reply::Attached => (Bytes::new(), false),
            Reply::Data(data) => (data, false),
            Reply::End(data) => (data, true),
            other => {
                return Err(ForwardError::Unavailable(format!(
                    "unexpected reply {other:?}"
                )))
            }
        };
        Ok(Remote {
            forwarding: Arc::clone(self),
            id: id.to_owned(),
            call,
            first: Some(first),
            ended,
            wire: wire.clone(),
            silence: heartbeat + self.timeout,
        })
    }

    fn remotes(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.remotes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The frames of a forwarded receiving request, as the home sends them.
#[derive(Debug)]
pub struct Remote {
    forwarding: Arc<Forwarding>,
    id: String,
    call: Call,
    first: Option<Bytes>,
    /// The home ended the response (or it was given up).
    ended: bool,
    wire: Wire,
    /// Longest silence of the home before the response is given up.
    silence: Duration,
}

impl Remote {
    /// The frames that came with the home's first reply, if any (without
    /// waiting: the prelude goes out at once, as for a local receiver).
    pub fn take_first(&mut self) -> Bytes {
        self.first.take().unwrap_or_default()
    }

    /// The next frames; `None` at the end of the response.
    pub async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            if !first.is_empty() || self.ended {
                return (!first.is_empty()).then_some(first);
            }
        }
        if self.ended {
            return None;
        }
        loop {
            let next = tokio::time::timeout(self.silence, self.call.next()).await;
            let reply = match next {
                Ok(Some(message)) => Reply::decode(message).ok(),
                Ok(None) | Err(_) => None,
            };
            match reply {
                Some(Reply::Data(data)) if data.is_empty() => continue,
                Some(Reply::Data(data)) => return Some(data),
                Some(Reply::End(data)) => {
                    self.ended = true;
                    return (!data.is_empty()).then_some(data);
                }
                _ => {
                    // The home is gone or silent: the client learns it.
                    self.ended = true;
                    let mut data = Vec::new();
                    self.wire
                        .wrap(&frame::close(HOME_LOST.0, HOME_LOST.1), &mut data);
                    return Some(Bytes::from(data));
                }
            }
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // The client went away before the response ended: the home detaches
        // its receiver as if it had been local.
        let forwarding = Arc::clone(&self.forwarding);
        let id = std::mem::take(&mut self.id);
        let correlation_id = self.call.correlation_id.clone();
        tokio::spawn(async move {
            forwarding
                .control
                .tell(&id, &correlation_id, Request::Abort.encode())
                .await;
        });
    }
}

/// Runs the requests other replicas forward to this one, until the control
/// queue is gone.
pub async fn serve(
    ctx: Arc<Sockjs>,
    forwarding: Arc<Forwarding>,
    mut requests: mpsc::Receiver<Incoming>,
) {
    while let Some(incoming) = requests.recv().await {
        let request = match Request::decode(&incoming.message) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "forwarded request dropped");
                continue;
            }
        };
        match request {
            Request::Abort => {
                if let Some(cancel) = forwarding.remotes().get(&incoming.reply_to.correlation_id) {
                    cancel.cancel();
                }
            }
            Request::Send {
                transport,
                messages,
            } => {
                crate::metrics::get()
                    .sockjs
                    .forwarded(transport, Forwarded::Received);
                let ctx = Arc::clone(&ctx);
                let forwarding = Arc::clone(&forwarding);
                tokio::spawn(async move {
                    let reply = match ctx.registry.get(&incoming.key) {
                        Some(entry) => {
                            super::http::deliver(&entry, messages).await;
                            Reply::Done
                        }
                        None => Reply::Unknown,
                    };
                    answer(&forwarding.control, &incoming.reply_to, reply).await;
                    drop(incoming.permit);
                });
            }
            Request::Receive {
                transport,
                callback,
            } => {
                crate::metrics::get()
                    .sockjs
                    .forwarded(transport, Forwarded::Received);
                let ctx = Arc::clone(&ctx);
                let forwarding = Arc::clone(&forwarding);
                tokio::spawn(async move {
                    remote_receiver(&ctx, &forwarding, &incoming, transport, callback).await;
                    drop(incoming.permit);
                });
            }
        }
    }
}

/// Sends one reply; `false` when nobody reads replies any more.
async fn answer(control: &Control, to: &ReplyTo, reply: Reply) -> bool {
    match control.reply(to, reply.encode()).await {
        Ok(delivered) => delivered,
        Err(error) => {
            tracing::debug!(%error, "forwarded reply not sent");
            false
        }
    }
}

/// Removes a remote receiver from the abort table when it ends.
struct Registered<'a> {
    forwarding: &'a Forwarding,
    correlation_id: String,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.forwarding.remotes().remove(&self.correlation_id);
    }
}

/// Attaches a receiver for another replica's client to the local session
/// and relays its frames until the response ends.
async fn remote_receiver(
    ctx: &Arc<Sockjs>,
    forwarding: &Forwarding,
    incoming: &Incoming,
    transport: SockjsTransport,
    callback: Option<String>,
) {
    let control = &forwarding.control;
    let to = &incoming.reply_to;
    let Ok((kind, wire)) = receiver_of(transport, callback.as_deref()) else {
        return;
    };
    let Some(entry) = ctx.registry.get(&incoming.key) else {
        answer(control, to, Reply::Unknown).await;
        return;
    };
    let Some(poll) = ctx
        .registry
        .begin_poll(ctx.host.config.sockjs.max_concurrent_polls)
    else {
        crate::metrics::get()
            .sockjs
            .refused(crate::metrics::SockjsRefusal::MaxPolls);
        answer(control, to, Reply::Busy).await;
        return;
    };
    let attached = entry
        .lock()
        .attach(kind, wire.clone(), std::time::Instant::now());
    let receiver = match attached {
        Attach::AnotherStillOpen(close) => {
            let mut data = Vec::new();
            wire.wrap(&close, &mut data);
            answer(control, to, Reply::End(Bytes::from(data))).await;
            return;
        }
        Attach::Attached(receiver) => receiver,
    };
    entry.to_task.notify_one();
    let cancel = CancellationToken::new();
    forwarding
        .remotes()
        .insert(to.correlation_id.clone(), cancel.clone());
    let _registered = Registered {
        forwarding,
        correlation_id: to.correlation_id.clone(),
    };
    let immediate = entry.lock().has_output(receiver);
    // Dropped before the response ended, the stream detaches the receiver
    // as aborted: the session ends as when a local client goes away.
    let mut stream = ReceiverStream::new(entry, receiver, transport, None, poll, false);
    if !immediate && !answer(control, to, Reply::Attached).await {
        return;
    }
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            next = stream.next() => next,
        };
        let (reply, last) = match next {
            Some(data) if stream.is_done() => (Reply::End(data), true),
            Some(data) => (Reply::Data(data), false),
            None => (Reply::End(Bytes::new()), true),
        };
        if !answer(control, to, reply).await || last {
            return;
        }
    }
}
