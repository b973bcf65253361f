//! Prometheus remote write 1.0: `WriteRequest` protobuf, snappy-compressed, POSTed
//! with the protocol's headers. Always cumulative (the protocol has no deltas).
//!
//! Owns: the remote-write config variant, its headers and its answers (Prometheus
//! answers 204; 400 means the samples are invalid and will stay invalid).

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderMap;
use serde::Deserialize;
use weir_core::FlushBatch;
use weir_core::encode::{EncodeOptions, EncodedRequest};

use super::http::{HttpClient, header};
use super::{Backend, SendFuture, Sent};
use crate::pipeline::PipelineCommon;
use crate::tls::client::LiveSecurity;

/// `type = "prometheus_remote_write"`: only the common keys (`endpoint` is the full
/// write URL). `temporality` and `compression` are not keys of this type: remote
/// write is cumulative and snappy by definition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// The keys every pipeline has.
    #[serde(flatten)]
    pub common: PipelineCommon,
    /// TLS and credentials (`tls`, `basic_auth`, `bearer_token`,
    /// `bearer_token_file`, `headers_from_files`).
    #[serde(flatten)]
    pub security: crate::tls::client::ClientSecurityConfig,
}

/// Encodes a flush into `WriteRequest` bodies (snappy-compressed).
pub fn encode(batch: &FlushBatch, options: &EncodeOptions) -> Vec<EncodedRequest> {
    weir_core::encode::remote_write::encode(batch, options)
}

/// The remote-write sender.
pub struct RemoteWrite {
    http: HttpClient,
}

impl RemoteWrite {
    /// A sender for `config`.
    ///
    /// # Errors
    /// A message if the endpoint or a header cannot be used.
    pub fn new(config: &RemoteWriteConfig, security: Arc<LiveSecurity>) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        headers.extend([
            header("content-type", "application/x-protobuf"),
            header("content-encoding", "snappy"),
            header("x-prometheus-remote-write-version", "0.1.0"),
        ]);
        let http = HttpClient::new(&config.common.endpoint, headers, &config.common, security)?;
        Ok(RemoteWrite { http })
    }
}

impl Backend for RemoteWrite {
    fn send(&mut self, body: Bytes) -> SendFuture<'_> {
        Box::pin(async move {
            let answer = self.http.post(body).await?;
            answer.status_outcome()?;
            Ok(Sent::default())
        })
    }
}
