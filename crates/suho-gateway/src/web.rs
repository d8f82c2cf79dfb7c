//! The web dashboard: the files of a built `web/` (`http.web_dir`, `web/dist` by default),
//! served for any `GET` or `HEAD` that no API route takes.
//!
//! `/` is `index.html`; other paths are files below the directory (no `..`, no hidden
//! files, no percent escapes: the build's names are plain). Vite's hashed `/assets/*` are
//! cached for a year, everything else is revalidated. Without a built `index.html`, `/`
//! answers 503 with a page that says how to build it. Anything else not found (and every
//! `/api/...` path) is the API's JSON 404. Nothing is fetched from elsewhere: every asset
//! is in the build.

use std::path::Path;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};

use crate::ApiError;

/// Answers `method` `uri` from `dir`.
pub(crate) async fn serve(dir: &Path, method: &Method, uri: &Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::NotFound.into_response();
    }
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        return ApiError::NotFound.into_response();
    }
    let relative = if path == "/" || path == "/index.html" {
        "index.html"
    } else {
        match safe_relative(path) {
            Some(r) => r,
            None => return ApiError::NotFound.into_response(),
        }
    };
    let file = dir.join(relative);
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let cache = if relative.starts_with("assets/") {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            let body = if method == Method::HEAD {
                Body::empty()
            } else {
                Body::from(bytes)
            };
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(mime(relative)),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Err(_) if relative == "index.html" => not_built(dir),
        Err(_) => ApiError::NotFound.into_response(),
    }
}

/// `path` without its leading `/`, if every segment is a plain visible name.
fn safe_relative(path: &str) -> Option<&str> {
    let relative = path.strip_prefix('/')?;
    let plain = |seg: &str| {
        !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    relative.split('/').all(plain).then_some(relative)
}

/// The content type of a build file, by its extension.
fn mime(name: &str) -> &'static str {
    match name.rsplit_once('.').map_or("", |(_, ext)| ext) {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// 503: the dashboard is not built (the API works regardless).
fn not_built(dir: &Path) -> Response {
    let dir = escape(&dir.display().to_string());
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>suho: dashboard not built</title>\
         <style>body{{background:#0b0e14;color:#d6dde8;font:15px system-ui,sans-serif;margin:4rem}}\
         code{{background:#1a2030;padding:2px 6px;border-radius:4px}}</style></head><body>\
         <h1>The dashboard is not built yet</h1>\
         <p>suho serves the dashboard from <code>{dir}</code> (<code>http.web_dir</code>), \
         which has no <code>index.html</code>.</p>\
         <p>Build it with <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>, \
         or start the platform with <code>cargo run --release -- up</code>, which builds it \
         when it is missing or stale. The HTTP API (<code>/api/...</code>) and the WebSocket \
         (<code>/ws</code>) work without it.</p></body></html>"
    );
    (StatusCode::SERVICE_UNAVAILABLE, Html(page)).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_reach_the_directory() {
        assert_eq!(
            safe_relative("/assets/index-AbC_1.js"),
            Some("assets/index-AbC_1.js")
        );
        assert_eq!(safe_relative("/favicon.svg"), Some("favicon.svg"));
        for bad in [
            "/../etc/passwd",
            "/assets/../../x",
            "/.env",
            "/a//b",
            "/a%2e%2e",
            "/",
            "/a\\b",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
        assert_eq!(mime("assets/x.js"), "text/javascript; charset=utf-8");
        assert_eq!(mime("index.html"), "text/html; charset=utf-8");
    }

    #[tokio::test]
    async fn serves_files_and_says_when_the_build_is_missing() {
        let dir = std::env::temp_dir().join(format!("suho-web-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let get = |p: &str| (Method::GET, p.parse::<Uri>().unwrap());
        let (m, u) = get("/");
        let missing = serve(&dir, &m, &u).await;
        assert_eq!(missing.status(), StatusCode::SERVICE_UNAVAILABLE);

        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("index.html"), "<html></html>").unwrap();
        std::fs::write(dir.join("assets/app-1.js"), "x").unwrap();
        let (m, u) = get("/");
        let index = serve(&dir, &m, &u).await;
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(index.headers()[header::CACHE_CONTROL], "no-cache");
        let (m, u) = get("/assets/app-1.js");
        let asset = serve(&dir, &m, &u).await;
        assert_eq!(asset.status(), StatusCode::OK);
        assert!(asset.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable"));
        for p in ["/nope.js", "/api/nope", "/../Cargo.toml"] {
            let (m, u) = get(p);
            assert_eq!(
                serve(&dir, &m, &u).await.status(),
                StatusCode::NOT_FOUND,
                "{p}"
            );
        }
        let post = serve(&dir, &Method::POST, &"/".parse().unwrap()).await;
        assert_eq!(post.status(), StatusCode::NOT_FOUND);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
