//! The driver in memory, with a simulated clock: an in-memory broker behind
//! the [`BrokerSession`] seam, input fed through a channel, the client's
//! queue read directly, and tokio's paused time (which jumps to the next
//! timer when every task waits), so that heart-beat timeouts, receipts after
//! confirms, token expiry, slow clients and the drain are tested
//! deterministically and in milliseconds of real time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::bridge::fanout::Subscriber;
use crate::bridge::{BridgeError, Confirm};
use crate::config::{AuthConfig, JwtConfig, SlowClientPolicy};
use crate::session::{Message, PublishRequest, SubscribeRequest};
use crate::stomp::Command;

/// What the in-memory broker saw, and the confirms it holds back.
#[derive(Default)]
struct BrokerState {
    publishes: Vec<PublishRequest>,
    confirms: VecDeque<oneshot::Sender<Result<(), BridgeError>>>,
    subscriptions: Vec<String>,
    acks: Vec<(String, u64)>,
    closed: bool,
}

struct MemoryBroker {
    state: Arc<Mutex<BrokerState>>,
    inbound: mpsc::UnboundedReceiver<Inbound>,
}

impl BrokerSession for MemoryBroker {
    fn key(&self) -> u64 {
        1
    }

    async fn next_inbound(&mut self) -> Inbound {
        match self.inbound.recv().await {
            Some(item) => item,
            None => std::future::pending().await,
        }
    }

    async fn subscribe(
        &mut self,
        request: &SubscribeRequest,
        _subscriber: Subscriber,
    ) -> Result<(), BridgeError> {
        self.lock().subscriptions.push(request.id.clone());
        Ok(())
    }

    async fn unsubscribe(&mut self, id: &str) {
        self.lock().subscriptions.retain(|s| s != id);
    }

    async fn delete_durable(&mut self, _id: &str) -> Result<(), BridgeError> {
        Ok(())
    }

    async fn publish(&mut self, request: &PublishRequest) -> Result<Confirm, BridgeError> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        state.publishes.push(request.clone());
        state.confirms.push_back(tx);
        Ok(Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(BridgeError::Refused("confirm dropped".into())))
        }))
    }

    fn confirm_timeout(&self) -> Duration {
        Duration::from_secs(15)
    }

    async fn ack(&mut self, subscription: &str, tag: u64, _: bool) -> Result<(), BridgeError> {
        self.lock().acks.push((subscription.to_owned(), tag));
        Ok(())
    }

    async fn nack(&mut self, _: &str, _: u64, _: bool, _: bool) -> Result<(), BridgeError> {
        Ok(())
    }

    fn has_own(&self, _subscription: &str) -> bool {
        true
    }

    fn restarted(&mut self, _subscription: &str, _queue: String) {}

    async fn select_vhost(&mut self, _vhost: &str) -> Result<(), BridgeError> {
        Ok(())
    }

    async fn close(&mut self) {
        self.lock().closed = true;
    }
}

impl MemoryBroker {
    fn lock(&self) -> std::sync::MutexGuard<'_, BrokerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A session running in the driver, and the test's handles on it.
struct Harness {
    input: mpsc::UnboundedSender<Incoming>,
    deliveries: mpsc::UnboundedSender<Inbound>,
    link: Arc<ClientLink>,
    broker: Arc<Mutex<BrokerState>>,
    drain: CancellationToken,
    task: JoinHandle<Outcome>,
    codec: StompCodec,
    buf: BytesMut,
    unread: VecDeque<Frame>,
}

fn context(tweak: impl FnOnce(&mut SessionConfig, &mut Context)) -> Context {
    let mut session = SessionConfig::default();
    let mut ctx = Context {
        session: Arc::new(SessionConfig::default()),
        limits: session.limits.clone(),
        max_frames_per_second: 0,
        throttle: true,
        drain: CancellationToken::new(),
        drain_window: Duration::ZERO,
        rabbit_auth: None,
    };
    tweak(&mut session, &mut ctx);
    ctx.limits = session.limits.clone();
    ctx.session = Arc::new(session);
    ctx
}

fn start(ctx: Context, link: Arc<ClientLink>, options: Options) -> Harness {
    let (input, rx) = mpsc::unbounded_channel();
    let (deliveries, inbound) = mpsc::unbounded_channel();
    let state = Arc::new(Mutex::new(BrokerState::default()));
    let broker = MemoryBroker {
        state: Arc::clone(&state),
        inbound,
    };
    let drain = ctx.drain.clone();
    let task_link = Arc::clone(&link);
    let task = tokio::spawn(async move {
        let input = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        run(&ctx, broker, Box::pin(input), task_link, options).await
    });
    Harness {
        input,
        deliveries,
        link,
        broker: state,
        drain,
        task,
        codec: StompCodec::new(FrameLimits::default()),
        buf: BytesMut::new(),
        unread: VecDeque::new(),
    }
}

fn roomy_link() -> Arc<ClientLink> {
    ClientLink::new(1024, SlowClientPolicy::Disconnect)
}

impl Harness {
    fn send(&self, text: &str) {
        let _ = self
            .input
            .send(Incoming::Data(Bytes::copy_from_slice(text.as_bytes())));
    }

    fn broker(&self) -> std::sync::MutexGuard<'_, BrokerState> {
        self.broker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Confirms the oldest publish the broker holds.
    fn confirm(&self) {
        let tx = self
            .broker()
            .confirms
            .pop_front()
            .expect("a publish to confirm");
        let _ = tx.send(Ok(()));
    }

    /// The frames written to the client within `within` (simulated time).
    async fn frames(&mut self, within: Duration) -> Vec<Frame> {
        let mut batch = VecDeque::new();
        let mut frames = Vec::new();
        if tokio::time::timeout(within, self.link.take_all(&mut batch))
            .await
            .is_err()
        {
            return frames;
        }
        for item in batch {
            if let Some((parts, _)) = item.frame_parts() {
                for part in parts {
                    self.buf.extend_from_slice(part);
                }
            }
        }
        while let Ok(Some(stomp::Inbound::Frame(frame))) = self.codec.decode(&mut self.buf) {
            frames.push(frame);
        }
        frames
    }

    /// The next frame written to the client within an hour of simulated
    /// time (later frames of the same batch are kept for the next call).
    async fn next_frame(&mut self) -> Frame {
        for _ in 0..4 {
            if let Some(frame) = self.unread.pop_front() {
                return frame;
            }
            let frames = self.frames(Duration::from_secs(3600)).await;
            self.unread.extend(frames);
        }
        panic!("no frame written to the client");
    }

    async fn connect(&mut self, headers: &str) -> Frame {
        self.send(&format!("CONNECT\naccept-version:1.2\n{headers}\n\0"));
        let connected = self.next_frame().await;
        assert_eq!(connected.command, Command::Connected, "{connected:?}");
        connected
    }

    async fn outcome(self) -> Outcome {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the driver ends")
            .expect("the driver does not panic")
    }
}

fn message_of(frame: &Frame) -> String {
    frame
        .header("message")
        .map(|m| m.into_owned())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_its_heart_beat_interval_and_grace() {
    let ctx = context(|s, _| s.heartbeat.grace_factor = 2.0);
    let mut h = start(ctx, roomy_link(), Options::default());
    h.connect("heart-beat:1000,0\n").await;
    let started = Instant::now();
    // Heart-beats every 900 ms keep the session for 10 s.
    for _ in 0..11 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let _ = h.input.send(Incoming::Data(Bytes::from_static(b"\n")));
    }
    assert!(h.frames(Duration::ZERO).await.is_empty());
    // Then silence: the ERROR comes at 1,000 ms x grace after the last one.
    let error = h.next_frame().await;
    assert_eq!(error.command, Command::Error);
    assert!(
        message_of(&error).contains("no heart-beat from the client within 2000 ms"),
        "{error:?}"
    );
    let silent_for = started.elapsed() - Duration::from_millis(9900);
    assert!(
        silent_for >= Duration::from_millis(2000) && silent_for < Duration::from_millis(2100),
        "closed after {silent_for:?} of silence"
    );
    let broker = Arc::clone(&h.broker);
    assert_eq!(h.outcome().await, Outcome::Ended);
    assert!(broker.lock().unwrap_or_else(PoisonError::into_inner).closed);
}

#[tokio::test(start_paused = true)]
async fn no_connect_within_the_connect_timeout_ends_the_session() {
    let ctx = context(|s, _| s.limits.connect_timeout_ms = 3000);
    let mut h = start(ctx, roomy_link(), Options::default());
    let started = Instant::now();
    let error = h.next_frame().await;
    assert!(message_of(&error).contains("no CONNECT frame within 3000 ms"));
    assert_eq!(started.elapsed(), Duration::from_millis(3000));
}

#[tokio::test(start_paused = true)]
async fn a_receipt_waits_for_the_confirm_of_every_earlier_publish() {
    let mut h = start(context(|_, _| {}), roomy_link(), Options::default());
    h.connect("").await;
    h.send("SEND\ndestination:/queue/a\n\none\0SEND\ndestination:/queue/a\nreceipt:r-2\n\ntwo\0");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.broker().publishes.len(), 2);
    // A SUBSCRIBE's receipt queues behind the publishes too.
    h.send("SUBSCRIBE\nid:s\ndestination:/queue/b\nreceipt:r-3\n\n\0");
    // (Within the broker's 15 s confirm timeout.)
    let early = h.frames(Duration::from_secs(5)).await;
    assert!(early.is_empty(), "{early:?}");
    h.confirm();
    assert!(h.frames(Duration::from_secs(5)).await.is_empty());
    h.confirm();
    let receipts: Vec<String> = [h.next_frame().await, h.next_frame().await]
        .iter()
        .map(|f| f.header("receipt-id").unwrap_or_default().into_owned())
        .collect();
    assert_eq!(receipts, ["r-2", "r-3"]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_publish_fails_the_session_with_its_receipt() {
    let mut h = start(context(|_, _| {}), roomy_link(), Options::default());
    h.connect("").await;
    h.send("SEND\ndestination:/queue/a\nreceipt:r-1\n\none\0");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let tx = h.broker().confirms.pop_front().expect("a publish");
    let _ = tx.send(Err(BridgeError::Nacked));
    let error = h.next_frame().await;
    assert_eq!(error.command, Command::Error);
    assert_eq!(error.header("receipt-id").as_deref(), Some("r-1"));
    assert_eq!(h.outcome().await, Outcome::Ended);
}

#[tokio::test(start_paused = true)]
async fn an_expiring_token_ends_the_session_on_the_session_clock() {
    const SECRET: &str = "driver-test-secret";
    let ctx = context(|s, _| {
        s.auth = crate::auth::Auth::from_config(&AuthConfig {
            jwt: Some(JwtConfig {
                hs256_secret: Some(SECRET.into()),
                ..JwtConfig::default()
            }),
            ..AuthConfig::default()
        })
        .expect("auth config");
    });
    let exp = crate::auth::unix_now() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "merchant-7", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token");
    let mut h = start(ctx, roomy_link(), Options::default());
    let started = Instant::now();
    h.connect(&format!("passcode:{token}\n")).await;
    let error = h.next_frame().await;
    assert_eq!(message_of(&error), "Credential expired");
    // Ten minutes of simulated time, within the second the token carries.
    let lived = started.elapsed().as_secs();
    assert!((598..=601).contains(&lived), "expired after {lived} s");
    assert_eq!(h.outcome().await, Outcome::Ended);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_off_and_its_broker_side_released() {
    // Room for two frames; the client reads nothing.
    let link = ClientLink::new(2, SlowClientPolicy::Disconnect);
    let mut h = start(context(|_, _| {}), Arc::clone(&link), Options::default());
    h.connect("").await;
    h.send("SUBSCRIBE\nid:s\ndestination:/queue/q\nack:client\n\n\0");
    tokio::time::sleep(Duration::from_millis(10)).await;
    for tag in 1..=5 {
        let _ = h.deliveries.send(Inbound::Delivery {
            subscription: Arc::from("s"),
            tag,
            message: Message {
                headers: vec![("destination".into(), "/queue/q".into())],
                body: Bytes::from_static(b"order"),
            },
        });
    }
    // The driver waits for room; the transport's writer finds no write
    // progress within its write timeout and stalls the link.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !h.task.is_finished(),
        "nothing ends the session before the stall"
    );
    link.stall();
    let broker = Arc::clone(&h.broker);
    assert_eq!(h.outcome().await, Outcome::SlowClient);
    assert!(broker.lock().unwrap_or_else(PoisonError::into_inner).closed);
}

#[tokio::test(start_paused = true)]
async fn a_drain_ends_a_session_blocked_on_a_client_that_stopped_reading() {
    let link = ClientLink::new(1, SlowClientPolicy::Disconnect);
    let mut h = start(context(|_, _| {}), Arc::clone(&link), Options::default());
    h.connect("").await;
    h.send("SUBSCRIBE\nid:s\ndestination:/queue/q\n\n\0");
    tokio::time::sleep(Duration::from_millis(10)).await;
    for tag in 1..=3 {
        let _ = h.deliveries.send(Inbound::Delivery {
            subscription: Arc::from("s"),
            tag,
            message: Message {
                headers: Vec::new(),
                body: Bytes::from_static(b"x"),
            },
        });
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.drain.cancel();
    let broker = Arc::clone(&h.broker);
    let outcome = h.outcome().await;
    assert_eq!(outcome, Outcome::SlowClient);
    assert!(broker.lock().unwrap_or_else(PoisonError::into_inner).closed);
}

#[tokio::test(start_paused = true)]
async fn a_drain_sends_the_receipts_owed_then_the_shutdown_error() {
    let mut h = start(context(|_, _| {}), roomy_link(), Options::default());
    h.connect("").await;
    h.send("SEND\ndestination:/queue/a\nreceipt:r-1\n\none\0");
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.drain.cancel();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Input is no longer read while draining.
    h.send("SEND\ndestination:/queue/a\n\ntwo\0");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.broker().publishes.len(), 1);
    h.confirm();
    let receipt = h.next_frame().await;
    assert_eq!(receipt.command, Command::Receipt);
    let error = h.next_frame().await;
    assert_eq!(message_of(&error), "server shutting down");
    assert_eq!(h.outcome().await, Outcome::Ended);
}

#[tokio::test(start_paused = true)]
async fn back_pressure_stops_reading_without_judging_silence() {
    let ctx = context(|s, _| {
        s.limits.max_unconfirmed_publishes = 2;
        s.heartbeat.grace_factor = 1.5;
    });
    let mut h = start(ctx, roomy_link(), Options::default());
    h.connect("heart-beat:1000,0\n").await;
    h.send("SEND\ndestination:/queue/a\n\n1\0SEND\ndestination:/queue/a\n\n2\0");
    h.send("SEND\ndestination:/queue/a\n\n3\0");
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Two await confirms: the third is not read, for as long as it takes
    // (here 10 s, within the broker's 15 s confirm timeout; the client's
    // heart-beat deadline is 1.5 s).
    assert_eq!(h.broker().publishes.len(), 2);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!h.task.is_finished(), "silence judged while not reading");
    h.confirm();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.broker().publishes.len(), 3);
    h.confirm();
    h.confirm();
    // Reading again, nothing pending: silence counts from now.
    let resumed = Instant::now();
    let error = h.next_frame().await;
    assert!(resumed.elapsed() <= Duration::from_millis(1600));
    assert!(message_of(&error).contains("no heart-beat"), "{error:?}");
}

/// Every session's task holds the driver's future for the whole life of the
/// session: the large futures of broker operations are boxed so that an
/// idle session stays small (docs/benchmarks.md).
#[tokio::test]
async fn session_futures_stay_small() {
    fn size<F>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }
    let pool = crate::bridge::pool::Pool::new(vec!["amqp://x".into()], 1, vec![]);
    let plane = crate::bridge::plane::Plane::start(pool, Default::default());
    let ctx = context(|_, _| {});
    let mut driver = Driver {
        session: Session::new(
            Arc::clone(&ctx.session),
            "s".into(),
            Instant::now().into_std(),
            0,
        ),
        codec: StompCodec::new(FrameLimits::default()),
        full_limits: FrameLimits::default(),
        buffer: BytesMut::new(),
        broker: crate::bridge::SessionBroker::new(plane, 1),
        link: roomy_link(),
        escaping: Escaping::None,
        rate: RateLimit::new(0),
        throttle: true,
        confirms: None,
        limit_before_connect: 65536,
        cut_off: false,
        reported: false,
        drain: CancellationToken::new(),
        rabbit_auth: None,
        followups: Vec::new(),
    };
    assert!(size(&driver.execute(Vec::new())) <= 512);
    assert!(size(&driver.receive(&[])) <= 1024);
    // The session's own future: its state is on the heap (about 1.2 KiB),
    // the future holds a pointer to it and the loop's waits.
    let pool = crate::bridge::pool::Pool::new(vec!["amqp://x".into()], 1, vec![]);
    let plane = crate::bridge::plane::Plane::start(pool, Default::default());
    let broker = crate::bridge::SessionBroker::new(plane, 2);
    let run = super::run(
        &ctx,
        broker,
        stream::pending(),
        roomy_link(),
        Options::default(),
    );
    assert!(size(&run) <= 1024, "{}", size(&run));
}
