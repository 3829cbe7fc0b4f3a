//! The `stompgate` binary: loads the configuration and serves.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use stompgate::config::Config;

/// STOMP-over-WebSocket push gateway for RabbitMQ.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (STOMPGATE_* variables override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:15674].
    #[arg(long, env = "STOMPGATE_LISTEN")]
    listen: Option<SocketAddr>,
    /// AMQP URL of RabbitMQ [default: amqp://127.0.0.1:5672/%2f].
    #[arg(long, env = "STOMPGATE_AMQP_URL")]
    amqp_url: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = match Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("stompgate: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(url) = args.amqp_url {
        config.amqp.url = url;
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(error) => {
            eprintln!("stompgate: cannot listen on {}: {error}", config.listen);
            return std::process::ExitCode::from(1);
        }
    };
    tracing::info!(
        listen = %config.listen,
        ws_path = %config.ws_path,
        amqp = %redact(&config.amqp.url),
        "stompgate listening"
    );
    let shutdown = async {
        wait_for_signal().await;
        tracing::info!("signal received: draining");
    };
    match stompgate::server::serve(listener, config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stompgate: {error}");
            std::process::ExitCode::from(1)
        }
    }
}

/// SIGTERM (what orchestrators send) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The AMQP URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
