//! The HTTP server: an accept loop over hyper-util (HTTP/1.1 and HTTP/2, WebSocket upgrades),
//! with the limits that keep one client from holding what others need:
//! - a request's headers must arrive within [`HttpLimits::header_read_timeout`]; hyper starts
//!   that clock whenever it waits for a request, so it also closes idle keep-alive connections;
//! - at most [`HttpLimits::max_connections`] connections at once (live sockets included); one
//!   over that is answered 503 and closed;
//! - headers (request line included) of at most [`HttpLimits::max_header_bytes`], a URL of at
//!   most 64 KiB (hyper's own bound), answered 431 / 414 in the API's error shape
//!   ([`super::plain_errors`]).
//!
//! On stop it accepts nothing more, lets the requests in flight finish (at most
//! [`DRAIN_WAIT`]), and returns.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::plain_errors::PlainErrors;

/// Longest wait, on stop, for the requests in flight.
pub const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// What one connection may take.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// How long a request's headers may take to arrive, and how long an idle keep-alive
    /// connection stays open.
    pub header_read_timeout: Duration,
    /// Connections open at once, live sockets included.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(15),
            max_connections: 4096,
            max_header_bytes: 128 * 1024,
        }
    }
}

/// Serves `app` on `listener` until `stop` fires, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .writev(false);
    // HTTP/2 WebSockets need the CONNECT protocol.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(PlainErrors::new(Counted {
            inner: stream,
            _slot: slot,
        }));
        let service =
            TowerToHyperService::new(app.clone().map_request(move |request: Request<Incoming>| {
                let mut request = request.map(Body::new);
                // Where the request came from (registrations are limited per address).
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            }));
        let connection = graceful.watch(
            builder
                .serve_connection_with_upgrades(io, service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_WAIT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_WAIT:?}; stopping anyway");
    }
    Ok(())
}

/// Answers a connection over the limit with a 503 in the API's error shape, and closes it.
async fn refuse(mut stream: TcpStream) {
    let body =
        r#"{"error":{"code":"unavailable","message":"too many connections; try again shortly"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// A connection holding one of the server's connection slots for as long as it lives (an
/// upgraded WebSocket keeps it).
struct Counted {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
