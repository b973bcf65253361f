//! InfluxDB line protocol out: 1.x (`/write?db=`) or 2.x (`/api/v2/write?org=&bucket=`,
//! `Authorization: Token`), millisecond precision, cumulative by default.
//!
//! Owns: the InfluxDB config variant, its URL and headers, and reading partial writes.
//! InfluxDB stores the lines it can and refuses the others in one answer (HTTP 400 in
//! 1.x, 422 in 2.x, a message with `partial write` and `dropped=N`): such an answer is
//! a send that went through with N points refused, not a failed batch, since sending
//! it again would store the good lines twice and the bad ones never.

use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::HeaderMap;
use serde::Deserialize;
use weir_core::FlushBatch;
use weir_core::encode::{EncodeOptions, EncodedRequest};

use super::http::{Answer, HttpClient, header, with_default_path};
use super::{Backend, SendError, SendFuture, Sent, gzip};
use crate::pipeline::{CompressionConfig, PipelineCommon, TemporalityConfig};
use crate::tls::client::{LiveSecurity, Secret};

/// `type = "influxdb"`: `database` (1.x) or `org` + `bucket` (2.x).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Cumulative (default) or delta counters and histograms.
    #[serde(default)]
    pub temporality: Option<TemporalityConfig>,
    /// `none` (default) or `gzip`.
    #[serde(default)]
    pub compression: CompressionConfig,
    /// InfluxDB 1.x: the database (`/write?db=`). Set this or `bucket`.
    #[serde(default)]
    pub database: Option<String>,
    /// InfluxDB 2.x: the organisation (`/api/v2/write?org=`).
    #[serde(default)]
    pub org: Option<String>,
    /// InfluxDB 2.x: the bucket (`/api/v2/write?bucket=`). Set this or `database`.
    #[serde(default)]
    pub bucket: Option<String>,
    /// InfluxDB 2.x: the API token (`Authorization: Token ...`).
    #[serde(default)]
    pub token: Option<Secret>,
    /// The keys every pipeline has. `endpoint`: the base URL (`/write` or
    /// `/api/v2/write` is appended when it has no path).
    #[serde(flatten)]
    pub common: PipelineCommon,
    /// TLS and credentials (`tls`, `basic_auth`, `bearer_token`,
    /// `bearer_token_file`, `headers_from_files`).
    #[serde(flatten)]
    pub security: crate::tls::client::ClientSecurityConfig,
}

impl InfluxConfig {
    /// Checks the InfluxDB keys; on error the key and the reason.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        match (&self.database, &self.bucket) {
            (None, None) | (Some(_), Some(_)) => {
                return Err((
                    "database",
                    "an influxdb pipeline needs `database` (InfluxDB 1.x) or `bucket` (2.x), \
                     not both"
                        .to_owned(),
                ));
            }
            _ => {}
        }
        if self.token.is_some()
            && self
                .security
                .header_names()
                .iter()
                .any(|h| h == "authorization")
        {
            return Err((
                "token",
                "token, basic_auth and the bearer token all set Authorization: set one".to_owned(),
            ));
        }
        if self.bucket.is_some() && self.org.is_none() {
            return Err(("org", "InfluxDB 2.x needs `org` with `bucket`".to_owned()));
        }
        Ok(())
    }

    /// The write URL.
    fn url(&self) -> String {
        match (&self.database, &self.bucket) {
            (Some(db), _) => with_default_path(
                &self.common.endpoint,
                &format!("/write?db={}&precision=ms", query_value(db)),
            ),
            (None, bucket) => with_default_path(
                &self.common.endpoint,
                &format!(
                    "/api/v2/write?org={}&bucket={}&precision=ms",
                    query_value(self.org.as_deref().unwrap_or_default()),
                    query_value(bucket.as_deref().unwrap_or_default())
                ),
            ),
        }
    }
}

/// Percent-encodes a query parameter value: everything but RFC 3986's unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`).
fn query_value(v: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(v, RESERVED).to_string()
}

/// Encodes a flush into line protocol bodies as they go on the wire.
pub fn encode(
    config: &InfluxConfig,
    batch: &FlushBatch,
    options: &EncodeOptions,
) -> Vec<EncodedRequest> {
    let mut requests = weir_core::encode::influx::encode(batch, options);
    if config.compression == CompressionConfig::Gzip {
        for r in &mut requests {
            if let Ok(body) = gzip(&r.body) {
                r.body = body;
            }
        }
    }
    requests
}

/// The InfluxDB sender.
pub struct Influx {
    http: HttpClient,
}

impl Influx {
    /// A sender for `config`.
    ///
    /// # Errors
    /// A message if the endpoint or a header cannot be used.
    pub fn new(config: &InfluxConfig, security: Arc<LiveSecurity>) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        headers.extend([header("content-type", "text/plain; charset=utf-8")]);
        if let Some(token) = &config.token {
            let (name, mut value) = header("authorization", &format!("Token {}", token.expose()));
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if config.compression == CompressionConfig::Gzip {
            headers.extend([header("content-encoding", "gzip")]);
        }
        let http = HttpClient::new(&config.url(), headers, &config.common, security)?;
        Ok(Influx { http })
    }
}

impl Backend for Influx {
    fn send(&mut self, body: Bytes) -> SendFuture<'_> {
        Box::pin(async move { outcome(&self.http.post(body).await?) })
    }
}

/// Sorts an InfluxDB answer: a partial write went through with its dropped lines
/// refused; everything else follows the common HTTP rule.
fn outcome(answer: &Answer) -> Result<Sent, SendError> {
    let partial = matches!(
        answer.status,
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
    ) && String::from_utf8_lossy(&answer.body).contains("partial write");
    if partial {
        // The forwarder logs and counts the refused points.
        return Ok(Sent {
            rejected_points: dropped_points(&answer.body),
        });
    }
    answer.status_outcome()?;
    Ok(Sent::default())
}

/// The sum of `dropped=N` in a partial-write message; at least 1, since InfluxDB
/// said it dropped something.
fn dropped_points(body: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(body);
    let sum: u64 = text
        .match_indices("dropped=")
        .filter_map(|(i, m)| {
            let digits: String = text[i + m.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<u64>().ok()
        })
        .sum();
    sum.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn a_partial_write_is_sent_with_its_dropped_lines_rejected() {
        // InfluxDB 1.x's answer to a batch with one line of the wrong field type.
        let v1 = answer(
            400,
            r#"{"error":"partial write: field type conflict: input field \"value\" on measurement \"m\" is type float, already exists as type string dropped=3"}"#,
        );
        assert_eq!(outcome(&v1), Ok(Sent { rejected_points: 3 }));
        let v2 = answer(
            422,
            r#"{"code":"unprocessable entity","message":"failure writing points to database: partial write: points beyond retention policy dropped=2"}"#,
        );
        assert_eq!(outcome(&v2), Ok(Sent { rejected_points: 2 }));
        let unnumbered = answer(400, r#"{"error":"partial write"}"#);
        assert_eq!(outcome(&unnumbered), Ok(Sent { rejected_points: 1 }));
    }

    #[test]
    fn other_answers_follow_the_http_rule() {
        assert_eq!(outcome(&answer(204, "")), Ok(Sent::default()));
        assert!(matches!(
            outcome(&answer(
                400,
                r#"{"error":"unable to parse 'x': missing fields"}"#
            )),
            Err(SendError::Permanent { .. })
        ));
        assert!(matches!(
            outcome(&answer(503, "")),
            Err(SendError::Retry { .. })
        ));
        assert!(matches!(
            outcome(&answer(404, r#"{"error":"database not found: \"x\""}"#)),
            Err(SendError::Permanent { .. })
        ));
    }

    #[test]
    fn urls_follow_the_influx_version() {
        let v1: InfluxConfig =
            toml::from_str("name = \"i\"\nendpoint = \"http://h:8086\"\ndatabase = \"my db&x\"\n")
                .unwrap();
        assert_eq!(v1.url(), "http://h:8086/write?db=my%20db%26x&precision=ms");
        let v2: InfluxConfig = toml::from_str(
            "name = \"i\"\nendpoint = \"http://h:8086/\"\norg = \"o\"\nbucket = \"b\"\n",
        )
        .unwrap();
        assert_eq!(
            v2.url(),
            "http://h:8086/api/v2/write?org=o&bucket=b&precision=ms"
        );
    }
}
