//! Unknown query parameters are bad input, on every route: a request whose query names a
//! parameter its operation does not declare in the OpenAPI document is answered `422`
//! naming it, before it reaches the handler. The document is the one list of what each route
//! takes (the handlers' `#[utoipa::path]` parameters), so nothing here repeats it.

use axum::extract::{Query, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// Each operation of the document: its method, its path template split at `/`, and the
/// query parameters it declares.
#[derive(Debug, Clone, Default)]
pub struct KnownQueries {
    operations: Vec<(Method, Vec<String>, Vec<String>)>,
}

impl KnownQueries {
    /// The query parameters every operation of `doc` declares.
    #[must_use]
    pub fn of(doc: &utoipa::openapi::OpenApi) -> KnownQueries {
        use utoipa::openapi::path::{HttpMethod, ParameterIn};
        let mut operations = Vec::new();
        for (path, item) in &doc.paths.paths {
            let template: Vec<String> = path.split('/').map(str::to_owned).collect();
            let shared = item.parameters.clone().unwrap_or_default();
            let ops = [
                (HttpMethod::Get, &item.get),
                (HttpMethod::Put, &item.put),
                (HttpMethod::Post, &item.post),
                (HttpMethod::Delete, &item.delete),
                (HttpMethod::Patch, &item.patch),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let known = shared
                    .iter()
                    .chain(op.parameters.iter().flatten())
                    .filter(|p| matches!(p.parameter_in, ParameterIn::Query))
                    .map(|p| p.name.clone())
                    .collect();
                let method = match method {
                    HttpMethod::Get => Method::GET,
                    HttpMethod::Put => Method::PUT,
                    HttpMethod::Post => Method::POST,
                    HttpMethod::Delete => Method::DELETE,
                    _ => Method::PATCH,
                };
                operations.push((method, template.clone(), known));
            }
        }
        KnownQueries { operations }
    }

    /// The query parameters of the operation `method` `path` answers; `None` for a path the
    /// document does not describe (the dashboard's files).
    fn declared(&self, method: &Method, path: &str) -> Option<&[String]> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let segments: Vec<&str> = path.split('/').collect();
        self.operations
            .iter()
            .find(|(m, template, _)| {
                m == method
                    && template.len() == segments.len()
                    && template.iter().zip(&segments).all(|(t, s)| {
                        (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                    })
            })
            .map(|(_, _, known)| known.as_slice())
    }

    /// Whether the query of `method` `uri` names only what its operation declares.
    ///
    /// # Errors
    /// [`ApiError::Invalid`] naming the first unknown parameter (in name order), or the query
    /// when it is not `application/x-www-form-urlencoded`.
    pub fn check(&self, method: &Method, uri: &axum::http::Uri) -> Result<(), ApiError> {
        let Some(known) = self.declared(method, uri.path()) else {
            return Ok(());
        };
        if uri.query().is_none_or(str::is_empty) {
            return Ok(());
        }
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|e| ApiError::invalid("query", e.body_text()))?;
        let mut unknown: Vec<&str> = pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !known.iter().any(|n| n == k))
            .collect();
        unknown.sort_unstable();
        match unknown.first() {
            None => Ok(()),
            Some(name) => {
                let known = if known.is_empty() {
                    "this route takes none".to_owned()
                } else {
                    format!("known: {}", known.join(", "))
                };
                Err(ApiError::invalid(
                    (*name).to_owned(),
                    format!("unknown query parameter ({known})"),
                ))
            }
        }
    }
}

/// The middleware: [`KnownQueries::check`] before the handler.
pub async fn refuse_unknown(
    known: std::sync::Arc<KnownQueries>,
    request: Request,
    next: Next,
) -> Response {
    match known.check(request.method(), request.uri()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_takes_the_query_its_document_declares() {
        let known = KnownQueries::of(&crate::openapi());
        let uri = |s: &str| s.parse::<axum::http::Uri>().expect("uri");
        let ok = [
            (Method::GET, "/api/market/EURUSD/candles?tf=1m&limit=5"),
            (Method::GET, "/api/user/u1/trades?from=1&to=2"),
            (Method::GET, "/api/symbols"),
            (Method::GET, "/index.html?v=3"),
        ];
        for (m, u) in ok {
            assert!(known.check(&m, &uri(u)).is_ok(), "{u}");
        }
        let refused = [
            (
                Method::GET,
                "/api/market/EURUSD/candles?tf=1m&bogus=1",
                "bogus",
            ),
            (Method::GET, "/api/user/u1/account?verbose=true", "verbose"),
            (Method::POST, "/api/trade/open?dry_run=1", "dry_run"),
            (Method::HEAD, "/api/symbols?x=1", "x"),
        ];
        for (m, u, field) in refused {
            match known.check(&m, &uri(u)) {
                Err(ApiError::Invalid { field: f, .. }) => assert_eq!(f, field, "{u}"),
                other => panic!("{u}: {other:?}"),
            }
        }
    }
}
