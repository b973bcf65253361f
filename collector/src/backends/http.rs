//! The HTTP/1.1 client the HTTP backends share: one keep-alive pool per pipeline, a
//! POST with fixed headers and a deadline, and the status rule all of them follow.
//!
//! Owns: connecting, the deadline and reading the answer. Must never: follow
//! redirects, retry, or change a body.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{SendError, quote};
use crate::pipeline::PipelineCommon;

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
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Err(SendError::Retry {
                reason,
                retry_after: self.retry_after,
            })
        } else {
            Err(SendError::Permanent(reason))
        }
    }
}

/// A POST client for one URL with fixed headers.
pub(super) struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
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
    pub fn new(url: &str, mut headers: HeaderMap, common: &PipelineCommon) -> Result<Self, String> {
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(common.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(HttpClient {
            client,
            uri,
            headers,
            timeout: common.timeout,
        })
    }

    /// POSTs `body` and reads the whole answer, within the pipeline's `timeout`.
    ///
    /// # Errors
    /// [`SendError::Retry`] when the backend cannot be reached or does not answer in
    /// time.
    pub async fn post(&self, body: Bytes) -> Result<Answer, SendError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(Full::new(body))
            .map_err(|e| SendError::Permanent(format!("cannot build the request: {e}")))?;
        *request.headers_mut() = self.headers.clone();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| SendError::Retry {
                    reason: format!("cannot reach {}: {e}", self.uri),
                    retry_after: None,
                })?;
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
                matches!(answer(code, None).status_outcome(), Err(SendError::Permanent(m)) if m.contains("no")),
                "{code}"
            );
        }
    }
}
