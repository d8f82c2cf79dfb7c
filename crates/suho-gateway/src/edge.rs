//! What every response carries at the edge: the security headers of a page that runs no
//! inline script and may not be framed, and the CORS policy (same origin only, unless
//! `http.cors_origins` names others).
//!
//! - `Content-Security-Policy`: scripts, connections (`/ws` included), images, fonts and
//!   styles from the gateway's own origin only; no inline or evaluated script, no plugins, no
//!   `<base>`, forms only to itself, and no framing (`frame-ancestors 'none'`). Styles may be
//!   inline (the chart library sets element styles).
//! - `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
//!   `X-Frame-Options: DENY` (for browsers that predate `frame-ancestors`).
//! - CORS: with no configured origin the API sends no `Access-Control-Allow-*` header, so a
//!   browser keeps other sites' pages from reading it. A configured origin may call it with
//!   the `Authorization` and `Content-Type` headers (bearer tokens, never cookies).

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

/// The dashboard's content security policy.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
connect-src 'self'; img-src 'self' data:; font-src 'self'; style-src 'self' 'unsafe-inline'; \
object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `router` with the security headers on every response and the CORS policy for `origins`.
pub fn layers(router: Router, origins: &[suho_config::CorsOrigin]) -> Router {
    let router = if origins.is_empty() {
        router
    } else {
        let allowed: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.as_str()).ok())
            .collect();
        router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(allowed))
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .max_age(std::time::Duration::from_secs(600)),
        )
    };
    let headers: [(HeaderName, &'static str); 4] = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    headers.into_iter().fold(router, |router, (name, value)| {
        router.layer(SetResponseHeaderLayer::overriding(
            name,
            HeaderValue::from_static(value),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    fn app(origins: &[&str]) -> Router {
        let origins: Vec<suho_config::CorsOrigin> = origins
            .iter()
            .map(|o| suho_config::CorsOrigin::try_from((*o).to_string()).unwrap())
            .collect();
        layers(
            Router::new().route("/api/x", get(|| async { "ok" })),
            &origins,
        )
    }

    async fn send(app: Router, request: Request<Body>) -> axum::http::Response<Body> {
        app.oneshot(request).await.unwrap()
    }

    fn preflight(origin: &str) -> Request<Body> {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api/x")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn every_response_carries_the_security_headers() {
        let r = send(
            app(&[]),
            Request::get("/api/x").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self';") && !csp.contains("script-src 'self' 'unsafe"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        let missing = send(
            app(&[]),
            Request::get("/nowhere").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(missing.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[tokio::test]
    async fn by_default_no_other_origin_is_allowed() {
        let r = send(app(&[]), preflight("https://evil.example")).await;
        assert!(r
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
        let get = Request::get("/api/x")
            .header(header::ORIGIN, "https://evil.example")
            .body(Body::empty())
            .unwrap();
        let r = send(app(&[]), get).await;
        assert!(r
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
    }

    #[tokio::test]
    async fn a_configured_origin_is_allowed_and_no_other() {
        let allowed = app(&["https://app.example.com"]);
        let r = send(allowed.clone(), preflight("https://app.example.com")).await;
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        let methods = r.headers()[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .unwrap()
            .to_string();
        assert!(methods.contains("POST"), "{methods}");
        let r = send(allowed, preflight("https://evil.example")).await;
        assert!(r
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
    }
}
