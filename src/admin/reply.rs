//! The admin listener's replies: JSON answers and bounded JSON bodies.
//! Every answer says `Cache-Control: no-store` (nothing here may be cached).

use http::{Response, StatusCode};
use pingora::protocols::http::ServerSession;

/// Largest request body accepted (purge, flags, warm).
const MAX_BODY: usize = 64 * 1024;

pub fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Vec<u8>>,
) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

pub fn json_error(status: StatusCode, msg: impl Into<String>) -> Response<Vec<u8>> {
    respond(
        status,
        "application/json",
        serde_json::json!({ "error": msg.into() }).to_string(),
    )
}

/// The first value of `name` in a query string (decoded).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub fn json_ok(v: serde_json::Value) -> Response<Vec<u8>> {
    respond(StatusCode::OK, "application/json", v.to_string())
}

/// Read a JSON request body (bounded).
pub async fn read_json(
    session: &mut ServerSession,
) -> Result<serde_json::Value, Response<Vec<u8>>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err(json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
        }
    }
    serde_json::from_slice(&body)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")))
}
