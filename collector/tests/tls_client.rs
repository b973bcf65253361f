//! Outgoing TLS and credentials against an in-test HTTPS peer whose certificates
//! rcgen makes: verified against a CA file, a wrong CA and an expired certificate
//! refused and counted under reason `tls`, `insecure_skip_verify`, a client
//! certificate (mTLS) with a server name override, basic auth and bearer tokens
//! sent (and re-read on reload), scrapes over HTTPS, and no secret in `Debug` output
//! or `/status`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use weir_collector::backends::FailureCause;
use weir_collector::config::{Config, PipelineConfig};
use weir_collector::pipeline::{Pipeline, PipelineSet};
use weir_collector::sources::scrape::{ScrapeError, ScrapeTargets, Scraper};
use weir_collector::telemetry::StageMetrics;
use weir_collector::tls;
use weir_core::{Aggregator, FlushBatch, Sample};

/// A directory of PEM files, removed at the end.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "weir-tls-client-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA that signs leaves.
struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A leaf certificate and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }
}

/// What the peer saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    client_cert: bool,
}

/// An HTTPS peer on 127.0.0.1: records each request and answers 204 to POSTs and an
/// exposition body to GETs.
struct Peer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    /// Serves `leaf`; `client_ca`: ask for (and require) a client certificate
    /// signed by it.
    async fn start(leaf: &Leaf, client_ca: Option<&Ca>) -> Peer {
        let builder = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.0.der().clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    tls::provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(vec![leaf.der.clone()], leaf.key.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    // A refused handshake is what some tests are about.
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_cert = stream.get_ref().1.peer_certificates().is_some();
                    let service =
                        hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let log = log.clone();
                                async move {
                                    let get = req.method() == hyper::Method::GET;
                                    log.lock().unwrap().push(Seen {
                                        headers: req.headers().clone(),
                                        client_cert,
                                    });
                                    let _ = req.into_body().collect().await;
                                    let mut resp =
                                        hyper::Response::new(Full::new(Bytes::from_static(
                                            if get { b"tls_test_metric 1\n" } else { b"" },
                                        )));
                                    if !get {
                                        *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
                                    }
                                    Ok::<_, std::convert::Infallible>(resp)
                                }
                            },
                        );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Peer { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn pipeline_config(url: &str, extra: &str) -> PipelineConfig {
    let text = format!(
        "[[pipelines]]\nname = \"t\"\ntype = \"influxdb\"\nendpoint = \"{url}\"\n\
         database = \"db\"\ntimeout = \"5s\"\n{extra}\n\
         [pipelines.retry]\ninitial_backoff = \"5ms\"\nmax_backoff = \"20ms\"\n"
    );
    let mut c = Config::from_toml(&text, "test").unwrap();
    c.pipelines.remove(0)
}

fn batch() -> FlushBatch {
    let agg = Aggregator::default();
    agg.record("batch", &[], Sample::Gauge(1.0), 0).unwrap();
    agg.flush()
}

/// Sends one batch; returns the pipeline and whether it was delivered (after the
/// first attempt's outcome: delivered, or failed).
async fn send_one(config: &PipelineConfig, pki: &Pki) -> (Pipeline, bool, Option<String>) {
    let p = Pipeline::start(config, &pki.dir.join("wal")).await.unwrap();
    let head = p.accept(&batch());
    let outcome = p.wait_delivered(head, Duration::from_secs(20)).await;
    (p, outcome.delivered, outcome.error)
}

fn tls_failures(p: &Pipeline) -> u64 {
    p.counters().send_failures[FailureCause::Tls.index()].load(Ordering::Relaxed)
}

#[tokio::test]
async fn an_https_pipeline_verified_against_its_ca_file_sends_with_basic_auth() {
    let pki = Pki::new("ok");
    let ca = Ca::new("weir test CA");
    let peer = Peer::start(&ca.leaf(&["localhost", "127.0.0.1"], false), None).await;
    let ca_file = pki.write("ca.pem", &ca.pem());
    let config = pipeline_config(
        &format!("https://127.0.0.1:{}", peer.addr.port()),
        &format!(
            "tls = {{ ca_file = {ca_file:?} }}\n\
             basic_auth = {{ username = \"weir\", password = \"s3cret-pass\" }}"
        ),
    );
    let (p, delivered, error) = send_one(&config, &pki).await;
    assert!(delivered, "{error:?}");
    let seen = peer.seen();
    assert_eq!(seen.len(), 1);
    // base64("weir:s3cret-pass")
    assert_eq!(
        seen[0].headers["authorization"],
        "Basic d2VpcjpzM2NyZXQtcGFzcw=="
    );
    assert!(!seen[0].client_cert);
    assert_eq!(tls_failures(&p), 0);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_wrong_ca_is_refused_counted_as_tls_and_named_unknown_issuer() {
    let pki = Pki::new("wrong-ca");
    let ca = Ca::new("the peer's CA");
    let other = Ca::new("another CA");
    let peer = Peer::start(&ca.leaf(&["127.0.0.1"], false), None).await;
    let ca_file = pki.write("other.pem", &other.pem());
    let config = pipeline_config(
        &format!("https://127.0.0.1:{}", peer.addr.port()),
        &format!("tls = {{ ca_file = {ca_file:?} }}"),
    );
    let (p, delivered, error) = send_one(&config, &pki).await;
    assert!(!delivered);
    let error = error.unwrap();
    assert!(error.contains("unknown issuer"), "{error}");
    assert!(tls_failures(&p) >= 1);
    assert!(peer.seen().is_empty(), "no request got through");
    let mut page = weir_collector::telemetry::MetricsPage::new();
    let set = PipelineSet(vec![Arc::new(p)]);
    set.render(&mut page);
    let text = page.into_string();
    assert!(
        text.lines().any(|l| l
            .starts_with("weir_pipeline_send_failures_total{pipeline=\"t\",reason=\"tls\"}")
            && !l.ends_with(" 0")),
        "{text}"
    );
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused_as_expired() {
    let pki = Pki::new("expired");
    let ca = Ca::new("weir test CA");
    let peer = Peer::start(&ca.leaf(&["127.0.0.1"], true), None).await;
    let ca_file = pki.write("ca.pem", &ca.pem());
    let config = pipeline_config(
        &format!("https://127.0.0.1:{}", peer.addr.port()),
        &format!("tls = {{ ca_file = {ca_file:?} }}"),
    );
    let (p, delivered, error) = send_one(&config, &pki).await;
    assert!(!delivered);
    let error = error.unwrap();
    assert!(error.contains("certificate expired"), "{error}");
    assert!(tls_failures(&p) >= 1);
    p.shutdown(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_certificate_no_root_signs() {
    let pki = Pki::new("insecure");
    let ca = Ca::new("nobody trusts this CA");
    let peer = Peer::start(&ca.leaf(&["elsewhere.test"], false), None).await;
    let config = pipeline_config(
        &format!("https://127.0.0.1:{}", peer.addr.port()),
        "tls = { insecure_skip_verify = true }",
    );
    let (p, delivered, error) = send_one(&config, &pki).await;
    assert!(delivered, "{error:?}");
    assert_eq!(peer.seen().len(), 1);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_client_certificate_is_presented_with_a_server_name_override_and_a_bearer_token_file_re_read_on_reload()
 {
    let pki = Pki::new("mtls");
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    // The certificate names a host the URL does not: server_name says which.
    let peer = Peer::start(&ca.leaf(&["backend.weir.test"], false), Some(&client_ca)).await;
    let client = client_ca.leaf(&["weir-agent"], false);
    let ca_file = pki.write("ca.pem", &ca.pem());
    let cert_file = pki.write("client.pem", &client.cert_pem);
    let key_file = pki.write("client-key.pem", &client.key_pem);
    let token_file = pki.write("token", "first-token\n");
    let tenant_file = pki.write("tenant", "tenant-a\n");
    let url = format!("https://127.0.0.1:{}", peer.addr.port());
    let config = pipeline_config(
        &url,
        &format!(
            "tls = {{ ca_file = {ca_file:?}, cert_file = {cert_file:?}, key_file = {key_file:?}, \
             server_name = \"backend.weir.test\" }}\n\
             bearer_token_file = {token_file:?}\n\
             headers_from_files = {{ \"X-Scope-OrgID\" = {tenant_file:?} }}"
        ),
    );
    let (p, delivered, error) = send_one(&config, &pki).await;
    assert!(delivered, "{error:?}");
    let seen = peer.seen();
    assert!(seen[0].client_cert);
    assert_eq!(seen[0].headers["authorization"], "Bearer first-token");
    assert_eq!(seen[0].headers["x-scope-orgid"], "tenant-a");
    // A rotated token is sent after a reload.
    std::fs::write(&token_file, "second-token\n").unwrap();
    p.reload_security().unwrap();
    let head = p.accept(&batch());
    assert!(
        p.wait_delivered(head, Duration::from_secs(20))
            .await
            .delivered
    );
    let seen = peer.seen();
    assert_eq!(
        seen.last().unwrap().headers["authorization"],
        "Bearer second-token"
    );
    // A file gone at reload is an error naming it; the token in use stays.
    std::fs::remove_file(&token_file).unwrap();
    let e = p.reload_security().unwrap_err();
    assert!(
        e.contains("bearer_token_file") && e.contains("token"),
        "{e}"
    );
    p.shutdown(Duration::from_secs(1)).await;

    // Without the client certificate the peer refuses: counted as tls.
    let config = pipeline_config(
        &url,
        &format!("tls = {{ ca_file = {ca_file:?}, server_name = \"backend.weir.test\" }}"),
    );
    let pki2 = Pki::new("mtls-none");
    let (p, delivered, error) = send_one(&config, &pki2).await;
    assert!(!delivered);
    let error = error.unwrap();
    assert!(error.contains("TLS"), "{error}");
    assert!(tls_failures(&p) >= 1, "{error}");
    p.shutdown(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn secrets_never_show_in_debug_output_or_status() {
    let pki = Pki::new("redact");
    let ca = Ca::new("weir test CA");
    let peer = Peer::start(&ca.leaf(&["127.0.0.1"], false), None).await;
    let ca_file = pki.write("ca.pem", &ca.pem());
    let tenant_file = pki.write("tenant", "tenant-secret-9\n");
    let config = pipeline_config(
        &format!("https://127.0.0.1:{}", peer.addr.port()),
        &format!(
            "tls = {{ ca_file = {ca_file:?} }}\n\
             basic_auth = {{ username = \"weir\", password = \"pw-secret-1\" }}\n\
             headers_from_files = {{ \"X-Tenant\" = {tenant_file:?} }}"
        ),
    );
    let (p, delivered, error) = send_one(&config, &pki).await;
    assert!(delivered, "{error:?}");
    let set = PipelineSet(vec![Arc::new(p)]);
    let status = serde_json::to_string(&set.status()).unwrap();
    let mut page = weir_collector::telemetry::MetricsPage::new();
    set.render(&mut page);
    let shown = format!("{config:?}\n{status}\n{}", page.into_string());
    for secret in ["pw-secret-1", "tenant-secret-9", "d2Vpcjpwdy1zZWNyZXQtMQ"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("<redacted>"), "{shown}");
}

/// Waits (bounded) until `done` holds for the target's counters.
async fn wait_for(
    scraper: &Scraper,
    done: impl Fn(&weir_collector::sources::scrape::TargetCounters) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&scraper.targets[0].1) {
        assert!(
            Instant::now() < deadline,
            "the scrape did not happen in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn scrape_config(url: &str, extra: &str) -> weir_collector::config::ScrapeConfig {
    let text = format!(
        "[[scrape.targets]]\nurl = \"{url}\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n{extra}\n"
    );
    Config::from_toml(&text, "test").unwrap().scrape
}

#[tokio::test]
async fn an_https_scrape_with_a_bearer_token_is_up_and_a_wrong_ca_is_down_as_tls() {
    let pki = Pki::new("scrape");
    let ca = Ca::new("weir test CA");
    let other = Ca::new("another CA");
    let peer = Peer::start(&ca.leaf(&["127.0.0.1"], false), None).await;
    let url = format!("https://127.0.0.1:{}/metrics", peer.addr.port());
    let agg = Aggregator::default();
    let ca_file = pki.write("ca.pem", &ca.pem());
    let scraper = Scraper::start(
        &scrape_config(
            &url,
            &format!("tls = {{ ca_file = {ca_file:?} }}\nbearer_token = \"scrape-token\""),
        ),
        &agg,
    );
    wait_for(&scraper, |c| c.up.load(Ordering::Relaxed) == 1).await;
    assert_eq!(
        peer.seen()[0].headers["authorization"],
        "Bearer scrape-token"
    );
    scraper.stop(Duration::from_secs(1)).await;

    let other_file = pki.write("other.pem", &other.pem());
    let scraper = Scraper::start(
        &scrape_config(&url, &format!("tls = {{ ca_file = {other_file:?} }}")),
        &agg,
    );
    let tls = ScrapeError::REASONS
        .iter()
        .position(|r| *r == "tls")
        .unwrap();
    wait_for(&scraper, |c| c.errors[tls].load(Ordering::Relaxed) > 0).await;
    let c = &scraper.targets[0].1;
    assert_eq!(c.up.load(Ordering::Relaxed), 0);
    let last = c.last_error.lock().unwrap().clone().unwrap();
    assert!(
        last.starts_with("tls: ") && last.contains("unknown issuer"),
        "{last}"
    );
    let mut page = weir_collector::telemetry::MetricsPage::new();
    ScrapeTargets(scraper.targets.clone()).render(&mut page);
    let text = page.into_string();
    assert!(
        text.contains(&format!(
            "weir_scrape_errors_total{{target=\"{url}\",reason=\"tls\"}}"
        )),
        "{text}"
    );
    scraper.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_scrape_target_whose_credentials_file_is_missing_is_down_as_credentials_until_a_reload_reads_it()
 {
    let pki = Pki::new("scrape-creds");
    let ca = Ca::new("weir test CA");
    let peer = Peer::start(&ca.leaf(&["127.0.0.1"], false), None).await;
    let url = format!("https://127.0.0.1:{}/metrics", peer.addr.port());
    let ca_file = pki.write("ca.pem", &ca.pem());
    let token: &Path = &pki.dir.join("token");
    let agg = Aggregator::default();
    let scraper = Scraper::start(
        &scrape_config(
            &url,
            &format!("tls = {{ ca_file = {ca_file:?} }}\nbearer_token_file = {token:?}"),
        ),
        &agg,
    );
    let creds = ScrapeError::REASONS
        .iter()
        .position(|r| *r == "credentials")
        .unwrap();
    wait_for(&scraper, |c| c.errors[creds].load(Ordering::Relaxed) > 0).await;
    assert!(peer.seen().is_empty());
    std::fs::write(token, "late-token\n").unwrap();
    assert_eq!(scraper.reload_security(), 1);
    wait_for(&scraper, |c| c.up.load(Ordering::Relaxed) == 1).await;
    assert_eq!(peer.seen()[0].headers["authorization"], "Bearer late-token");
    scraper.stop(Duration::from_secs(1)).await;
}
