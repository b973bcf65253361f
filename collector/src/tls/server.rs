//! Incoming TLS: the `tls` table of a listener (OTLP gRPC and HTTP, the admin API, the
//! exposition endpoint), the server configuration built from its files, and the
//! handshake of each accepted connection.
//!
//! Owns:
//! - [`TlsServerConfig`], the `tls` table (`cert_file`, `key_file`, `client_ca_file`,
//!   `min_version`), as an OpenTelemetry Collector user writes it. With
//!   `client_ca_file`, every client must present a certificate signed by one of its
//!   CAs (as the Collector does): a connection without one, or with one from another
//!   CA, is refused in the handshake.
//! - [`ServerTls`], one per TLS listener: the current `rustls::ServerConfig` behind a
//!   lock that each new connection reads once, at its handshake. A reload
//!   ([`ServerTls::reload`]) builds a whole new configuration from the files and swaps
//!   it in only if every file loaded; otherwise the old one keeps serving and the
//!   error (naming the listener's key and the file) goes back to the caller and into
//!   `weir_tls_reloads_failed_total`. Connections already open keep the configuration
//!   they were accepted with, so a reload never drops one.
//! - The handshake ([`ServerTls::handshake`]): run on the connection's own task (never
//!   on the accept loop), bounded by the listener's header read timeout, so a client
//!   that connects and sends nothing holds its connection slot for at most that long.
//!   Every failed handshake is counted under a stable reason ([`HandshakeFailure`]) in
//!   `weir_tls_handshakes_failed_total{listener, reason}`.
//! - The map from a [`Config`] to its listeners' `tls` tables ([`tables`]), which the
//!   daemon's reload walks.
//!
//! ALPN: gRPC listeners offer `h2` only (gRPC clients require it); the HTTP listeners
//! (OTLP/HTTP, admin, exposition) offer `http/1.1`, the one protocol their server
//! speaks.
//!
//! Must never: serve a listener in plain text when its `tls` table is set, take a
//! listener down because a reload found a broken file, log key material, or block the
//! accept loop on a handshake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{TlsError, load_certs, load_private_key, provider, root_store};
use crate::config::{Config, Step, keys};

/// A listener's `tls` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// The server's certificate chain, PEM, leaf first. Required.
    pub cert_file: PathBuf,
    /// The private key of the leaf certificate, PEM (PKCS#8, PKCS#1 or SEC1). Required.
    pub key_file: PathBuf,
    /// CA certificates, PEM. When set, clients must present a certificate signed by
    /// one of them (mutual TLS); when unset, no client certificate is asked for.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// The oldest TLS version accepted. Default TLS 1.2.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// A TLS protocol version, as the config names it (`"1.2"`, `"1.3"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsServerConfig {
    /// Checks the table without touching the files (they are read when the listener
    /// starts); on error returns the key inside it and the reason.
    pub(crate) fn validate(&self) -> Result<(), (Vec<Step>, String)> {
        let paths = [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ];
        for (key, path) in paths {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err((keys(&[key]), "must be a file path, not empty".to_owned()));
            }
        }
        Ok(())
    }
}

/// The listeners that can have a `tls` table: their label in the self-metrics, their
/// table's key in the config file, and the table in `config`.
pub fn tables(config: &Config) -> [(&'static str, &'static str, Option<&TlsServerConfig>); 4] {
    [
        (
            "otlp_grpc",
            "receivers.otlp.grpc_tls",
            config.receivers.otlp.grpc_tls.as_ref(),
        ),
        (
            "otlp_http",
            "receivers.otlp.http_tls",
            config.receivers.otlp.http_tls.as_ref(),
        ),
        ("admin", "admin.tls", config.admin.tls.as_ref()),
        (
            "exposition",
            "exposition.tls",
            config.exposition.tls.as_ref(),
        ),
    ]
}

/// The `tls` tables of `config`, in the order of [`tables`], to be replaced.
pub fn tables_mut(config: &mut Config) -> [&mut Option<TlsServerConfig>; 4] {
    [
        &mut config.receivers.otlp.grpc_tls,
        &mut config.receivers.otlp.http_tls,
        &mut config.admin.tls,
        &mut config.exposition.tls,
    ]
}

/// What a listener speaks over TLS, offered in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 (`h2`) only.
    Grpc,
    /// weir's HTTP/1.1 server (`http/1.1`).
    Http1,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Grpc => vec![b"h2".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
        }
    }
}

/// Why a listener's TLS configuration could not be built: the table's key and the
/// cause (which names the file).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source}")]
pub struct ServerTlsError {
    /// The table's key in the config file (`receivers.otlp.grpc_tls`).
    pub key: &'static str,
    /// What was wrong.
    #[source]
    pub source: TlsError,
}

impl From<ServerTlsError> for std::io::Error {
    fn from(e: ServerTlsError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// Why a handshake failed: the `reason` label of `weir_tls_handshakes_failed_total`.
/// The names are stable (dashboards depend on them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// `client_ca_file` is set and the client presented no certificate.
    NoClientCert,
    /// The client's certificate was refused (another CA, expired, not for a client).
    BadCertificate,
    /// The client ended the handshake after weir sent its certificate, with an alert
    /// or by closing the connection: most often it does not trust the certificate
    /// (wrong CA, expired, name mismatch).
    ClientRefused,
    /// Not TLS, or nothing in common (version, cipher suite, ALPN protocol), or a
    /// malformed message.
    Protocol,
    /// The handshake did not complete within the listener's header read timeout (a
    /// client that connects and sends nothing, say).
    Timeout,
    /// The client closed or reset the connection before its first TLS message (a TCP
    /// health check, say).
    Closed,
}

impl HandshakeFailure {
    /// Every reason, in label order.
    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::NoClientCert,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::ClientRefused,
        HandshakeFailure::Protocol,
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::ClientRefused => "client_refused",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
        }
    }

    /// The reason of an error while reading the client's first message (its
    /// ClientHello).
    fn before_hello(error: &std::io::Error, text: String) -> (HandshakeFailure, String) {
        let reason = match rustls_error(error) {
            Some(_) => HandshakeFailure::Protocol,
            None if error.kind() == std::io::ErrorKind::InvalidData => HandshakeFailure::Protocol,
            None => HandshakeFailure::Closed,
        };
        (reason, text)
    }

    /// The reason of an error after the ClientHello, once weir answered with its
    /// certificate.
    fn after_hello(error: &std::io::Error, text: String) -> (HandshakeFailure, String) {
        let reason = match rustls_error(error) {
            Some(rustls::Error::NoCertificatesPresented) => HandshakeFailure::NoClientCert,
            Some(rustls::Error::InvalidCertificate(_)) => HandshakeFailure::BadCertificate,
            Some(rustls::Error::AlertReceived(_)) => HandshakeFailure::ClientRefused,
            Some(_) => HandshakeFailure::Protocol,
            None if error.kind() == std::io::ErrorKind::InvalidData => HandshakeFailure::Protocol,
            None => HandshakeFailure::ClientRefused,
        };
        (reason, text)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// rustls' own error inside a handshake's I/O error (tokio-rustls wraps it in an
/// `InvalidData` error).
fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Counters of one TLS listener since start. Relaxed: independent counters, read only
/// for reporting.
#[derive(Debug, Default)]
struct TlsCounters {
    handshakes: AtomicU64,
    failed: [AtomicU64; HandshakeFailure::ALL.len()],
    reloads_failed: AtomicU64,
}

/// One listener's TLS: the configuration new connections get, its reload, and the
/// handshake with its counters.
#[derive(Debug)]
pub struct ServerTls {
    listener: &'static str,
    key: &'static str,
    alpn: Alpn,
    /// What the next handshake uses. Held only to clone or replace the `Arc`.
    current: RwLock<Arc<rustls::ServerConfig>>,
    counters: TlsCounters,
}

impl ServerTls {
    /// Loads `table`'s files for the listener labelled `listener` (`otlp_grpc`) whose
    /// table is at `key` (`receivers.otlp.grpc_tls`), offering `alpn`.
    ///
    /// # Errors
    /// A file could not be read or is not what it should be, or the key does not match
    /// the certificate; the error names `key` and the file.
    pub fn new(
        listener: &'static str,
        key: &'static str,
        table: &TlsServerConfig,
        alpn: Alpn,
    ) -> Result<Arc<ServerTls>, ServerTlsError> {
        let config = build(table, alpn).map_err(|source| ServerTlsError { key, source })?;
        Ok(Arc::new(ServerTls {
            listener,
            key,
            alpn,
            current: RwLock::new(config),
            counters: TlsCounters::default(),
        }))
    }

    /// [`ServerTls::new`] for the listener labelled `listener` in [`tables`] when its
    /// table in `config` is set; `None` for a plain listener.
    ///
    /// # Errors
    /// See [`ServerTls::new`].
    pub fn for_listener(
        config: &Config,
        listener: &'static str,
        alpn: Alpn,
    ) -> Result<Option<Arc<ServerTls>>, ServerTlsError> {
        let Some((_, key, Some(table))) = tables(config).into_iter().find(|t| t.0 == listener)
        else {
            return Ok(None);
        };
        ServerTls::new(listener, key, table, alpn).map(Some)
    }

    /// The listener's label (`otlp_grpc`).
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// Re-reads `table`'s files and, if all of them load, makes them what new
    /// connections get. Open connections keep theirs.
    ///
    /// # Errors
    /// A file could not be loaded: the old configuration stays in use, and the failure
    /// is counted.
    pub fn reload(&self, table: &TlsServerConfig) -> Result<(), ServerTlsError> {
        match build(table, self.alpn) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
                Ok(())
            }
            Err(source) => {
                self.counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(ServerTlsError {
                    key: self.key,
                    source,
                })
            }
        }
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs the server side of the handshake on `stream` within `timeout`, with the
    /// configuration current when the client's ClientHello has arrived. `None` when it failed: counted under its
    /// reason, logged at debug, and the connection dropped (closed).
    pub async fn handshake<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Option<tokio_rustls::server::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // In two steps, so a failure says whether the client got as far as weir's
        // certificate: first its ClientHello, then the rest with the configuration
        // current at that point.
        let accept = async {
            let hello =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
            let start = hello
                .await
                .map_err(|e| HandshakeFailure::before_hello(&e, e.to_string()))?;
            start
                .into_stream(self.current())
                .await
                .map_err(|e| HandshakeFailure::after_hello(&e, e.to_string()))
        };
        let (reason, error) = match tokio::time::timeout(timeout, accept).await {
            Ok(Ok(stream)) => {
                self.counters.handshakes.fetch_add(1, Ordering::Relaxed);
                return Some(stream);
            }
            Ok(Err(failure)) => failure,
            Err(_) => (
                HandshakeFailure::Timeout,
                format!("no complete handshake within {timeout:?}"),
            ),
        };
        self.counters.failed[reason.index()].fetch_add(1, Ordering::Relaxed);
        debug!(listener = self.listener, %peer, reason = reason.as_str(), %error, "TLS handshake failed");
        None
    }

    /// Handshakes completed since start.
    pub fn handshakes(&self) -> u64 {
        self.counters.handshakes.load(Ordering::Relaxed)
    }

    /// Handshakes failed for `reason` since start.
    pub fn failed(&self, reason: HandshakeFailure) -> u64 {
        self.counters.failed[reason.index()].load(Ordering::Relaxed)
    }
}

/// A whole server configuration from `table`'s files.
fn build(table: &TlsServerConfig, alpn: Alpn) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&table.cert_file)?;
    let key = load_private_key(&table.key_file)?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match table.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match &table.client_ca_file {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::CertKey {
            cert: table.cert_file.clone(),
            key: table.key_file.clone(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = alpn.protocols();
    Ok(Arc::new(config))
}

/// A verifier that requires a client certificate signed by a CA of `ca_file`.
fn client_verifier(
    ca_file: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let roots = root_store(Some(ca_file))?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::BadCa {
            path: ca_file.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The TLS listeners' counters, as reported (label `listener`).
pub struct TlsListeners(pub Vec<Arc<ServerTls>>);

impl crate::telemetry::StageMetrics for TlsListeners {
    fn render(&self, page: &mut crate::telemetry::MetricsPage) {
        use crate::telemetry::{Kind::Counter, labels};
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        page.family(
            "weir_tls_handshakes_total",
            Counter,
            "TLS handshakes completed, by listener.",
            self.0.iter().map(|t| {
                (
                    labels(&[("listener", t.listener)]),
                    load(&t.counters.handshakes),
                )
            }),
        );
        page.family(
            "weir_tls_handshakes_failed_total",
            Counter,
            "TLS handshakes that failed, by listener and reason (no_client_cert, bad_certificate, client_refused, protocol, timeout, closed).",
            self.0.iter().flat_map(|t| {
                HandshakeFailure::ALL.iter().map(move |r| {
                    (
                        labels(&[("listener", t.listener), ("reason", r.as_str())]),
                        load(&t.counters.failed[r.index()]),
                    )
                })
            }),
        );
        page.family(
            "weir_tls_reloads_failed_total",
            Counter,
            "Reloads whose certificate, key or CA file could not be loaded (the listener kept its previous certificate), by listener.",
            self.0.iter().map(|t| {
                (
                    labels(&[("listener", t.listener)]),
                    load(&t.counters.reloads_failed),
                )
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::{Limits, ListenerCounters, Server, plain, serve_within};
    use crate::sources::otlp::{OtlpReceiver, OtlpReceiverConfig};
    use hyper::StatusCode;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::client::TlsStream;
    use weir_core::Aggregator;
    use weir_proto::metrics_service::ExportMetricsServiceRequest;
    use weir_proto::metrics_service::metrics_service_client::MetricsServiceClient;

    /// Generous bound for "the server answered / closed it / counted it": many times
    /// any timeout under test.
    const BOUND: Duration = Duration::from_secs(10);

    /// A CA in a temporary directory, and the certificates it signs there.
    struct Pki {
        dir: PathBuf,
        ca: CertifiedIssuer<'static, KeyPair>,
        ca_file: PathBuf,
    }

    impl Pki {
        fn new(name: &str) -> Pki {
            let dir =
                std::env::temp_dir().join(format!("weir-tls-server-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("weir test CA {name}"));
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
                .expect("CA");
            let ca_file = dir.join("ca.pem");
            std::fs::write(&ca_file, ca.pem()).expect("write CA");
            Pki { dir, ca, ca_file }
        }

        /// A certificate for `localhost` and 127.0.0.1 signed by the CA, written to
        /// `<name>.crt` and `<name>.key`; returns the paths.
        fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> (PathBuf, PathBuf) {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .expect("params");
            params.extended_key_usages = vec![purpose];
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &self.ca).expect("sign");
            let (cert_file, key_file) = (
                self.dir.join(format!("{name}.crt")),
                self.dir.join(format!("{name}.key")),
            );
            std::fs::write(&cert_file, cert.pem()).expect("write cert");
            std::fs::write(&key_file, key.serialize_pem()).expect("write key");
            (cert_file, key_file)
        }

        /// A server table with a fresh certificate `name`.
        fn server(&self, name: &str) -> TlsServerConfig {
            let (cert_file, key_file) = self.issue(name, ExtendedKeyUsagePurpose::ServerAuth);
            TlsServerConfig {
                cert_file,
                key_file,
                client_ca_file: None,
                min_version: TlsVersion::default(),
            }
        }

        /// A client trusting this CA, offering `alpn`, with a client certificate
        /// (`name`) when given.
        fn client(&self, alpn: &[u8], cert: Option<&str>) -> tokio_rustls::TlsConnector {
            let roots = root_store(Some(&self.ca_file)).expect("roots");
            let builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots);
            let mut config = match cert {
                Some(name) => {
                    let (c, k) = self.issue(name, ExtendedKeyUsagePurpose::ClientAuth);
                    builder
                        .with_client_auth_cert(
                            load_certs(&c).expect("certs"),
                            load_private_key(&k).expect("key"),
                        )
                        .expect("client cert")
                }
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![alpn.to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(config))
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn connect(
        addr: SocketAddr,
        client: &tokio_rustls::TlsConnector,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("name");
        tokio::time::timeout(BOUND, client.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("no handshake within the bound"))?
    }

    /// Sends `request` (a whole HTTP/1.1 request) and reads the response head and its
    /// `Content-Length` body, within [`BOUND`]. An error if the connection fails or
    /// closes first.
    async fn exchange(s: &mut TlsStream<TcpStream>, request: &str) -> std::io::Result<String> {
        let work = async {
            s.write_all(request.as_bytes()).await?;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + length {
                        return Ok(text);
                    }
                }
                match s.read(&mut buf).await? {
                    0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(BOUND, work)
            .await
            .map_err(|_| std::io::Error::other("no answer within the bound"))?
    }

    const GET: &str = "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

    /// The certificate the server presented on `s`.
    fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
        s.get_ref().1.peer_certificates().expect("a certificate")[0]
            .clone()
            .into_owned()
    }

    fn cert_of(table: &TlsServerConfig) -> CertificateDer<'static> {
        load_certs(&table.cert_file).expect("certs")[0].clone()
    }

    /// Waits (bounded) until `check` holds; false if it never did within [`BOUND`].
    async fn eventually(check: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + BOUND;
        while !check() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    async fn https_server(tls: Arc<ServerTls>) -> Server {
        Server::start(
            "127.0.0.1:0".parse().unwrap(),
            "test",
            Some(tls),
            |_req| async { plain(StatusCode::OK, "ok\n") },
        )
        .await
        .expect("server")
    }

    /// Reads until the peer closes (EOF or reset) within [`BOUND`]; false if it was
    /// still open then.
    async fn closed_within_bound(s: &mut TcpStream) -> bool {
        tokio::time::timeout(BOUND, async {
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    fn otlp_config(pki: &Pki, header_read_timeout: Duration) -> OtlpReceiverConfig {
        OtlpReceiverConfig {
            grpc_address: "127.0.0.1:0".parse().unwrap(),
            http_address: "127.0.0.1:0".parse().unwrap(),
            header_read_timeout,
            grpc_tls: Some(pki.server("grpc")),
            http_tls: Some(pki.server("http")),
            ..OtlpReceiverConfig::default()
        }
    }

    /// A gRPC channel to `addr` over TLS with `client`.
    async fn grpc_channel(
        addr: SocketAddr,
        client: tokio_rustls::TlsConnector,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let connector = tower_connector(move |_uri| {
            let client = client.clone();
            async move {
                let s = connect(addr, &client).await?;
                Ok(hyper_util::rt::TokioIo::new(s))
            }
        });
        tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(connector)
            .await
    }

    /// A `tower` service from a closure, for tonic's custom connectors.
    fn tower_connector<F, Fut, T>(
        f: F,
    ) -> impl tonic::codegen::Service<
        tonic::codegen::http::Uri,
        Response = T,
        Error = std::io::Error,
        Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<T>> + Send>>,
    > + Clone
    + Send
    + 'static
    where
        F: Fn(tonic::codegen::http::Uri) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = std::io::Result<T>> + Send + 'static,
    {
        #[derive(Clone)]
        struct Connector<F>(F);
        impl<F, Fut, T> tonic::codegen::Service<tonic::codegen::http::Uri> for Connector<F>
        where
            F: Fn(tonic::codegen::http::Uri) -> Fut,
            Fut: std::future::Future<Output = std::io::Result<T>> + Send + 'static,
        {
            type Response = T;
            type Error = std::io::Error;
            type Future =
                std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<T>> + Send>>;
            fn poll_ready(
                &mut self,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
                Box::pin((self.0)(uri))
            }
        }
        Connector(f)
    }

    #[tokio::test]
    async fn a_tls_client_reaches_the_admin_kind_of_listener_and_both_otlp_listeners() {
        let pki = Pki::new("reach");
        let tls =
            ServerTls::new("admin", "admin.tls", &pki.server("admin"), Alpn::Http1).expect("tls");
        let server = https_server(tls.clone()).await;
        let client = pki.client(b"http/1.1", None);
        let mut s = connect(server.addr, &client).await.expect("handshake");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let answer = exchange(&mut s, GET).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(tls.handshakes(), 1);
        server.stop();

        let receiver = OtlpReceiver::start(
            &otlp_config(&pki, Duration::from_secs(10)),
            &Aggregator::default(),
        )
        .await
        .expect("otlp");
        let mut s = connect(receiver.http_addr.unwrap(), &client)
            .await
            .expect("handshake");
        let answer = exchange(
            &mut s,
            "POST /v1/metrics HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        let channel = grpc_channel(receiver.grpc_addr.unwrap(), pki.client(b"h2", None))
            .await
            .expect("channel");
        MetricsServiceClient::new(channel)
            .export(ExportMetricsServiceRequest::default())
            .await
            .expect("export over TLS");
        assert_eq!(receiver.ingest.counters.requests.load(Ordering::Relaxed), 2);
        receiver.stop();
    }

    #[tokio::test]
    async fn a_client_that_does_not_trust_the_certificate_fails_and_the_server_counts_it() {
        let pki = Pki::new("untrusted");
        let other = Pki::new("untrusted-other");
        let tls =
            ServerTls::new("admin", "admin.tls", &pki.server("admin"), Alpn::Http1).expect("tls");
        let server = https_server(tls.clone()).await;
        let err = connect(server.addr, &other.client(b"http/1.1", None))
            .await
            .expect_err("an unknown issuer");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        assert!(
            eventually(|| tls.failed(HandshakeFailure::ClientRefused) == 1).await,
            "not counted"
        );
        assert_eq!(tls.handshakes(), 0);

        // The gRPC listener too.
        let receiver = OtlpReceiver::start(
            &otlp_config(&pki, Duration::from_secs(10)),
            &Aggregator::default(),
        )
        .await
        .expect("otlp");
        let grpc_tls = receiver.tls.grpc.clone().expect("grpc tls");
        assert!(
            grpc_channel(receiver.grpc_addr.unwrap(), other.client(b"h2", None))
                .await
                .is_err()
        );
        assert!(
            eventually(|| grpc_tls.failed(HandshakeFailure::ClientRefused) >= 1).await,
            "not counted"
        );
        receiver.stop();
        server.stop();
    }

    #[tokio::test]
    async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_get_through() {
        let pki = Pki::new("mtls");
        let other = Pki::new("mtls-other");
        let table = TlsServerConfig {
            client_ca_file: Some(pki.ca_file.clone()),
            ..pki.server("admin")
        };
        let tls = ServerTls::new("admin", "admin.tls", &table, Alpn::Http1).expect("tls");
        let server = https_server(tls.clone()).await;

        // Without a certificate: under TLS 1.3 the client's side of the handshake
        // completes first, then the server's refusal ends the connection.
        let refused =
            async |client: tokio_rustls::TlsConnector| match connect(server.addr, &client).await {
                Ok(mut s) => exchange(&mut s, GET).await.is_err(),
                Err(_) => true,
            };
        assert!(
            refused(pki.client(b"http/1.1", None)).await,
            "served without a certificate"
        );
        assert!(
            eventually(|| tls.failed(HandshakeFailure::NoClientCert) == 1).await,
            "not counted"
        );
        // With a certificate of another CA.
        let stranger = other.client_with_trust(&pki, "stranger");
        assert!(
            refused(stranger).await,
            "served with a stranger's certificate"
        );
        assert!(
            eventually(|| tls.failed(HandshakeFailure::BadCertificate) == 1).await,
            "not counted"
        );
        // With a certificate of the configured CA.
        let mut s = connect(server.addr, &pki.client(b"http/1.1", Some("client")))
            .await
            .expect("handshake");
        let answer = exchange(&mut s, GET).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(tls.handshakes(), 1);
        server.stop();
    }

    impl Pki {
        /// A client that trusts `server`'s CA and presents a certificate (`name`)
        /// signed by this one.
        fn client_with_trust(&self, server: &Pki, name: &str) -> tokio_rustls::TlsConnector {
            let roots = root_store(Some(&server.ca_file)).expect("roots");
            let (c, k) = self.issue(name, ExtendedKeyUsagePurpose::ClientAuth);
            let mut config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    load_certs(&c).expect("certs"),
                    load_private_key(&k).expect("key"),
                )
                .expect("client cert");
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(config))
        }
    }

    #[tokio::test]
    async fn a_reload_serves_the_new_certificate_to_new_connections_and_keeps_open_ones() {
        let pki = Pki::new("reload");
        let first = pki.server("first");
        let tls = ServerTls::new("admin", "admin.tls", &first, Alpn::Http1).expect("tls");
        let server = https_server(tls.clone()).await;
        let client = pki.client(b"http/1.1", None);
        let mut open = connect(server.addr, &client).await.expect("handshake");
        assert_eq!(peer_cert(&open), cert_of(&first));
        exchange(&mut open, GET).await.expect("answer");

        let second = pki.server("second");
        assert_ne!(cert_of(&first), cert_of(&second));
        tls.reload(&second).expect("reload");
        let mut new = connect(server.addr, &client).await.expect("handshake");
        assert_eq!(peer_cert(&new), cert_of(&second));
        exchange(&mut new, GET).await.expect("answer");
        // The connection opened before the reload goes on.
        let answer = exchange(&mut open, GET)
            .await
            .expect("answer on the old connection");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(peer_cert(&open), cert_of(&first));
        server.stop();
    }

    #[tokio::test]
    async fn a_reload_with_a_broken_certificate_file_keeps_serving_the_old_certificate() {
        let pki = Pki::new("broken");
        let table = pki.server("served");
        let tls = ServerTls::new("admin", "admin.tls", &table, Alpn::Http1).expect("tls");
        let server = https_server(tls.clone()).await;
        let served = cert_of(&table);
        std::fs::write(&table.cert_file, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
        let err = tls.reload(&table).expect_err("a broken file").to_string();
        assert!(err.starts_with("admin.tls: "), "{err}");
        assert!(err.contains("served.crt"), "{err}");
        // A key that belongs to another certificate is refused too, naming both files.
        let other = pki.server("other");
        let mismatched = TlsServerConfig {
            cert_file: other.cert_file.clone(),
            key_file: pki.server("third").key_file,
            ..other
        };
        let err = tls
            .reload(&mismatched)
            .expect_err("a mismatched key")
            .to_string();
        assert!(
            err.contains("third.key") && err.contains("other.crt"),
            "{err}"
        );

        let s = connect(server.addr, &pki.client(b"http/1.1", None))
            .await
            .expect("still served");
        assert_eq!(peer_cert(&s), served);
        let mut page = crate::telemetry::MetricsPage::new();
        crate::telemetry::StageMetrics::render(&TlsListeners(vec![tls]), &mut page);
        let page = page.into_string();
        assert!(
            page.contains("weir_tls_reloads_failed_total{listener=\"admin\"} 2"),
            "{page}"
        );
        server.stop();
    }

    #[tokio::test]
    async fn a_client_that_connects_and_sends_nothing_is_dropped_at_the_deadline_without_blocking_others()
     {
        let pki = Pki::new("silent");
        let tls =
            ServerTls::new("admin", "admin.tls", &pki.server("admin"), Alpn::Http1).expect("tls");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(200),
        };
        let task = tokio::spawn(serve_within(
            listener,
            "test",
            limits,
            Arc::new(ListenerCounters::default()),
            Some(tls.clone()),
            |_req| async { plain(StatusCode::OK, "ok\n") },
        ));
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // While the silent one waits, another client is served.
        let mut s = connect(addr, &pki.client(b"http/1.1", None))
            .await
            .expect("handshake");
        exchange(&mut s, GET).await.expect("answer");
        assert!(closed_within_bound(&mut silent).await, "still open");
        assert!(
            eventually(|| tls.failed(HandshakeFailure::Timeout) == 1).await,
            "not counted"
        );
        // A connection closed before its ClientHello (a TCP health check) is `closed`.
        drop(TcpStream::connect(addr).await.unwrap());
        assert!(
            eventually(|| tls.failed(HandshakeFailure::Closed) == 1).await,
            "not counted"
        );
        task.abort();

        // The gRPC listener's handshakes are off its accept loop too.
        let config = OtlpReceiverConfig {
            header_read_timeout: Duration::from_millis(200),
            ..otlp_config(&pki, Duration::from_millis(200))
        };
        let receiver = OtlpReceiver::start(&config, &Aggregator::default())
            .await
            .expect("otlp");
        let grpc = receiver.grpc_addr.unwrap();
        let mut silent = TcpStream::connect(grpc).await.unwrap();
        let channel = grpc_channel(grpc, pki.client(b"h2", None))
            .await
            .expect("channel");
        MetricsServiceClient::new(channel)
            .export(ExportMetricsServiceRequest::default())
            .await
            .expect("export while another handshake is pending");
        assert!(closed_within_bound(&mut silent).await, "still open");
        let grpc_tls = receiver.tls.grpc.clone().expect("grpc tls");
        assert!(
            eventually(|| grpc_tls.failed(HandshakeFailure::Timeout) == 1).await,
            "not counted"
        );
        // Plain text on a TLS listener is a protocol failure, not served.
        let mut plain_client = TcpStream::connect(receiver.http_addr.unwrap())
            .await
            .unwrap();
        plain_client.write_all(GET.as_bytes()).await.unwrap();
        assert!(closed_within_bound(&mut plain_client).await, "still open");
        let http_tls = receiver.tls.http.clone().expect("http tls");
        assert!(
            eventually(|| http_tls.failed(HandshakeFailure::Protocol) == 1).await,
            "not counted"
        );
        receiver.stop();
    }

    #[tokio::test]
    async fn a_listener_whose_files_do_not_load_does_not_start_and_the_error_names_the_table_and_file()
     {
        let pki = Pki::new("startup");
        let mut config = otlp_config(&pki, Duration::from_secs(10));
        let missing = pki.dir.join("missing.key");
        config.http_tls.as_mut().unwrap().key_file = missing;
        let err = match OtlpReceiver::start(&config, &Aggregator::default()).await {
            Ok(_) => panic!("started with a missing key file"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("receivers.otlp.http_tls: "), "{err}");
        assert!(err.contains("missing.key"), "{err}");
    }

    #[test]
    fn tls_tables_parse_and_an_empty_path_names_its_key() {
        let config = crate::config::Config::from_toml(
            "[receivers.otlp.grpc_tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\nmin_version = \"1.3\"\n\
             [admin.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
            "test",
        )
        .expect("parses");
        let grpc = config.receivers.otlp.grpc_tls.as_ref().expect("grpc tls");
        assert_eq!(grpc.min_version, TlsVersion::V1_3);
        assert_eq!(grpc.client_ca_file.as_deref(), Some(Path::new("ca.pem")));
        assert_eq!(
            config.admin.tls.as_ref().expect("admin").min_version,
            TlsVersion::V1_2
        );
        let listed: Vec<_> = tables(&config)
            .iter()
            .filter(|t| t.2.is_some())
            .map(|t| t.1)
            .collect();
        assert_eq!(listed, ["receivers.otlp.grpc_tls", "admin.tls"]);

        let err = crate::config::Config::from_toml(
            "[exposition.tls]\ncert_file = \"\"\nkey_file = \"k.pem\"\n",
            "test",
        )
        .expect_err("an empty path")
        .to_string();
        assert!(err.contains("exposition.tls.cert_file"), "{err}");
        let err = crate::config::Config::from_toml(
            "[receivers.otlp.http_tls]\ncert_file = \"c.pem\"\n",
            "test",
        )
        .expect_err("no key")
        .to_string();
        assert!(err.contains("key_file"), "{err}");
        let err = crate::config::Config::from_toml(
            "[admin.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nmin_version = \"1.1\"\n",
            "test",
        )
        .expect_err("TLS 1.1")
        .to_string();
        assert!(err.contains("min_version"), "{err}");
    }
}
