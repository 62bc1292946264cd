//! Connections (issue #27): a cap on how many are open at once, and timeouts
//! for clients that send nothing, send their headers or body slowly, or keep
//! an idle connection open. Without them, a few hundred silent sockets used
//! up the process's open files and every request, `/health` included, timed
//! out until the attacker let go.
//!
//! - Over the cap, a connection gets `503` with `Retry-After` and is closed;
//!   the connections already open keep being served.
//! - `header_timeout`: a request's whole head must arrive within it, counted
//!   from the connection's start or from the end of the previous response
//!   (hyper's header-read timer starts whenever it waits for a head), so it
//!   is also the idle timeout of a keep-alive connection.
//! - The body-read timeout is applied where bodies are read (`read_body`).
//! - A client that half-closes after its request still gets the response.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Limits on the server's connections (`ferry serve` flags).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// The open-file limit of this process (soft), where the system says.
pub fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Files the process keeps open besides its connections (the model, the
/// device, the runtime), kept out of the connection cap.
pub const RESERVED_FILES: usize = 48;

/// `wanted` connections, lowered to what the open-file limit leaves room for
/// (with the reason, for a warning).
pub fn connection_cap(wanted: usize, open_files: Option<usize>) -> (usize, Option<String>) {
    match open_files {
        Some(limit) if limit < wanted + RESERVED_FILES => {
            let cap = limit.saturating_sub(RESERVED_FILES).max(4);
            (
                cap,
                Some(format!(
                    "the process may open {limit} files, so at most {cap} connections are served at once (not --max-connections {wanted}); raise the limit (`ulimit -n {}`) for more",
                    wanted + RESERVED_FILES
                )),
            )
        }
        _ => (wanted, None),
    }
}

/// Requests in flight across all connections (shutdown waits for them).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Accept connections on `listener` and serve `router` on each, within
/// `limits`, until `shutdown` completes; then wait (up to 30 s) for the
/// requests in flight to finish.
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of open files (or a connection reset before it was
                    // accepted): wait a little instead of spinning, say so
                    // at most once a minute.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        eprintln!("ferry serve: accepting a connection failed: {e} (open connections are still served)");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            serve_one(stream, router, limits).await;
            drop(permit);
        });
    }
    let t0 = Instant::now();
    while IN_FLIGHT.load(Ordering::Relaxed) > 0 && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Over the cap: a short 503 and the connection closed (a client that does
/// not read it is dropped after a second).
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":{"message":"the server has too many open connections; retry shortly (the operator can raise --max-connections)","type":"server_error","code":503}}"#;
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
}

/// A request in flight until its response body is done (or dropped).
struct InFlight;

impl InFlight {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_one(stream: TcpStream, router: Router, limits: ConnLimits) {
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = InFlight::new();
        let mut router = router.clone();
        async move {
            use tower_service::Service;
            let resp = router.call(req.map(Body::new)).await?;
            // The guard lives as long as the response body is being sent.
            Ok::<_, std::convert::Infallible>(resp.map(|b| {
                Body::from_stream(b.into_data_stream().map(move |chunk| {
                    let _ = &guard;
                    chunk
                }))
            }))
        }
    });
    // Errors here are the client's (it left, or timed out): nothing to report.
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .half_close(true)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_process_files() {
        assert_eq!(connection_cap(256, None), (256, None));
        assert_eq!(connection_cap(256, Some(65536)).0, 256);
        let (cap, why) = connection_cap(256, Some(256));
        assert_eq!(cap, 256 - RESERVED_FILES);
        assert!(why.unwrap().contains("ulimit -n 304"));
        assert_eq!(connection_cap(256, Some(10)).0, 4);
    }
}
