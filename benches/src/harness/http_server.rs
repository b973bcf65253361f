//! The HTTP servers the harness runs itself: a Prometheus remote-write receiver that
//! decodes every request (snappy, then protobuf) and keeps the latest value of every
//! series, and scrape targets serving M series each, as text or, to a scraper that
//! asks for it, as protobuf ([`TargetFormat`]).
//!
//! Owns: the receiver's counts (requests, samples, refused requests) and its outage
//! switch (answer 503 to every write while set), and the targets' scrape counts.
//! Must never: count a sample it answered with an error for (a refused request is
//! not decoded), or block a connection on another.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message;
use weir_proto::client_model::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use weir_proto::prometheus::WriteRequest;

type Body = Full<Bytes>;

/// Serves `handle` on `listener` until the runtime stops, one task per connection.
fn serve<F>(rt: &tokio::runtime::Handle, listener: std::net::TcpListener, handle: F)
where
    F: Fn(Request<Bytes>) -> Response<Body> + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    rt.spawn(async move {
        let _ = listener.set_nonblocking(true);
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let handle = handle.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(handle(Request::from_parts(parts, body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// The latest sample of one series and how many samples it got.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeriesState {
    /// Value of the sample with the highest timestamp.
    pub value: f64,
    /// Its timestamp, ms.
    pub timestamp_ms: i64,
    /// Samples received.
    pub samples: u64,
}

/// What the receiver has accepted so far.
#[derive(Default)]
pub struct Received {
    /// Every series (its labels, sorted, as `name=value,...`) and its state.
    pub series: HashMap<String, SeriesState>,
    /// Accepted requests.
    pub requests: u64,
    /// Samples in accepted requests.
    pub samples: u64,
    /// Highest sample timestamp accepted, ms.
    pub max_timestamp_ms: i64,
    /// When the last request was accepted.
    pub last_request: Option<Instant>,
}

/// A remote-write receiver on a free 127.0.0.1 port (`POST /api/v1/write`).
pub struct RemoteWriteReceiver {
    /// Its address.
    pub addr: SocketAddr,
    /// What it accepted.
    pub received: Arc<Mutex<Received>>,
    refusing: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
}

impl RemoteWriteReceiver {
    /// Starts it on `rt`.
    pub fn start(rt: &tokio::runtime::Handle) -> std::io::Result<RemoteWriteReceiver> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let received: Arc<Mutex<Received>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let (r, off, n) = (received.clone(), refusing.clone(), refused.clone());
        serve(rt, listener, move |req| {
            // Relaxed: an independent switch and tally, no data published through them.
            if off.load(Ordering::Relaxed) {
                n.fetch_add(1, Ordering::Relaxed);
                return reply(StatusCode::SERVICE_UNAVAILABLE, "outage");
            }
            let Ok(raw) = snap::raw::Decoder::new().decompress_vec(req.body()) else {
                return reply(StatusCode::BAD_REQUEST, "bad snappy");
            };
            let Ok(wr) = WriteRequest::decode(raw.as_slice()) else {
                return reply(StatusCode::BAD_REQUEST, "bad protobuf");
            };
            let mut g = r.lock().unwrap_or_else(|p| p.into_inner());
            g.requests += 1;
            g.last_request = Some(Instant::now());
            for ts in wr.timeseries {
                let mut labels: Vec<(String, String)> =
                    ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
                labels.sort();
                let key = labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                let n = ts.samples.len() as u64;
                g.samples += n;
                let max_ts = ts.samples.iter().map(|s| s.timestamp).max().unwrap_or(0);
                g.max_timestamp_ms = g.max_timestamp_ms.max(max_ts);
                let st = g.series.entry(key).or_default();
                st.samples += n;
                for s in ts.samples {
                    if s.timestamp >= st.timestamp_ms {
                        st.timestamp_ms = s.timestamp;
                        st.value = s.value;
                    }
                }
            }
            reply(StatusCode::NO_CONTENT, "")
        });
        Ok(RemoteWriteReceiver {
            addr,
            received,
            refusing,
            refused,
        })
    }

    /// The URL to configure as the remote-write endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// While true, every write is answered 503 and not counted.
    pub fn set_refusing(&self, on: bool) {
        self.refusing.store(on, Ordering::Relaxed);
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Runs `f` on what was received.
    pub fn with<R>(&self, f: impl FnOnce(&Received) -> R) -> R {
        f(&self.received.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The body format the scrape targets answer in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetFormat {
    /// The text format 0.0.4 to every scraper.
    #[default]
    Text,
    /// Delimited `io.prometheus.client.MetricFamily` messages to a scraper whose
    /// `Accept` offers them, as Go's client_golang does; text to the others (vmagent
    /// and Prometheus without native histograms ask for text only).
    Protobuf,
}

/// The content type of a protobuf scrape body.
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// True when an `Accept` header value offers the delimited `MetricFamily` protobuf
/// format (with any quality above 0).
fn accepts_protobuf(accept: &str) -> bool {
    accept.split(',').any(|offer| {
        let mut params = offer.split(';').map(str::trim);
        params.next() == Some("application/vnd.google.protobuf")
            && params.clone().any(|p| {
                p == "proto=io.prometheus.client.MetricFamily"
                    || p == "proto=\"io.prometheus.client.MetricFamily\""
            })
            && params.clone().any(|p| p == "encoding=delimited")
            && !params.clone().any(|p| {
                p.strip_prefix("q=")
                    .is_some_and(|q| q.parse::<f64>() == Ok(0.0))
            })
    })
}

/// The protobuf body of one target at scrape number `v`: one `GAUGE` family with the
/// same series and values as the text page.
fn protobuf_page(m: usize, v: u64) -> Vec<u8> {
    MetricFamily {
        name: Some(TARGET_METRIC.into()),
        help: None,
        r#type: Some(MetricType::Gauge as i32),
        metric: (0..m)
            .map(|j| Metric {
                label: vec![LabelPair {
                    name: Some("series".into()),
                    value: Some(j.to_string()),
                }],
                gauge: Some(Gauge {
                    value: Some(v as f64),
                }),
                ..Default::default()
            })
            .collect(),
    }
    .encode_length_delimited_to_vec()
}

/// `n` scrape targets on free 127.0.0.1 ports, each serving `m` gauge series
/// `bench_target_value{series="<j>"}` whose value is that target's scrape number
/// (1 at the first scrape), until [`Targets::freeze`]; in `format`.
pub struct Targets {
    /// `host:port` of each target.
    pub addrs: Vec<String>,
    scrapes: Arc<Vec<AtomicU64>>,
    frozen: Arc<AtomicBool>,
}

/// The metric name every target serves.
pub const TARGET_METRIC: &str = "bench_target_value";

impl Targets {
    /// Starts them on `rt`.
    pub fn start(
        rt: &tokio::runtime::Handle,
        n: usize,
        m: usize,
        format: TargetFormat,
    ) -> std::io::Result<Targets> {
        let scrapes: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let frozen = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::with_capacity(n);
        // The body without its values: the same for every target.
        let lines: Arc<Vec<String>> = Arc::new(
            (0..m)
                .map(|j| format!("{TARGET_METRIC}{{series=\"{j}\"}} "))
                .collect(),
        );
        for i in 0..n {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            addrs.push(listener.local_addr()?.to_string());
            let (scrapes, frozen, lines) = (scrapes.clone(), frozen.clone(), lines.clone());
            serve(rt, listener, move |req| {
                // Relaxed: a per-target tally; the final value is read after `freeze`
                // and a wait of several scrape intervals.
                let v = if frozen.load(Ordering::Relaxed) {
                    scrapes[i].load(Ordering::Relaxed)
                } else {
                    scrapes[i].fetch_add(1, Ordering::Relaxed) + 1
                };
                let protobuf = format == TargetFormat::Protobuf
                    && req
                        .headers()
                        .get(hyper::header::ACCEPT)
                        .and_then(|a| a.to_str().ok())
                        .is_some_and(accepts_protobuf);
                if protobuf {
                    let mut r = reply(StatusCode::OK, protobuf_page(m, v));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(PROTOBUF_CONTENT_TYPE),
                    );
                    return r;
                }
                let mut body = String::with_capacity(lines.len() * 40 + 64);
                body.push_str("# TYPE bench_target_value gauge\n");
                for l in lines.iter() {
                    body.push_str(l);
                    body.push_str(&v.to_string());
                    body.push('\n');
                }
                let mut r = reply(StatusCode::OK, body);
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            });
        }
        Ok(Targets {
            addrs,
            scrapes,
            frozen,
        })
    }

    /// From now on every scrape sees the value of the last one.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Relaxed);
    }

    /// Scrapes served so far by target `i` (its current value).
    pub fn scrapes(&self, i: usize) -> u64 {
        self.scrapes[i].load(Ordering::Relaxed)
    }

    /// Scrapes served by all targets.
    pub fn total_scrapes(&self) -> u64 {
        (0..self.addrs.len()).map(|i| self.scrapes(i)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_accept_offering_delimited_metric_families_gets_protobuf() {
        assert!(accepts_protobuf(weir_accept()));
        assert!(accepts_protobuf(PROTOBUF_CONTENT_TYPE));
        for text in [
            "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0",
            "",
        ] {
            assert!(!accepts_protobuf(text), "{text}");
        }
    }

    /// The `Accept` weir's scraper sends.
    fn weir_accept() -> &'static str {
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,\
         application/openmetrics-text;version=1.0.0;q=0.6,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    }
}
