//! The accept loop: TCP (optionally TLS) connections served as HTTP/1.1 with
//! upgrades, each given [`security.handshake_timeout_ms`] from accept to the
//! end of its first request head.
//!
//! [`security.handshake_timeout_ms`]: crate::config::SecurityConfig::handshake_timeout_ms

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;
use crate::metrics::RejectReason;

/// The TLS server configuration of `tls`, or `None` when TLS is off (both
/// files unset). Unreadable or invalid files are an error naming the file.
pub fn load_tls(tls: &TlsConfig) -> io::Result<Option<Arc<rustls::ServerConfig>>> {
    let (cert_file, key_file) = match (&tls.cert_file, &tls.key_file) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "tls.cert_file and tls.key_file go together",
            ))
        }
    };
    let certs = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        invalid(format!(
            "tls.key_file {}: no usable PEM private key: {e}",
            key_file.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(format!(
                "tls.cert_file {} and tls.key_file {} do not make a server identity: {e}",
                cert_file.display(),
                key_file.display()
            ))
        })?;
    // WebSocket upgrades are HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let bad = |e: &dyn std::fmt::Display| {
        invalid(format!(
            "tls.cert_file {}: cannot read PEM certificates: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "tls.cert_file {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// How connections are served.
#[derive(Clone)]
pub struct ListenerConfig {
    /// From accept to the end of the first request head (TLS handshake
    /// included); also hyper's bound on reading any later request head of
    /// a keep-alive connection. `None`: unbounded.
    pub handshake_timeout: Option<Duration>,
    /// TLS only, when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Cancelled when the gateway drains: idle HTTP connections are closed
    /// and busy ones after their current request.
    pub draining: CancellationToken,
}

/// Accepts connections on `listener` and serves `router` on each until
/// `shutdown` resolves; then it stops accepting (the listener is dropped)
/// and returns. Connections already accepted go on in their own tasks.
///
/// Handlers can extract the peer address as `ConnectInfo<SocketAddr>`.
pub async fn run(
    listener: TcpListener,
    router: Router,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let tls = config.tls.clone().map(TlsAcceptor::from);
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let deadline = config.handshake_timeout.map(|t| Instant::now() + t);
        let router = router.clone();
        let config = config.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, router, config, deadline).await,
                Some(acceptor) => {
                    if let Some(stream) = tls_handshake(&acceptor, stream, peer, deadline).await {
                        serve_connection(stream, peer, router, config, deadline).await;
                    }
                }
            }
        });
    }
    drop(listener);
}

/// Errors of one connection that `accept` reports; the listener is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn tls_handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Option<Instant>,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let handshake = acceptor.accept(stream);
    let result = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, handshake).await {
            Ok(result) => result,
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                crate::metrics::get().rejected(RejectReason::HandshakeTimeout);
                return None;
            }
        },
        None => handshake.await,
    };
    match result {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            // A client hanging up mid-handshake (e.g. a load balancer's TCP
            // health check) is not a rejection; one speaking something else
            // than acceptable TLS is.
            if e.kind() != io::ErrorKind::UnexpectedEof {
                crate::metrics::get().rejected(RejectReason::Tls);
            }
            None
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) on one connection until it closes, is
/// upgraded, or has not sent a complete request head by `deadline`.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    config: ListenerConfig,
    deadline: Option<Instant>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Set once a request head was read: the handshake deadline is met.
    let started = Arc::new(AtomicBool::new(false));
    let service = {
        let started = Arc::clone(&started);
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            started.store(true, Ordering::Release);
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            tower_service::Service::call(&mut router, request)
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.handshake_timeout);
    let mut conn = pin!(builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades());
    let mut timer = pin!(async move {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    });
    let mut timer_armed = true;
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() && !started.load(Ordering::Acquire) {
                        crate::metrics::get().rejected(RejectReason::HandshakeTimeout);
                    }
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            () = timer.as_mut(), if timer_armed => {
                timer_armed = false;
                if !started.load(Ordering::Acquire) {
                    tracing::debug!(%peer, "no request head within the handshake timeout");
                    crate::metrics::get().rejected(RejectReason::HandshakeTimeout);
                    return; // dropping the connection closes it
                }
            }
            () = config.draining.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
