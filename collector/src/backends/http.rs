//! The HTTP/1.1 client the HTTP backends share: one keep-alive pool per pipeline, a
//! POST with fixed headers and a deadline, and the status rule all of them follow.
//! `https://` endpoints speak TLS as the pipeline's `tls` table says, and the
//! credentials' headers (`basic_auth`, bearer token, `headers_from_files`) go on
//! every request; when a reload re-reads them, the pool is rebuilt with the new
//! material (connections of the old pool close once idle).
//!
//! Owns: connecting, the deadline and reading the answer. Must never: follow
//! redirects, retry, change a body, or put a credential in an error message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{FailureCause, SendError, quote};
use crate::pipeline::PipelineCommon;
use crate::tls::client::{Alpn, LiveSecurity};

/// An answer as it came back.
pub(super) struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// `Retry-After` in seconds, when the backend sent one.
    pub retry_after: Option<Duration>,
    /// The body (an error message, or a protocol's response).
    pub body: Bytes,
}

impl Answer {
    /// The rule every HTTP backend shares: 2xx went through; 408, 429 and 5xx are
    /// worth a retry; any other status is a permanent refusal of these bytes.
    pub fn status_outcome(&self) -> Result<(), SendError> {
        let status = self.status;
        if status.is_success() {
            return Ok(());
        }
        let reason = format!("HTTP {status}: {}", quote(&self.body));
        let cause = FailureCause::HttpStatus;
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Err(SendError::Retry {
                reason,
                retry_after: self.retry_after,
                cause,
            })
        } else {
            Err(SendError::Permanent { reason, cause })
        }
    }
}

/// A POST client for one URL with fixed headers.
pub(super) struct HttpClient {
    uri: Uri,
    /// The backend's and the pipeline's headers (the credentials' are added per
    /// generation of `security`).
    headers: HeaderMap,
    timeout: Duration,
    security: Arc<LiveSecurity>,
    /// The pool and the full headers for the security generation they were built
    /// for. Locked only to clone them out, never across an await.
    pool: Mutex<Option<Pool>>,
}

/// A connection pool and the request headers for one generation of credentials.
#[derive(Clone)]
struct Pool {
    generation: u64,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    headers: HeaderMap,
}

/// A header from a name and a value known to be valid (values from config are
/// checked by config validation; a bad one becomes empty rather than a panic).
pub(super) fn header(name: &'static str, value: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("")),
    )
}

/// `endpoint` with `path_and_query` appended when the endpoint has no path of its own.
pub(super) fn with_default_path(endpoint: &str, path_and_query: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = endpoint
        .parse::<Uri>()
        .ok()
        .is_some_and(|u| !matches!(u.path(), "" | "/"));
    if has_path {
        endpoint.to_owned()
    } else {
        format!("{trimmed}{path_and_query}")
    }
}

impl HttpClient {
    /// A client that POSTs to `url` with `headers` (a user agent and the pipeline's
    /// own `headers` are added; the latter win).
    ///
    /// # Errors
    /// A message if the URL or a configured header cannot be used.
    pub fn new(
        url: &str,
        mut headers: HeaderMap,
        common: &PipelineCommon,
        security: Arc<LiveSecurity>,
    ) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("bad endpoint {url:?}: {e}"))?;
        let ua = concat!("weir/", env!("CARGO_PKG_VERSION"));
        headers.extend([header("user-agent", ua)]);
        for (name, value) in &common.headers {
            let name: HeaderName = name.parse().map_err(|e| format!("header {name:?}: {e}"))?;
            let value: HeaderValue = value.parse().map_err(|e| format!("header {name}: {e}"))?;
            headers.insert(name, value);
        }
        Ok(HttpClient {
            uri,
            headers,
            timeout: common.timeout,
            security,
            pool: Mutex::new(None),
        })
    }

    /// The pool for the credentials in use, rebuilt when a reload changed them.
    fn pool(&self) -> Pool {
        let (generation, security) = self.security.current();
        let mut slot = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = slot.as_ref()
            && pool.generation == generation
        {
            return pool.clone();
        }
        let connector = security.connector(Alpn::Http1, Some(self.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let mut headers = self.headers.clone();
        for (name, value) in security.headers() {
            headers.insert(name.clone(), value.clone());
        }
        let pool = Pool {
            generation,
            client,
            headers,
        };
        *slot = Some(pool.clone());
        pool
    }

    /// POSTs `body` and reads the whole answer, within the pipeline's `timeout`.
    ///
    /// # Errors
    /// [`SendError::Retry`] when the backend cannot be reached or does not answer in
    /// time.
    pub async fn post(&self, body: Bytes) -> Result<Answer, SendError> {
        let pool = self.pool();
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(Full::new(body))
            .map_err(|e| SendError::Permanent {
                reason: format!("cannot build the request: {e}"),
                cause: FailureCause::Request,
            })?;
        *request.headers_mut() = pool.headers;
        let exchange = async {
            let response = pool
                .client
                .request(request)
                .await
                .map_err(|e| SendError::unreachable(&self.uri.to_string(), &e))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, SendError>(Answer {
                status,
                retry_after,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| SendError::Retry {
                reason: format!("no answer from {} within {:?}", self.uri, self.timeout),
                retry_after: None,
                cause: FailureCause::Timeout,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<u64>) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: retry_after.map(Duration::from_secs),
            body: Bytes::from_static(b"no"),
        }
    }

    #[test]
    fn default_paths_are_appended_only_to_bare_endpoints() {
        assert_eq!(
            with_default_path("http://h:1", "/v1/metrics"),
            "http://h:1/v1/metrics"
        );
        assert_eq!(
            with_default_path("http://h:1/", "/v1/metrics"),
            "http://h:1/v1/metrics"
        );
        assert_eq!(
            with_default_path("http://h:1/otlp/v1/metrics", "/v1/metrics"),
            "http://h:1/otlp/v1/metrics"
        );
    }

    #[test]
    fn http_statuses_are_sorted_into_sent_retry_and_permanent() {
        assert_eq!(answer(204, None).status_outcome(), Ok(()));
        for code in [429, 408, 500, 502, 503, 504] {
            assert!(
                matches!(
                    answer(code, Some(3)).status_outcome(),
                    Err(SendError::Retry { retry_after: Some(d), .. }) if d == Duration::from_secs(3)
                ),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 413] {
            assert!(
                matches!(answer(code, None).status_outcome(), Err(SendError::Permanent { reason, .. }) if reason.contains("no")),
                "{code}"
            );
        }
    }
}
