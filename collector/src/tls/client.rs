//! The client side of weir's outgoing connections (pipelines, scrapes): whom weir
//! trusts and how it proves who it is, in one config table shared by every
//! `[[pipelines]]` entry and every scrape target.
//!
//! - [`ClientSecurityConfig`]: the keys (`tls`, `basic_auth`, `bearer_token`,
//!   `bearer_token_file`, `headers_from_files`), flattened into each entry, and
//!   their validation (no I/O: exclusive options, header names, a usable
//!   `server_name`).
//! - [`ClientSecurity`]: the config loaded: a rustls `ClientConfig` for `https://`
//!   peers (system roots or `ca_file`, an optional client certificate, an optional
//!   server name override, or no verification at all when `insecure_skip_verify`
//!   asks for it) and the request headers the credentials make. It builds the
//!   HTTPS-capable connector that both the hyper-util clients and tonic's channel
//!   use ([`ClientSecurity::connector`]).
//! - [`LiveSecurity`]: the loaded material of one peer, re-read from its files on
//!   every config reload; clients rebuild their connection pool when its
//!   [generation](LiveSecurity::current) changes.
//! - [`TlsFailure`]: why a handshake failed, found in an error chain, in words a log
//!   line can use ("certificate expired", "unknown issuer").
//!
//! Must never: log, `Debug`-print or report a password, token or header value from a
//! file ([`Secret`] and sensitive header values print as `<redacted>`), accept an
//! unverified certificate unless `insecure_skip_verify` says so (and then a WARN at
//! every start and reload), or fall back to plain text for an `https://` peer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use tracing::warn;

use super::{TlsError, load_certs, load_private_key, provider, root_store};

/// A secret from the config file (a password, a token): compared and cloned like a
/// string, printed as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The `tls` table: how an `https://` peer is verified and what weir presents to it
/// (Prometheus' `tls_config` keys).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM file of the CA certificates that may sign the peer's certificate. Default:
    /// the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate (chain, leaf first) presented to a peer that asks for one
    /// (mTLS). Set with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the peer's certificate must hold (and the SNI sent), instead of the
    /// URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any certificate the peer shows (the connection is encrypted but not
    /// authenticated). Logged as a WARN at every start and reload. Default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// The `basic_auth` table: `Authorization: Basic` with `password` or the first line
/// of `password_file` (one of them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The user name.
    pub username: String,
    /// The password, inline.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file whose content (trailing newline trimmed) is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// What weir trusts and presents on one outgoing connection: flattened into every
/// `[[pipelines]]` entry, `[[scrape.targets]]` entry and `[[scrape.file_sd]]` entry.
/// At most one of `basic_auth`, `bearer_token` and `bearer_token_file`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ClientSecurityConfig {
    /// The `tls` table (for `https://` peers).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// The `basic_auth` table.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// `Authorization: Bearer <token>`, inline.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// `Authorization: Bearer <token>`, the token being the file's content (trailing
    /// newline trimmed).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Request headers whose values are files' contents (trailing newline trimmed):
    /// `{ "X-Scope-OrgID" = "/etc/weir/tenant" }`. Sent as sensitive values.
    #[serde(default)]
    pub headers_from_files: BTreeMap<String, PathBuf>,
}

/// Why a peer's security material could not be loaded. Each names the key it is
/// about (relative to its entry), never a secret.
#[derive(Debug, thiserror::Error)]
pub enum ClientSecurityError {
    /// A credentials file could not be read.
    #[error("{key}: cannot read {}: {source}", path.display())]
    File {
        /// The key naming the file (`bearer_token_file`).
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A credentials file's content cannot be sent in a header.
    #[error("{key}: {} does not hold a value usable in an HTTP header", path.display())]
    BadValue {
        /// The key naming the file.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// A certificate, key or CA file could not be used.
    #[error("{key}: {source}")]
    Tls {
        /// The key (`tls.ca_file`, `tls.cert_file`).
        key: &'static str,
        /// Why.
        source: TlsError,
    },
}

impl ClientSecurityError {
    /// The key the error is about, relative to its entry.
    pub fn key(&self) -> &str {
        match self {
            ClientSecurityError::File { key, .. } | ClientSecurityError::BadValue { key, .. } => {
                key
            }
            ClientSecurityError::Tls { key, .. } => key,
        }
    }
}

/// Which application protocol a connector offers in the TLS handshake (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/1.1 (the pipelines' HTTP client, the scraper).
    Http1,
    /// HTTP/2 (gRPC), which gRPC servers require to be negotiated.
    H2,
}

impl ClientSecurityConfig {
    /// Checks the keys without touching the files; on error the key (relative to
    /// the entry) and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let exclusive = [
            ("basic_auth", self.basic_auth.is_some()),
            ("bearer_token", self.bearer_token.is_some()),
            ("bearer_token_file", self.bearer_token_file.is_some()),
        ];
        let set: Vec<&str> = exclusive
            .iter()
            .filter(|(_, on)| *on)
            .map(|(k, _)| *k)
            .collect();
        if set.len() > 1 {
            let key = exclusive
                .iter()
                .find(|(_, on)| *on)
                .map_or("basic_auth", |(k, _)| k);
            return Err((
                key,
                format!(
                    "{} are mutually exclusive: set one way to authenticate",
                    set.join(" and ")
                ),
            ));
        }
        if let Some(b) = &self.basic_auth {
            if b.username.is_empty() {
                return Err(("basic_auth", "`username` must not be empty".to_owned()));
            }
            if b.password.is_some() == b.password_file.is_some() {
                return Err((
                    "basic_auth",
                    "needs exactly one of `password` and `password_file`".to_owned(),
                ));
            }
            if b.username.contains(':') {
                return Err((
                    "basic_auth",
                    "`username` must not contain ':' (it separates the password)".to_owned(),
                ));
            }
        }
        if let Some(token) = &self.bearer_token
            && HeaderValue::from_str(&format!("Bearer {}", token.expose())).is_err()
        {
            return Err((
                "bearer_token",
                "is not usable in an HTTP header (control characters?)".to_owned(),
            ));
        }
        for name in self.headers_from_files.keys() {
            let parsed = name.parse::<HeaderName>();
            if parsed.is_err() {
                return Err((
                    "headers_from_files",
                    format!("{name:?} is not a valid header name"),
                ));
            }
            if parsed.is_ok_and(|n| n == hyper::header::AUTHORIZATION) && self.authenticates() {
                return Err((
                    "headers_from_files",
                    "Authorization is already set by basic_auth or the bearer token".to_owned(),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err((
                    "tls",
                    "`cert_file` and `key_file` go together (a client certificate and its key)"
                        .to_owned(),
                ));
            }
            if let Some(name) = &tls.server_name
                && ServerName::try_from(name.as_str()).is_err()
            {
                return Err((
                    "tls",
                    format!("server_name {name:?} is not a DNS name or an IP address"),
                ));
            }
        }
        Ok(())
    }

    /// True if a key sets the `Authorization` header.
    fn authenticates(&self) -> bool {
        self.basic_auth.is_some() || self.bearer_token.is_some() || self.bearer_token_file.is_some()
    }

    /// The header names this config sets (for clashes with an entry's own
    /// `headers`).
    pub fn header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .headers_from_files
            .keys()
            .map(|k| k.to_ascii_lowercase())
            .collect();
        if self.authenticates() {
            names.push("authorization".to_owned());
        }
        names
    }

    /// Reads every file the config names and builds the material; `https` says
    /// whether the peer is an `https://` one (only then is a TLS config built, and
    /// the system roots read when there is no `ca_file`).
    ///
    /// # Errors
    /// [`ClientSecurityError`] naming the key whose file is missing, unreadable or
    /// unusable.
    pub fn load(&self, https: bool) -> Result<ClientSecurity, ClientSecurityError> {
        let mut headers = HeaderMap::new();
        let authorization = match (
            &self.basic_auth,
            &self.bearer_token,
            &self.bearer_token_file,
        ) {
            (Some(b), _, _) => {
                let password = match (&b.password, &b.password_file) {
                    (Some(p), _) => p.expose().to_owned(),
                    (None, Some(path)) => read_secret("basic_auth.password_file", path)?,
                    (None, None) => String::new(),
                };
                Some((
                    "basic_auth",
                    format!(
                        "Basic {}",
                        base64(format!("{}:{password}", b.username).as_bytes())
                    ),
                ))
            }
            (None, Some(token), _) => Some(("bearer_token", format!("Bearer {}", token.expose()))),
            (None, None, Some(path)) => Some((
                "bearer_token_file",
                format!("Bearer {}", read_secret("bearer_token_file", path)?),
            )),
            (None, None, None) => None,
        };
        if let Some((key, value)) = authorization {
            let mut value =
                HeaderValue::from_str(&value).map_err(|_| ClientSecurityError::BadValue {
                    key: key.to_owned(),
                    path: PathBuf::new(),
                })?;
            value.set_sensitive(true);
            headers.insert(hyper::header::AUTHORIZATION, value);
        }
        for (name, path) in &self.headers_from_files {
            let key = format!("headers_from_files.{name}");
            let text = read_secret(&key, path)?;
            let bad = || ClientSecurityError::BadValue {
                key: key.clone(),
                path: path.clone(),
            };
            let name: HeaderName = name.parse().map_err(|_| bad())?;
            let mut value = HeaderValue::from_str(&text).map_err(|_| bad())?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let tls_config = self.tls.clone().unwrap_or_default();
        let tls = if https {
            Some(build_tls(&tls_config)?)
        } else {
            None
        };
        let server_name = tls_config
            .server_name
            .as_deref()
            .and_then(|n| ServerName::try_from(n.to_owned()).ok());
        Ok(ClientSecurity {
            tls,
            server_name,
            headers,
            insecure: https && tls_config.insecure_skip_verify,
        })
    }
}

/// Checks an outgoing URL against its entry's security keys: `http` or `https` with
/// a host (the port defaults to the scheme's, 80 or 443), no credentials inside the
/// URL (they would show in logs and `/status`: use `basic_auth`), and a `tls` table
/// only for `https`.
///
/// # Errors
/// The reason, for the URL's key.
pub fn check_url(url: &str, security: &ClientSecurityConfig) -> Result<(), String> {
    let uri: Result<hyper::Uri, _> = url.parse();
    let scheme = uri.as_ref().ok().and_then(|u| u.scheme_str());
    let ok = uri.as_ref().is_ok_and(|u| {
        matches!(scheme, Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    });
    if !ok {
        return Err(format!(
            "{url:?} is not an http[s]://host[:port][/path] URL"
        ));
    }
    if uri
        .as_ref()
        .is_ok_and(|u| u.authority().is_some_and(|a| a.as_str().contains('@')))
    {
        return Err(
            "credentials inside the URL are not accepted (they would be logged): use basic_auth"
                .to_owned(),
        );
    }
    if security.tls.is_some() && scheme == Some("http") {
        return Err("a `tls` table is set but the URL is http://: use https://".to_owned());
    }
    Ok(())
}

/// A file's content as a secret: UTF-8, trailing newline (`\n` or `\r\n`) trimmed.
fn read_secret(key: &str, path: &Path) -> Result<String, ClientSecurityError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientSecurityError::File {
        key: key.to_owned(),
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(trimmed.to_owned())
}

/// Standard base64 with padding (RFC 4648), for `Authorization: Basic`.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The rustls client config for `tls` (no ALPN yet: the connector sets it).
fn build_tls(tls: &ClientTlsConfig) -> Result<rustls::ClientConfig, ClientSecurityError> {
    let err = |key| move |source| ClientSecurityError::Tls { key, source };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls")(TlsError::Config(e)))?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let key = if tls.ca_file.is_some() {
            "tls.ca_file"
        } else {
            "tls"
        };
        builder.with_root_certificates(root_store(tls.ca_file.as_deref()).map_err(err(key))?)
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let certs = load_certs(cert).map_err(err("tls.cert_file"))?;
            let key = load_private_key(key).map_err(err("tls.key_file"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| err("tls.key_file")(TlsError::Config(e)))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// One peer's loaded material: the TLS config (for `https://` peers) and the headers
/// the credentials make. `Debug` shows no secret.
#[derive(Clone)]
pub struct ClientSecurity {
    tls: Option<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
    headers: HeaderMap,
    insecure: bool,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("tls", &self.tls.is_some())
            .field("server_name", &self.server_name)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("insecure_skip_verify", &self.insecure)
            .finish()
    }
}

impl ClientSecurity {
    /// Plain HTTP with no credentials.
    pub fn none() -> ClientSecurity {
        ClientSecurity {
            tls: None,
            server_name: None,
            headers: HeaderMap::new(),
            insecure: false,
        }
    }

    /// The headers the credentials make (values marked sensitive: hyper's `Debug`
    /// prints them as `Sensitive`).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// A connector that speaks TLS to `https://` URLs (offering `alpn`) and plain
    /// TCP to `http://` ones, with TCP_NODELAY and `connect_timeout`.
    pub fn connector(
        &self,
        alpn: Alpn,
        connect_timeout: Option<Duration>,
    ) -> HttpsConnector<HttpConnector> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(connect_timeout);
        // hyper-rustls leaves `https://` to TLS only if the scheme is not enforced.
        http.enforce_http(false);
        let tls = match &self.tls {
            Some(tls) => {
                let mut tls = tls.clone();
                tls.alpn_protocols = alpn.protocols();
                Arc::new(tls)
            }
            None => no_tls_config(alpn),
        };
        let resolver: Arc<dyn hyper_rustls::ResolveServerName + Send + Sync> =
            match &self.server_name {
                Some(name) => Arc::new(FixedServerNameResolver::new(name.clone())),
                None => Arc::new(hyper_rustls::DefaultServerNameResolver::default()),
            };
        HttpsConnector::new(http, tls, false, resolver)
    }
}

impl Alpn {
    /// The protocol names offered.
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
        }
    }
}

/// The TLS config of a peer without a `tls` section, built once per process and
/// ALPN: such a peer speaks plain TCP to `http://` URLs and, with no roots, refuses
/// an `https://` one rather than falling back to plain text. Shared because every
/// config carries its own session cache (~14 KB), and a scraper has a connector per
/// target: 14 MB at 1,000 targets.
fn no_tls_config(alpn: Alpn) -> Arc<rustls::ClientConfig> {
    static HTTP1: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    static H2: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let cell = match alpn {
        Alpn::Http1 => &HTTP1,
        Alpn::H2 => &H2,
    };
    cell.get_or_init(|| {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        tls.alpn_protocols = alpn.protocols();
        Arc::new(tls)
    })
    .clone()
}

/// One peer's material as it is now, re-read from its files on reload.
pub struct LiveSecurity {
    /// Who uses it, for log lines (`pipeline prom`, `scrape https://h:9100/metrics`).
    owner: String,
    config: ClientSecurityConfig,
    https: bool,
    current: RwLock<Arc<ClientSecurity>>,
    /// Bumped by every successful reload. Relaxed: readers use it only to tell a
    /// cached client is stale; the material itself is read under the lock.
    generation: AtomicU64,
}

impl std::fmt::Debug for LiveSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSecurity")
            .field("owner", &self.owner)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl LiveSecurity {
    /// Loads `config` for a peer at `https` (see [`ClientSecurityConfig::load`]);
    /// `owner` names the user in log lines. Warns when verification is off.
    ///
    /// # Errors
    /// [`ClientSecurityError`] if a file cannot be used.
    pub fn new(
        owner: impl Into<String>,
        config: &ClientSecurityConfig,
        https: bool,
    ) -> Result<LiveSecurity, ClientSecurityError> {
        let loaded = config.load(https)?;
        let live = LiveSecurity {
            owner: owner.into(),
            config: config.clone(),
            https,
            current: RwLock::new(Arc::new(loaded)),
            generation: AtomicU64::new(0),
        };
        live.warn_if_insecure();
        Ok(live)
    }

    /// Plain HTTP with no credentials (a backend built without a config).
    pub fn none() -> LiveSecurity {
        LiveSecurity {
            owner: String::new(),
            config: ClientSecurityConfig::default(),
            https: false,
            current: RwLock::new(Arc::new(ClientSecurity::none())),
            generation: AtomicU64::new(0),
        }
    }

    fn warn_if_insecure(&self) {
        if self.current().1.insecure {
            warn!(
                peer = %self.owner,
                "tls.insecure_skip_verify is set: the peer's certificate is NOT verified \
                 (the connection is encrypted, but anyone in the path can impersonate the peer)"
            );
        }
    }

    /// Re-reads the files. On error the material in use stays (and the error is
    /// returned for the caller to report).
    ///
    /// # Errors
    /// [`ClientSecurityError`] if a file cannot be used now.
    pub fn reload(&self) -> Result<(), ClientSecurityError> {
        let loaded = self.config.load(self.https)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.warn_if_insecure();
        Ok(())
    }

    /// The generation and the material in use.
    pub fn current(&self) -> (u64, Arc<ClientSecurity>) {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        (self.generation.load(Ordering::Relaxed), guard.clone())
    }

    /// Who uses it.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

/// Accepts any server certificate (`insecure_skip_verify`), but still checks the
/// handshake signatures, so the connection is at least with the holder of the key
/// the certificate names.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS failure found in an error chain, described for a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure(pub String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake failed: {}", self.0)
    }
}

impl TlsFailure {
    /// The TLS error somewhere in `error`'s chain (through `io::Error` wrappers,
    /// whose `source` skips the wrapped error), if there is one.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
        let mut at = Some(error);
        // Error chains are short; the bound only guards against a cycle.
        for _ in 0..32 {
            let e = at?;
            if let Some(r) = e.downcast_ref::<rustls::Error>() {
                return Some(TlsFailure(describe(r)));
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && let Some(inner) = io.get_ref()
            {
                at = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
            at = e.source();
        }
        None
    }
}

/// A rustls error in an operator's words.
fn describe(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet".to_owned()
            }
            CertificateError::UnknownIssuer => {
                "unknown issuer (the certificate is not signed by a trusted CA: check tls.ca_file)"
                    .to_owned()
            }
            CertificateError::NotValidForName => {
                "certificate not valid for the server name (see tls.server_name)".to_owned()
            }
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "certificate not valid for {expected:?} (it is for {}; see tls.server_name)",
                presented.join(", ")
            ),
            CertificateError::BadSignature => "bad certificate signature".to_owned(),
            CertificateError::Revoked => "certificate revoked".to_owned(),
            other => format!("invalid peer certificate: {other:?}"),
        },
        rustls::Error::AlertReceived(
            A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::CertificateUnknown,
        ) => format!(
            "the peer refused weir's client certificate ({e}; see tls.cert_file and tls.key_file)"
        ),
        rustls::Error::AlertReceived(A::HandshakeFailure | A::ProtocolVersion) => {
            format!("the peer refused the handshake ({e})")
        }
        rustls::Error::InvalidMessage(_) => {
            format!("the peer does not speak TLS ({e}; is it plain http?)")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ClientSecurityConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn urls_need_a_scheme_and_host_and_take_the_schemes_port_by_default() {
        let none = ClientSecurityConfig::default();
        for ok in [
            "http://127.0.0.1:9090/api/v1/write",
            "https://metrics.example.com/api/v1/push",
            "http://[::1]/write",
            "https://host:443",
        ] {
            assert_eq!(check_url(ok, &none), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1:9090",
            "ftp://host/x",
            "http:///path",
            "/api/v1/write",
            "",
        ] {
            assert!(check_url(bad, &none).is_err(), "{bad}");
        }
        assert!(
            check_url("https://user:pw@host/x", &none)
                .unwrap_err()
                .contains("basic_auth")
        );
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn exclusive_credentials_are_refused_naming_the_first_key() {
        let c =
            parse("bearer_token = \"t\"\nbasic_auth = { username = \"u\", password = \"p\" }\n");
        let (key, reason) = c.validate().unwrap_err();
        assert_eq!(key, "basic_auth");
        assert!(reason.contains("bearer_token"), "{reason}");
        let c = parse("bearer_token = \"t\"\nbearer_token_file = \"/x\"\n");
        assert_eq!(c.validate().unwrap_err().0, "bearer_token");
        let c = parse("basic_auth = { username = \"u\" }\n");
        assert_eq!(c.validate().unwrap_err().0, "basic_auth");
        let c =
            parse("basic_auth = { username = \"u\", password = \"p\", password_file = \"/p\" }\n");
        assert_eq!(c.validate().unwrap_err().0, "basic_auth");
        let c = parse("tls = { cert_file = \"/c\" }\n");
        assert_eq!(c.validate().unwrap_err().0, "tls");
        let c = parse("tls = { server_name = \"not a name\" }\n");
        assert_eq!(c.validate().unwrap_err().0, "tls");
        let c = parse("headers_from_files = { \"bad header\" = \"/x\" }\n");
        assert_eq!(c.validate().unwrap_err().0, "headers_from_files");
        let c = parse("bearer_token = \"t\"\nheaders_from_files = { Authorization = \"/x\" }\n");
        assert_eq!(c.validate().unwrap_err().0, "headers_from_files");
    }

    #[test]
    fn unknown_keys_in_tls_and_basic_auth_do_not_parse() {
        assert!(toml::from_str::<ClientSecurityConfig>("tls = { ca = \"/x\" }\n").is_err());
        assert!(toml::from_str::<ClientSecurityConfig>("basic_auth = { user = \"u\" }\n").is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let dir = std::env::temp_dir().join(format!("weir-client-debug-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tenant");
        std::fs::write(&file, "tenant-secret-7\n").unwrap();
        let c = parse(&format!(
            "basic_auth = {{ username = \"u\", password = \"hunter2-password\" }}\n\
             headers_from_files = {{ \"X-Scope-OrgID\" = {:?} }}\n",
            file
        ));
        c.validate().unwrap();
        let loaded = c.load(false).unwrap();
        let shown = format!("{c:?} {loaded:?} {:?}", loaded.headers());
        for secret in ["hunter2", "tenant-secret-7", "dTpodW50ZXIy"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert_eq!(
            loaded.headers()["x-scope-orgid"].to_str().unwrap(),
            "tenant-secret-7"
        );
        assert_eq!(
            loaded.headers()["authorization"].to_str().unwrap(),
            format!("Basic {}", base64(b"u:hunter2-password"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_credentials_file_is_an_error_naming_the_key_and_the_file() {
        let c = parse("bearer_token_file = \"/nonexistent/weir-token\"\n");
        let e = c.load(false).unwrap_err();
        assert_eq!(e.key(), "bearer_token_file");
        let shown = e.to_string();
        assert!(shown.contains("/nonexistent/weir-token"), "{shown}");
        let c = parse("tls = { ca_file = \"/nonexistent/ca.pem\" }\n");
        let e = c.load(true).unwrap_err();
        assert_eq!(e.key(), "tls.ca_file");
        // No TLS material is read for an http:// peer.
        assert!(c.load(false).is_ok());
    }

    #[test]
    fn a_reload_reads_the_files_again_and_keeps_the_old_material_on_error() {
        let dir = std::env::temp_dir().join(format!("weir-client-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "one\n").unwrap();
        let c = parse(&format!("bearer_token_file = {file:?}\n"));
        let live = LiveSecurity::new("test", &c, false).unwrap();
        let (g0, s0) = live.current();
        assert_eq!(s0.headers()["authorization"], "Bearer one");
        std::fs::write(&file, "two\r\n").unwrap();
        live.reload().unwrap();
        let (g1, s1) = live.current();
        assert!(g1 > g0);
        assert_eq!(s1.headers()["authorization"], "Bearer two");
        std::fs::remove_file(&file).unwrap();
        assert!(live.reload().is_err());
        let (g2, s2) = live.current();
        assert_eq!(g2, g1);
        assert_eq!(s2.headers()["authorization"], "Bearer two");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
