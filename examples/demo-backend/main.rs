//! The demo backend of the demo pages (README, "The demos"): an order
//! simulator and a QR-code login service that push to browsers through
//! stompgate by publishing to RabbitMQ, and mint the demo JWTs.
//!
//!   DEMO_JWT_SECRET=... cargo run --example demo-backend
//!
//! `scripts/run.sh` starts it next to the gateway, with the same secret.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

mod backend;

/// Demo backend for stompgate's demo pages.
#[derive(Debug, Parser)]
struct Args {
    /// Address of the HTTP API (the gateway's `demo.backend_url` points here).
    #[arg(long, env = "DEMO_BACKEND_LISTEN", default_value = "127.0.0.1:15690")]
    listen: SocketAddr,
    /// RabbitMQ, the same the gateway uses.
    #[arg(
        long,
        env = "STOMPGATE_AMQP_URL",
        default_value = "amqp://127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// HS256 secret of the demo JWTs: the gateway's `auth.jwt.hs256_secret`.
    /// No default: scripts/run.sh makes one per checkout.
    #[arg(long, env = "DEMO_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// The gateway's `auth.user_exchange`.
    #[arg(long, default_value = "stompgate.user")]
    user_exchange: String,
    /// Merchants merchant-1 .. merchant-N.
    #[arg(long, default_value_t = 4)]
    merchants: usize,
    /// One simulated order every this many ms (0: no simulator).
    #[arg(long, env = "DEMO_ORDER_INTERVAL_MS", default_value_t = 3000)]
    order_interval_ms: u64,
    /// Seconds a QR login id may be confirmed.
    #[arg(long, default_value_t = 120)]
    qr_ttl_secs: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.jwt_secret.len() < 16 {
        eprintln!("demo-backend: the JWT secret must be at least 16 characters");
        return std::process::ExitCode::from(2);
    }
    if args.merchants == 0 {
        eprintln!("demo-backend: --merchants must be at least 1");
        return std::process::ExitCode::from(2);
    }
    let mut config = backend::BackendConfig::new(args.amqp_url, args.jwt_secret);
    config.user_exchange = args.user_exchange;
    config.merchants = args.merchants;
    config.order_interval = Duration::from_millis(args.order_interval_ms);
    config.qr_ttl = Duration::from_secs(args.qr_ttl_secs.max(1));
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-backend: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::from(1);
        }
    };
    tracing::info!(listen = %args.listen, "demo backend listening");
    let shutdown = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
        }
        let _ = tokio::signal::ctrl_c().await;
    };
    match backend::run(listener, config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-backend: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
