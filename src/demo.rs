//! The demo pages, served only when `demo.enabled`: the files of `demo.dir`
//! (the repository's `demo/`) under `/demo/`, and `/demo/config.json`, which
//! tells the pages the WebSocket path, the SockJS prefix and where its
//! sockjs-client bundle is (when `sockjs.enabled` and a bundle is
//! configured; `null` otherwise), and where the demo backend's HTTP API is
//! (`demo.backend_url`). See README, "The demos".
//!
//! Files are read from disk on each request (no cache), so editing a page
//! needs no rebuild. Only plain files below `demo.dir` are served: no `..`,
//! no hidden files, no directory listings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::config::Config;

/// What the demo routes need.
#[derive(Debug)]
struct Demo {
    dir: PathBuf,
    /// The body of `/demo/config.json`.
    config_json: String,
}

/// The demo routes, to merge into the gateway's router when `demo.enabled`.
pub fn router<S>(config: &Config) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    // SockJS, when the gateway serves it and a sockjs-client bundle the
    // pages can load from the gateway (`client_file`) or a configured URL.
    let sockjs = &config.sockjs;
    let sockjs = (sockjs.enabled && (sockjs.client_file.is_some() || sockjs.client_url.is_some()))
        .then(|| {
            serde_json::json!({
                "path": sockjs.prefix,
                "client_url": sockjs
                    .client_url
                    .clone()
                    .unwrap_or_else(|| format!("{}/sockjs.min.js", sockjs.prefix)),
            })
        });
    let demo = Arc::new(Demo {
        dir: config.demo.dir.clone(),
        config_json: serde_json::json!({
            "ws_path": config.ws_path,
            "backend_url": config.demo.backend_url.trim_end_matches('/'),
            "sockjs": sockjs,
        })
        .to_string(),
    });
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(index))
        .route("/demo/config.json", get(config_json))
        .route("/demo/{*path}", get(file))
        .with_state(demo)
}

async fn index(State(demo): State<Arc<Demo>>) -> Response {
    serve(&demo, "").await
}

async fn file(State(demo): State<Arc<Demo>>, UrlPath(path): UrlPath<String>) -> Response {
    serve(&demo, &path).await
}

async fn config_json(State(demo): State<Arc<Demo>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        demo.config_json.clone(),
    )
        .into_response()
}

/// What a URL path below `/demo/` resolves to.
#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    File(PathBuf),
    /// A directory named without its trailing `/`: redirect there, so that
    /// the page's relative URLs work.
    AddSlash,
    NotFound,
}

/// Resolves `path` (below `/demo/`, without the leading `/`) in `dir`:
/// `x/` is `x/index.html`, `x/phone` is `x/phone.html` when no `x/phone`
/// exists. Refuses `..`, `.` and hidden segments, backslashes and NULs.
fn resolve(dir: &Path, path: &str) -> Resolved {
    let mut rel = PathBuf::new();
    let segments: Vec<&str> = path.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            // Only a trailing `/` (or the empty root) may be empty.
            if i + 1 == segments.len() {
                break;
            }
            return Resolved::NotFound;
        }
        if segment.starts_with('.') || segment.contains(['\\', '\0']) {
            return Resolved::NotFound;
        }
        rel.push(segment);
    }
    let full = dir.join(&rel);
    if path.is_empty() || path.ends_with('/') {
        let index = full.join("index.html");
        return if index.is_file() {
            Resolved::File(index)
        } else {
            Resolved::NotFound
        };
    }
    if full.is_file() {
        return Resolved::File(full);
    }
    if full.is_dir() {
        return if full.join("index.html").is_file() {
            Resolved::AddSlash
        } else {
            Resolved::NotFound
        };
    }
    if full.extension().is_none() {
        let html = full.with_extension("html");
        if html.is_file() {
            return Resolved::File(html);
        }
    }
    Resolved::NotFound
}

/// The content type of a page asset; other files (the gateway
/// configuration, READMEs, licenses) are not served.
fn content_type(path: &Path) -> Option<&'static str> {
    Some(match path.extension().and_then(|e| e.to_str())? {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        _ => return None,
    })
}

async fn serve(demo: &Demo, path: &str) -> Response {
    let dir = demo.dir.clone();
    let path = path.to_owned();
    let found = tokio::task::spawn_blocking(move || match resolve(&dir, &path) {
        Resolved::File(file) => match (content_type(&file), std::fs::read(&file)) {
            (Some(content_type), Ok(bytes)) => Ok(Some((content_type, bytes))),
            _ => Ok(None),
        },
        Resolved::AddSlash => Err(format!("/demo/{path}/")),
        Resolved::NotFound => Ok(None),
    })
    .await;
    match found {
        Ok(Ok(Some((content_type, bytes)))) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(location)) => Redirect::permanent(&location).into_response(),
        Ok(Ok(None)) | Err(_) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "not found\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("demo")
    }

    #[test]
    fn resolves_pages_and_refuses_escapes() {
        let dir = demo_dir();
        assert_eq!(resolve(&dir, ""), Resolved::File(dir.join("index.html")));
        assert_eq!(
            resolve(&dir, "merchant/"),
            Resolved::File(dir.join("merchant").join("index.html"))
        );
        assert_eq!(resolve(&dir, "merchant"), Resolved::AddSlash);
        assert_eq!(
            resolve(&dir, "qr-login/phone"),
            Resolved::File(dir.join("qr-login").join("phone.html"))
        );
        assert_eq!(
            resolve(&dir, "vendor/stompjs/stomp.umd.min.js"),
            Resolved::File(dir.join("vendor/stompjs/stomp.umd.min.js"))
        );
        for bad in [
            "../Cargo.toml",
            "merchant/../../Cargo.toml",
            "./index.html",
            ".git/config",
            "merchant//index.html",
            "vendor",
            "nothing-here",
            "merchant\\..\\index.html",
        ] {
            assert_eq!(resolve(&dir, bad), Resolved::NotFound, "{bad}");
        }
    }
}
