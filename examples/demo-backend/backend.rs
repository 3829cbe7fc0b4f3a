//! The demo backend: what a real backend does next to stompgate, in one file.
//!
//! - **Publishes over AMQP** (lapin) to the gateway's `/user/` exchange
//!   (`stompgate.user`, a durable topic exchange) with routing key
//!   `<user, percent-encoded>.<name>`: a browser of user U subscribed to
//!   `/user/queue/<name>` receives it, on whichever gateway replica it is.
//! - **Mints demo JWTs** (HS256, with the secret the gateway is configured
//!   with): `sub` is the user the gateway pushes to.
//! - **Order simulator**: an order for a random merchant every
//!   `order_interval`, to `<merchant>.orders` (the merchant page's
//!   `/user/queue/orders`).
//! - **QR-code login**: a one-time login id, and a token whose `sub` is
//!   `qr-<id>`, so that only the desktop page that asked for the id can
//!   subscribe to its `/user/queue/login` (the QR code shows the id to anyone
//!   who can see the screen; knowing it is not enough to receive the
//!   confirmation). The phone confirms the id; the backend publishes the
//!   confirmation to `qr-<id>.login`.
//!
//! The HTTP API is on its own port; the pages (served by the gateway under
//! `/demo/`) call it cross-origin, so every answer carries
//! `Access-Control-Allow-Origin: *`. All calls are "simple" CORS requests
//! (GET, or POST without a body), so no preflight is needed.
//!
//! This is a demo: anyone may log in as any merchant. Used by
//! examples/demo-backend/main.rs and, in process, by tests/demo_browser.rs.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// What the demo backend is told.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub amqp_url: String,
    /// HS256 secret shared with the gateway (`auth.jwt.hs256_secret`).
    pub jwt_secret: String,
    /// The gateway's `auth.user_exchange`.
    pub user_exchange: String,
    /// Merchants `merchant-1` .. `merchant-N`.
    pub merchants: usize,
    /// One simulated order every this long (zero: no simulator).
    pub order_interval: Duration,
    /// How long a QR login id may be confirmed.
    pub qr_ttl: Duration,
    /// Lifetime of a merchant's token.
    pub merchant_token_ttl: Duration,
}

impl BackendConfig {
    pub fn new(amqp_url: impl Into<String>, jwt_secret: impl Into<String>) -> BackendConfig {
        BackendConfig {
            amqp_url: amqp_url.into(),
            jwt_secret: jwt_secret.into(),
            user_exchange: "stompgate.user".to_owned(),
            merchants: 4,
            order_interval: Duration::from_secs(3),
            qr_ttl: Duration::from_secs(120),
            merchant_token_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

/// The routing key of `/user/queue/<name>` for `user`: the gateway's
/// convention (docs/security.md): `.`, `*`, `#`, `/` and `%` of the user are
/// percent-encoded, then `.<name>`.
pub fn user_routing_key(user: &str, name: &str) -> String {
    let mut key = String::with_capacity(user.len() + name.len() + 1);
    for c in user.chars() {
        match c {
            '%' => key.push_str("%25"),
            '.' => key.push_str("%2E"),
            '*' => key.push_str("%2A"),
            '#' => key.push_str("%23"),
            '/' => key.push_str("%2F"),
            c => key.push(c),
        }
    }
    key.push('.');
    key.push_str(name);
    key
}

/// Orders kept per merchant, for a page catching up after a reconnect.
const RECENT_ORDERS: usize = 50;
/// Pending QR login ids at most (beyond: 503).
const MAX_PENDING_LOGINS: usize = 10_000;

#[derive(Debug)]
struct QrLogin {
    expires: Instant,
    used: bool,
}

#[derive(Debug)]
pub struct Backend {
    config: BackendConfig,
    amqp: tokio::sync::Mutex<Option<(Connection, Channel)>>,
    next_order: AtomicU64,
    /// Orders published, per merchant (the newest last), and in all.
    orders: Mutex<HashMap<String, VecDeque<Value>>>,
    published: AtomicU64,
    logins: Mutex<HashMap<String, QrLogin>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({ "error": message }))
}

impl Backend {
    pub fn new(config: BackendConfig) -> Arc<Backend> {
        Arc::new(Backend {
            config,
            amqp: tokio::sync::Mutex::new(None),
            next_order: AtomicU64::new(1),
            orders: Mutex::new(HashMap::new()),
            published: AtomicU64::new(0),
            logins: Mutex::new(HashMap::new()),
        })
    }

    pub fn merchants(&self) -> Vec<String> {
        (1..=self.config.merchants)
            .map(|n| format!("merchant-{n}"))
            .collect()
    }

    /// A channel in confirm mode, (re)connecting when there is none.
    async fn channel(&self) -> Result<Channel, lapin::Error> {
        let mut amqp = self.amqp.lock().await;
        if let Some((conn, channel)) = amqp.as_ref() {
            if conn.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *amqp = None;
        let conn =
            Connection::connect(&self.config.amqp_url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // The gateway declares it too; declaring the same is harmless and
        // lets the backend start first.
        channel
            .exchange_declare(
                self.config.user_exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        *amqp = Some((conn, channel.clone()));
        Ok(channel)
    }

    /// Publishes `body` to `/user/queue/<name>` of `user` and waits for
    /// RabbitMQ's confirm.
    pub async fn publish_to_user(
        &self,
        user: &str,
        name: &str,
        body: &Value,
    ) -> Result<(), String> {
        let channel = self.channel().await.map_err(|e| format!("AMQP: {e}"))?;
        let key = user_routing_key(user, name);
        let result = async {
            channel
                .basic_publish(
                    self.config.user_exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    body.to_string().as_bytes(),
                    BasicProperties::default().with_content_type("application/json".into()),
                )
                .await?
                .await
        }
        .await;
        match result {
            Ok(confirmation) if confirmation.is_nack() => Err("RabbitMQ nacked the publish".into()),
            Ok(_) => Ok(()),
            Err(e) => {
                *self.amqp.lock().await = None;
                Err(format!("AMQP publish: {e}"))
            }
        }
    }

    fn mint(&self, claims: &Value) -> Result<String, String> {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(self.config.jwt_secret.as_bytes()),
        )
        .map_err(|e| format!("JWT: {e}"))
    }

    /// The `sub` of a valid token minted with our secret.
    fn verify(&self, token: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Claims {
            sub: String,
        }
        jsonwebtoken::decode::<Claims>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(self.config.jwt_secret.as_bytes()),
            &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .ok()
        .map(|data| data.claims.sub)
    }

    /// Places one order for `merchant` (publishes it, keeps it for catch-up).
    pub async fn place_order(&self, merchant: &str) -> Result<Value, String> {
        const ITEMS: [(&str, u64); 6] = [
            ("Oolong tea, 250 g", 1290),
            ("Ceramic teapot", 3450),
            ("Bamboo whisk", 890),
            ("Matcha, 40 g", 1990),
            ("Cast-iron kettle", 6400),
            ("Tea towels (2)", 1150),
        ];
        let n = self.next_order.fetch_add(1, Ordering::Relaxed);
        let (items, total) = {
            let mut rng = rand::rng();
            let count = rng.random_range(1..=3);
            let first = rng.random_range(0..ITEMS.len());
            let mut items = Vec::new();
            let mut total = 0;
            for i in 0..count {
                let (name, cents) = ITEMS[(first + 2 * i) % ITEMS.len()];
                let qty = rng.random_range(1..=3u64);
                total += cents * qty;
                items.push(json!({ "name": name, "qty": qty, "price_cents": cents }));
            }
            (items, total)
        };
        let order = json!({
            "id": format!("o-{n}"),
            "merchant": merchant,
            "items": items,
            "total_cents": total,
            "currency": "EUR",
            "placed_at_ms": now_ms(),
        });
        self.publish_to_user(merchant, "orders", &order).await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        let mut orders = self.orders.lock().unwrap_or_else(PoisonError::into_inner);
        let recent = orders.entry(merchant.to_owned()).or_default();
        recent.push_back(order.clone());
        if recent.len() > RECENT_ORDERS {
            recent.pop_front();
        }
        Ok(order)
    }

    /// The order simulator: one order for a random merchant every interval.
    async fn simulate(self: Arc<Self>) {
        if self.config.order_interval.is_zero() {
            return;
        }
        let merchants = self.merchants();
        let mut tick = tokio::time::interval(self.config.order_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let merchant = &merchants[rand::rng().random_range(0..merchants.len())];
            if let Err(e) = self.place_order(merchant).await {
                tracing::warn!(merchant, "order simulator: {e}");
            }
        }
    }
}

/// The HTTP API (see the module docs); CORS headers on every answer.
pub fn router(backend: Arc<Backend>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/merchants", get(merchants))
        .route("/api/merchant/login", post(merchant_login))
        .route("/api/merchant/orders", get(merchant_orders))
        .route("/api/merchant/order", post(merchant_order))
        .route("/api/qr/new", post(qr_new))
        .route("/api/qr/confirm", post(qr_confirm))
        .route("/api/stats", get(stats))
        .layer(axum::middleware::map_response(cors))
        .with_state(backend)
}

async fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    // Lets the pages' Resource Timing see sizes, for their cost counters.
    headers.insert("timing-allow-origin", HeaderValue::from_static("*"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn merchants(State(backend): State<Arc<Backend>>) -> Response {
    json_response(StatusCode::OK, json!({ "merchants": backend.merchants() }))
}

#[derive(Deserialize)]
struct MerchantParam {
    merchant: String,
}

async fn merchant_login(
    State(backend): State<Arc<Backend>>,
    Query(q): Query<MerchantParam>,
) -> Response {
    if !backend.merchants().contains(&q.merchant) {
        return error(StatusCode::NOT_FOUND, "no such merchant");
    }
    let expires_at = SystemTime::now() + backend.config.merchant_token_ttl;
    let exp = expires_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let merchant_id = q.merchant.trim_start_matches("merchant-");
    match backend.mint(&json!({
        "sub": q.merchant,
        "merchant_id": merchant_id,
        "exp": exp,
        "iat": now_ms() / 1000,
    })) {
        Ok(token) => json_response(
            StatusCode::OK,
            json!({ "user": q.merchant, "token": token, "expires_at_ms": exp * 1000 }),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

#[derive(Deserialize)]
struct TokenParam {
    token: String,
}

/// The merchant's recent orders (to catch up after a reconnect).
async fn merchant_orders(
    State(backend): State<Arc<Backend>>,
    Query(q): Query<TokenParam>,
) -> Response {
    let Some(merchant) = backend.verify(&q.token) else {
        return error(StatusCode::UNAUTHORIZED, "invalid token");
    };
    let orders: Vec<Value> = backend
        .orders
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&merchant)
        .map(|recent| recent.iter().cloned().collect())
        .unwrap_or_default();
    json_response(StatusCode::OK, json!({ "orders": orders }))
}

/// Places an order for the merchant right now (the page's "test order").
async fn merchant_order(
    State(backend): State<Arc<Backend>>,
    Query(q): Query<MerchantParam>,
) -> Response {
    if !backend.merchants().contains(&q.merchant) {
        return error(StatusCode::NOT_FOUND, "no such merchant");
    }
    match backend.place_order(&q.merchant).await {
        Ok(order) => json_response(StatusCode::OK, order),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

#[derive(Deserialize)]
struct QrNewParams {
    /// A shorter life than the configured one (tests, impatient demos).
    ttl_secs: Option<u64>,
}

async fn qr_new(State(backend): State<Arc<Backend>>, Query(q): Query<QrNewParams>) -> Response {
    let ttl = match q.ttl_secs {
        Some(secs) => Duration::from_secs(secs.max(1)).min(backend.config.qr_ttl),
        None => backend.config.qr_ttl,
    };
    let id: String = {
        let bytes: [u8; 16] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let now = Instant::now();
    {
        let mut logins = backend
            .logins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        logins.retain(|_, login| login.expires > now && !login.used);
        if logins.len() >= MAX_PENDING_LOGINS {
            return error(StatusCode::SERVICE_UNAVAILABLE, "too many pending logins");
        }
        logins.insert(
            id.clone(),
            QrLogin {
                expires: now + ttl,
                used: false,
            },
        );
    }
    let expires_at_ms = now_ms() + ttl.as_millis() as u64;
    // The desktop's token lives a little longer than the id, so that the
    // page, not the gateway, says "expired".
    let exp = expires_at_ms / 1000 + 30;
    match backend.mint(&json!({ "sub": format!("qr-{id}"), "exp": exp })) {
        Ok(token) => json_response(
            StatusCode::OK,
            json!({
                "id": id,
                "user": format!("qr-{id}"),
                "token": token,
                "expires_at_ms": expires_at_ms,
                "ttl_secs": ttl.as_secs(),
            }),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

#[derive(Deserialize)]
struct QrConfirmParams {
    id: String,
    /// Who is logged in on the phone.
    user: String,
}

async fn qr_confirm(
    State(backend): State<Arc<Backend>>,
    Query(q): Query<QrConfirmParams>,
) -> Response {
    let user = q.user.trim();
    if user.is_empty() || user.len() > 64 {
        return error(StatusCode::BAD_REQUEST, "user must be 1 to 64 characters");
    }
    {
        let mut logins = backend
            .logins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match logins.get_mut(&q.id) {
            None => return error(StatusCode::NOT_FOUND, "unknown login id"),
            Some(login) if login.used => {
                return error(StatusCode::CONFLICT, "login id already used")
            }
            Some(login) if login.expires <= Instant::now() => {
                logins.remove(&q.id);
                return error(StatusCode::GONE, "login id expired");
            }
            // One time: used from now on, whatever happens next.
            Some(login) => login.used = true,
        }
    }
    // The session of the page that asked for the id is user `qr-<id>`.
    let body = json!({ "login": "confirmed", "user": user, "at_ms": now_ms() });
    match backend
        .publish_to_user(&format!("qr-{}", q.id), "login", &body)
        .await
    {
        Ok(()) => json_response(StatusCode::OK, json!({ "ok": true, "user": user })),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

async fn stats(State(backend): State<Arc<Backend>>) -> Response {
    let by_merchant: HashMap<String, usize> = backend
        .orders
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(m, recent)| (m.clone(), recent.len()))
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "orders_published": backend.published.load(Ordering::Relaxed),
            "recent_orders_by_merchant": by_merchant,
        }),
    )
}

/// Runs the backend on `listener` (HTTP API and order simulator) until
/// `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: BackendConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let backend = Backend::new(config);
    // Connect now, to report a broker problem at once (publishes retry).
    if let Err(e) = backend.channel().await {
        tracing::warn!("demo backend: AMQP not reachable yet: {e}");
    }
    let simulator = tokio::spawn(Arc::clone(&backend).simulate());
    let result = axum::serve(listener, router(Arc::clone(&backend)))
        .with_graceful_shutdown(shutdown)
        .await;
    simulator.abort();
    if let Some((conn, _)) = backend.amqp.lock().await.take() {
        let _ = conn.close(200, "bye".into()).await;
    }
    result
}
