//! The small HTTP/1 server the daemon's endpoints share (OTLP/HTTP, the exposition
//! endpoint): accept, `TCP_NODELAY`, one task per connection, a handler per request.
//!
//! Owns: the accept loop and connection tasks. Must never: stop accepting because one
//! accept or connection failed.

pub mod admin;
pub mod exposition;

use std::future::Future;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// A response body of the server.
pub type Body = Full<Bytes>;

/// Serves `handler` on `listener` until the task is aborted. `what` names the server
/// in logs.
pub async fn serve<F, Fut>(listener: TcpListener, what: &'static str, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "{what}: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A response written in pieces must not wait for the client's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "{what}: cannot set TCP_NODELAY");
        }
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, std::convert::Infallible>(fut.await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "{what}: connection ended");
            }
        });
    }
}

/// A `text/plain` response.
pub fn plain(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
