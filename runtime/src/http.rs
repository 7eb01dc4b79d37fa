//! Serving an axum router over HTTP/1.1 with the timeouts `axum::serve` lacks, for all
//! three listeners (the query API, ingest's probes and metrics, the edge status endpoint).
//!
//! A connection gets [`HttpLimits::header_read_timeout`] to deliver each request's headers,
//! counted from when the server starts waiting for them: on a new connection from the
//! accept, on a kept-alive one from the end of the previous response. So one setting bounds
//! both a slow sender (slowloris) and an idle kept-alive connection; hyper cannot tell the
//! two apart, as Go's `ReadHeaderTimeout` and `IdleTimeout` do. While a request is being
//! answered the timer does not run: a long export is bounded by its own limits.
//!
//! HTTP/1.1 only, deliberately: hyper-util's auto builder runs no timer while it sniffs for
//! an HTTP/2 preface, so a client that sends nothing would be held forever.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// The timeouts of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest wait for a request's headers, including the idle time of a kept-alive
    /// connection before its next request.
    pub header_read_timeout: Duration,
}

impl HttpLimits {
    /// The limits for `header_read_timeout_secs` from a config file.
    pub fn from_secs(header_read_timeout_secs: u64) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(header_read_timeout_secs),
        }
    }
}

/// The default header-read (and idle) timeout, in seconds: hyper's own default, above
/// the 15 s a Prometheus scrape or a kubelet probe keeps a connection for. A proxy in front
/// must keep idle upstream connections for less than this (docs/operations.md).
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits
/// for the connections in flight to finish their current request.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // Timeouts and resets are the client's doing: not worth more than debug.
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
