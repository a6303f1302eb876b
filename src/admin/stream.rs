//! `GET /api/operations/stream`: recent operations, live, as Server-Sent
//! Events (`event: operation`, `data: <json>`, `id: <seq>`).
//!
//! The connection ends when the client goes away or freshgate shuts down.
//! A reader too slow to keep up skips operations (counted in
//! `freshgate_admin_stream_dropped_total`) rather than holding memory.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::sync::broadcast::error::RecvError;

use crate::metrics::METRICS;
use crate::monitor::Monitor;

/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub async fn operations(monitor: &Monitor, mut http: ServerSession, mut shutdown: ShutdownWatch) {
    let mut ops = monitor.subscribe();
    let Ok(mut header) = ResponseHeader::build(200, Some(4)) else {
        return;
    };
    for (name, value) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-store"),
        ("transfer-encoding", "chunked"),
        ("x-accel-buffering", "no"),
    ] {
        if header.insert_header(name, value).is_err() {
            return;
        }
    }
    http.set_keepalive(None);
    if http.write_response_header(Box::new(header)).await.is_err() {
        return;
    }
    let mut send = Some(Bytes::from_static(b": connected\n\n"));
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        if let Some(chunk) = send.take() {
            if http.write_response_body(chunk, false).await.is_err() {
                return;
            }
        }
        tokio::select! {
            op = ops.recv() => match op {
                Ok(op) => {
                    let Ok(json) = serde_json::to_string(&*op) else { continue };
                    send = Some(Bytes::from(format!(
                        "id: {}\nevent: operation\ndata: {json}\n\n",
                        op.seq
                    )));
                }
                Err(RecvError::Lagged(n)) => METRICS.sse_lagged.inc_by(n),
                Err(RecvError::Closed) => break,
            },
            _ = keepalive.tick() => send = Some(Bytes::from_static(b": keepalive\n\n")),
            _ = shutdown.changed() => break,
        }
    }
    let _ = http.write_response_body(Bytes::new(), true).await;
    let _ = http.finish().await;
}
