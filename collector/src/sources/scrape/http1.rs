//! One target's HTTP/1.1 client: the GET of a scrape written on the connection kept
//! from the previous scrape (or a new one), the response head parsed, and the body read
//! by its `Content-Length`, by the chunked transfer coding, or to the connection's end,
//! never more than the body limit.
//!
//! Why not a general client: between scrapes, all a target keeps is its socket (and TLS
//! state for `https://`). A general client keeps a read buffer, a write buffer and a
//! request channel per idle connection (~27 KB each with hyper's at 8 KiB buffers, 27 MB
//! at 1,000 targets); here the head buffer and the body live for one exchange, and at
//! most `scrape.concurrency` exchanges run at once.
//!
//! Owns: the request bytes, response framing (RFC 9112: interim 1xx responses skipped,
//! `Transfer-Encoding` over `Content-Length`, 204 and 304 without a body), keep-alive
//! (a connection is reused only after an exchange that ended exactly at its response's
//! end, on HTTP/1.1 without `Connection: close` or HTTP/1.0 with `Connection:
//! keep-alive`), and the retry of a GET on a fresh
//! connection when a reused one turns out closed before any byte of its answer (the
//! server's idle timeout ran out between scrapes; GET is idempotent). Must never: read
//! past the body limit, hold a buffer between scrapes, or reuse a connection whose
//! exchange failed or was cut short (a scrape's timeout drops the connection with it).

use std::future::poll_fn;
use std::io;
use std::time::Duration;

use bytes::BufMut as _;

use hyper::Uri;
use hyper::header::HeaderMap;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tower_service::Service as _;

use super::{ACCEPT, ACCEPT_ENCODING, ScrapeError};

/// The largest response head (status line and headers) read; a larger one fails the
/// scrape as `request_failed`. Scrape targets send a few hundred bytes; vmagent refuses
/// heads over 4 KiB by default (`-promscrape.maxResponseHeadersSize`). Also the size of
/// the exchange's read buffer, which chunk-size lines and trailers pass through.
pub(super) const HEAD_MAX: usize = 8 << 10;

/// Most header fields in a response head.
const MAX_HEADERS: usize = 64;

/// The longest chunk-size line (size, extensions) or trailer field accepted.
const LINE_MAX: usize = 4 << 10;

/// The most reserved for a body before its bytes arrive: a `Content-Length` is a
/// claim, and the body grows past this as it comes.
const RESERVE_MAX: usize = 1 << 20;

/// A connection to a target: plain TCP or TLS over it. Boxed: a TLS stream is ~1 KB
/// inline, which every target's client would carry, plain or not.
type Stream = Box<dyn Io>;

/// What a connection is to the exchange.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A target's client: how to connect (TLS, server name, connect settings) and the
/// connection kept between scrapes.
pub(super) struct Client {
    connector: HttpsConnector<HttpConnector>,
    idle: Option<Stream>,
}

/// A successful (2xx) response.
#[derive(Debug)]
pub(super) struct Response {
    /// `Content-Type`, if the target sent one (as text).
    pub content_type: Option<String>,
    /// `Content-Encoding`, if the target sent one (as text).
    pub content_encoding: Option<String>,
    /// The body as received (still compressed, if it was).
    pub body: Vec<u8>,
}

/// How an exchange failed: on a connection closed before any byte of the answer (if
/// it was a kept one, worth one retry on a new connection), or otherwise.
enum Failure {
    Closed(io::Error),
    Scrape(ScrapeError),
}

impl Failure {
    /// The scrape's failure, once no retry is left.
    fn into_scrape(self) -> ScrapeError {
        match self {
            Failure::Closed(e) => ScrapeError::request(&e),
            Failure::Scrape(e) => e,
        }
    }
}

impl From<ScrapeError> for Failure {
    fn from(e: ScrapeError) -> Self {
        Failure::Scrape(e)
    }
}

impl Client {
    /// A client that connects with `connector` (no connection yet).
    pub(super) fn new(connector: HttpsConnector<HttpConnector>) -> Client {
        Client {
            connector,
            idle: None,
        }
    }

    /// Sends `request` (from [`request_bytes`]) to `uri`'s host: the body of a 2xx
    /// answer, at most `limit` bytes as received.
    pub(super) async fn get(
        &mut self,
        uri: &Uri,
        request: &[u8],
        limit: usize,
    ) -> Result<Response, ScrapeError> {
        if let Some(stream) = self.idle.take() {
            match self.send(stream, request, limit).await {
                Err(Failure::Closed(_)) => {} // the target closed it while idle
                done => return done.map_err(Failure::into_scrape),
            }
        }
        let stream = self.connect(uri).await?;
        self.send(stream, request, limit)
            .await
            .map_err(Failure::into_scrape)
    }

    /// One exchange on `stream`, kept for the next scrape if it may carry one.
    async fn send(
        &mut self,
        mut stream: Stream,
        request: &[u8],
        limit: usize,
    ) -> Result<Response, Failure> {
        let (response, reusable) = exchange(&mut stream, request, limit).await?;
        self.idle = reusable.then_some(stream);
        Ok(response)
    }

    /// Whether a connection is kept for the next scrape.
    #[cfg(test)]
    fn has_idle(&self) -> bool {
        self.idle.is_some()
    }

    async fn connect(&mut self, uri: &Uri) -> Result<Stream, ScrapeError> {
        poll_fn(|cx| self.connector.poll_ready(cx))
            .await
            .map_err(|e| ScrapeError::request(&*e))?;
        let stream = self
            .connector
            .call(uri.clone())
            .await
            .map_err(|e| ScrapeError::request(&*e))?;
        Ok(match stream {
            MaybeHttpsStream::Http(tcp) => Box::new(tcp.into_inner()),
            MaybeHttpsStream::Https(tls) => Box::new(tls.into_inner()),
        })
    }
}

/// A scrape's GET of `uri`: origin-form target, `Host` as hyper writes it (the port
/// only when it is not the scheme's), the Accept headers of content negotiation, the
/// scrape's `timeout` as Prometheus sends it (`X-Prometheus-Scrape-Timeout-Seconds`,
/// which some exporters read to bound their own work), then `extra` (credentials).
pub(super) fn request_bytes(uri: &Uri, timeout: Duration, extra: &HeaderMap) -> Vec<u8> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let target = if target.is_empty() { "/" } else { target };
    let host = uri.host().unwrap_or_default();
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    if let Some(port) = uri.port_u16().filter(|p| *p != default_port) {
        out.extend_from_slice(format!(":{port}").as_bytes());
    }
    let timeout = timeout.as_secs_f64().to_string();
    for (name, value) in [
        ("Accept", ACCEPT),
        ("Accept-Encoding", ACCEPT_ENCODING),
        ("User-Agent", concat!("weir/", env!("CARGO_PKG_VERSION"))),
        ("X-Prometheus-Scrape-Timeout-Seconds", &timeout),
    ] {
        push_header(&mut out, name.as_bytes(), value.as_bytes());
    }
    for (name, value) in extra {
        push_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// `\r\n` then `name: value` (a `HeaderValue` holds no CR or LF).
fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
}

/// What a response head says about its body and its connection.
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    content_type: Option<String>,
    content_encoding: Option<String>,
}

enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Writes `request` and reads the answer; says whether the connection may carry the
/// next one. A connection closed before any byte of the answer is reported as
/// [`Failure::Closed`].
async fn exchange(
    stream: &mut Stream,
    request: &[u8],
    limit: usize,
) -> Result<(Response, bool), Failure> {
    let closed = |e: io::Error| {
        if is_closed(&e) {
            Failure::Closed(e)
        } else {
            Failure::Scrape(ScrapeError::request(&e))
        }
    };
    stream.write_all(request).await.map_err(closed)?;
    stream.flush().await.map_err(closed)?;
    let mut reader = Reader::new(stream);
    let head = loop {
        let head = read_head(&mut reader).await.map_err(|e| match e {
            HeadError::Io(e) if reader.received == 0 => closed(e),
            HeadError::Io(e) => Failure::Scrape(ScrapeError::request(&e)),
            HeadError::Invalid(text) => Failure::Scrape(ScrapeError::Request(text)),
        })?;
        // Interim answers (100 Continue, 103 Early Hints) come before the real one.
        if !(100..200).contains(&head.status) {
            break head;
        }
    };
    if !(200..300).contains(&head.status) {
        return Err(ScrapeError::Status(head.status).into());
    }
    let mut body = Vec::new();
    let complete = match head.framing {
        Framing::Empty => true,
        Framing::Length(n) if n > limit => return Err(ScrapeError::BodyTooLarge(limit).into()),
        Framing::Length(n) => {
            body.reserve_exact(n.min(RESERVE_MAX));
            reader.copy(n, &mut body).await.map_err(body_error)?;
            true
        }
        Framing::Chunked => {
            read_chunked(&mut reader, limit, &mut body).await?;
            true
        }
        Framing::UntilClose => {
            reader.copy_to_end(limit, &mut body).await?;
            false
        }
    };
    // Bytes past the response's end were not asked for: the connection is not in step.
    let reusable = complete && head.keep_alive && reader.buffered() == 0;
    Ok((
        Response {
            content_type: head.content_type,
            content_encoding: head.content_encoding,
            body,
        },
        reusable,
    ))
}

/// A connection the peer had closed: the request could not be written, or the answer
/// ended before it began.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

fn body_error(e: io::Error) -> Failure {
    Failure::Scrape(ScrapeError::Body(e.to_string()))
}

enum HeadError {
    Io(io::Error),
    Invalid(String),
}

/// Reads and parses one response head, leaving what follows it in the reader.
async fn read_head(reader: &mut Reader<'_>) -> Result<Head, HeadError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut fields);
        match parsed.parse(reader.unread()) {
            Ok(httparse::Status::Complete(len)) => {
                let head = head_of(&parsed).map_err(HeadError::Invalid)?;
                reader.consume(len);
                return Ok(head);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(HeadError::Invalid(format!("malformed response head: {e}"))),
        }
        if reader.buffered() >= HEAD_MAX {
            return Err(HeadError::Invalid(format!(
                "response head larger than {HEAD_MAX} bytes"
            )));
        }
        match reader.fill().await {
            Ok(0) => {
                return Err(HeadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response head was complete",
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

fn head_of(parsed: &httparse::Response<'_, '_>) -> Result<Head, String> {
    let status = parsed.code.unwrap_or(0);
    let http11 = parsed.version == Some(1);
    let mut length: Option<usize> = None;
    let mut chunked = None;
    let mut close = !http11;
    let mut content_type = None;
    let mut content_encoding = None;
    for field in parsed.headers.iter() {
        let value = String::from_utf8_lossy(field.value);
        let value = value.trim();
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n =
                content_length(value).ok_or_else(|| format!("invalid Content-Length {value:?}"))?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length headers".to_owned());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides (RFC 9112 6.3): chunked frames the body.
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && !http11 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-encoding") {
            content_encoding = Some(value.to_owned());
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    Ok(Head {
        status,
        framing,
        keep_alive: !close,
        content_type,
        content_encoding,
    })
}

/// Decodes a chunked body into `body`, trailers read and dropped.
async fn read_chunked(
    reader: &mut Reader<'_>,
    limit: usize,
    body: &mut Vec<u8>,
) -> Result<(), Failure> {
    loop {
        let line = reader.line().await.map_err(body_error)?;
        let size = chunk_size(line).ok_or_else(|| {
            ScrapeError::Body(format!(
                "invalid chunk size line {:?}",
                String::from_utf8_lossy(&line[..line.len().min(64)])
            ))
        })?;
        if size == 0 {
            // Trailer fields up to the empty line.
            while !reader.line().await.map_err(body_error)?.is_empty() {}
            return Ok(());
        }
        if size > limit - body.len() {
            return Err(ScrapeError::BodyTooLarge(limit).into());
        }
        body.reserve(size.min(RESERVE_MAX));
        reader.copy(size, body).await.map_err(body_error)?;
        if !reader.line().await.map_err(body_error)?.is_empty() {
            return Err(ScrapeError::Body("chunk data longer than its size".to_owned()).into());
        }
    }
}

/// A `Content-Length` value: decimal digits only (RFC 9110 8.6), so no sign, space
/// or list, which Rust's integer parsing alone would let through (`+5`).
fn content_length(value: &str) -> Option<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// The size of a chunk-size line (hex digits, then optional `;` extensions).
fn chunk_size(line: &[u8]) -> Option<usize> {
    let digits = line
        .iter()
        .position(|b| *b == b';' || *b == b' ' || *b == b'\t')
        .map_or(line, |end| &line[..end]);
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    usize::from_str_radix(text, 16).ok()
}

/// Reads from a connection through a buffer of [`HEAD_MAX`] bytes (heads, chunk-size
/// lines); body bytes beyond what is buffered go straight into the body.
struct Reader<'a> {
    stream: &'a mut Stream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes read from the connection so far.
    received: usize,
}

impl<'a> Reader<'a> {
    fn new(stream: &'a mut Stream) -> Reader<'a> {
        Reader {
            stream,
            buf: vec![0; HEAD_MAX].into_boxed_slice(),
            start: 0,
            end: 0,
            received: 0,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Reads more into the buffer (moving what is unread to its front first); 0 at the
    /// connection's end, or when the buffer is full of unread bytes.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Ok(0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        self.received += n;
        Ok(n)
    }

    /// The next line without its CRLF (a bare LF ends one too), at most [`LINE_MAX`]
    /// bytes; only valid until the reader is used again.
    async fn line(&mut self) -> io::Result<&[u8]> {
        loop {
            if let Some(at) = self.unread().iter().position(|b| *b == b'\n') {
                let (start, end) = (self.start, self.start + at);
                self.start = end + 1;
                let line = &self.buf[start..end];
                return Ok(line.strip_suffix(b"\r").unwrap_or(line));
            }
            if self.buffered() > LINE_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("chunk framing line longer than {LINE_MAX} bytes"),
                ));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside the chunked body",
                ));
            }
        }
    }

    /// Appends exactly `n` more bytes to `out`: the buffered ones first, then read from
    /// the connection straight into `out`.
    async fn copy(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let from_buf = n.min(self.buffered());
        out.extend_from_slice(&self.buf[self.start..self.start + from_buf]);
        self.start += from_buf;
        let mut left = n - from_buf;
        while left > 0 {
            let read = self.read_into(out, left).await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed {left} bytes before the body's end"),
                ));
            }
            left -= read;
        }
        Ok(())
    }

    /// Appends everything up to the connection's end; more than `limit` bytes in all
    /// fails as `body_too_large`.
    async fn copy_to_end(&mut self, limit: usize, out: &mut Vec<u8>) -> Result<(), Failure> {
        let from_buf = self.buffered();
        if from_buf > limit {
            return Err(ScrapeError::BodyTooLarge(limit).into());
        }
        out.extend_from_slice(self.unread());
        self.start = self.end;
        loop {
            // One byte past the limit tells "too large" from "exactly at the limit".
            let room = limit + 1 - out.len();
            let read = self.read_into(out, room).await.map_err(body_error)?;
            if read == 0 {
                return Ok(());
            }
            if out.len() > limit {
                return Err(ScrapeError::BodyTooLarge(limit).into());
            }
        }
    }

    /// One read of at most `max` bytes into `out`'s spare capacity (grown if it has
    /// none).
    async fn read_into(&mut self, out: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        if out.capacity() == out.len() {
            out.reserve(max.min(64 << 10));
        }
        let n = self.stream.read_buf(&mut (&mut *out).limit(max)).await?;
        self.received += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;
    use crate::tls::client::{Alpn, ClientSecurity};

    /// One scripted answer: its bytes, written at once or a byte at a time, and
    /// whether the server closes the connection after it.
    #[derive(Clone)]
    struct Reply {
        bytes: Vec<u8>,
        trickle: bool,
        close: bool,
    }

    fn reply(bytes: &str) -> Reply {
        Reply {
            bytes: bytes.as_bytes().to_vec(),
            trickle: false,
            close: false,
        }
    }

    /// What the scripted server saw: connections accepted, requests read.
    #[derive(Default)]
    struct Seen {
        accepts: usize,
        requests: Vec<String>,
    }

    /// A server on 127.0.0.1 that answers each request it reads with the next reply
    /// (closing the connection when the replies run out); stops with the runtime.
    async fn serve(replies: Vec<Reply>) -> (Uri, Arc<Mutex<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let replies = Arc::new(Mutex::new(replies.into_iter()));
        let tally = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                conn.set_nodelay(true).unwrap();
                tally.lock().unwrap().accepts += 1;
                let (replies, tally) = (replies.clone(), tally.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // Bounded: a request head is a few hundred bytes.
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let request: Vec<u8> = buf.drain(..end).collect();
                        tally
                            .lock()
                            .unwrap()
                            .requests
                            .push(String::from_utf8(request).unwrap());
                        let Some(r) = replies.lock().unwrap().next() else {
                            return;
                        };
                        if r.trickle {
                            for b in &r.bytes {
                                if conn.write_all(&[*b]).await.is_err() {
                                    return;
                                }
                                tokio::task::yield_now().await;
                            }
                        } else if conn.write_all(&r.bytes).await.is_err() {
                            return;
                        }
                        if r.close {
                            let _ = conn.shutdown().await;
                            return;
                        }
                    }
                });
            }
        });
        let uri = format!("http://{addr}/metrics?x=1").parse().unwrap();
        (uri, seen)
    }

    fn client() -> Client {
        Client::new(ClientSecurity::none().connector(Alpn::Http1, None))
    }

    async fn get(c: &mut Client, uri: &Uri, limit: usize) -> Result<Response, ScrapeError> {
        let request = request_bytes(uri, Duration::from_secs(1), &HeaderMap::new());
        c.get(uri, &request, limit).await
    }

    #[tokio::test]
    async fn a_content_length_body_is_read_and_the_connection_kept() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
        let (uri, seen) = serve(vec![reply(ok), reply(ok)]).await;
        let mut c = client();
        for _ in 0..2 {
            let r = get(&mut c, &uri, 1024).await.unwrap();
            assert_eq!(r.body, b"hello");
            assert_eq!(r.content_type.as_deref(), Some("text/plain"));
            assert_eq!(r.content_encoding, None);
            assert!(c.has_idle());
        }
        assert_eq!(seen.lock().unwrap().accepts, 1);
    }

    #[tokio::test]
    async fn the_request_names_the_target_and_asks_for_the_formats() {
        let (uri, seen) = serve(vec![reply("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")]).await;
        let mut extra = HeaderMap::new();
        extra.insert("authorization", "Bearer t".parse().unwrap());
        let mut c = client();
        let request = request_bytes(&uri, Duration::from_millis(2500), &extra);
        c.get(&uri, &request, 1024).await.unwrap();
        let seen = seen.lock().unwrap();
        let port = uri.port_u16().unwrap();
        assert_eq!(
            seen.requests[0],
            format!(
                "GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {ACCEPT}\r\n\
                 Accept-Encoding: gzip\r\nUser-Agent: weir/{}\r\n\
                 X-Prometheus-Scrape-Timeout-Seconds: 2.5\r\nauthorization: Bearer t\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        // The scheme's own port is left out of Host, as hyper does; "/" when no path.
        let request = |url: &str| {
            let timeout = Duration::from_secs(10);
            request_bytes(&url.parse().unwrap(), timeout, &HeaderMap::new())
        };
        assert!(request("http://h:80").starts_with(b"GET / HTTP/1.1\r\nHost: h\r\n"));
        assert!(request("https://h:443/m").starts_with(b"GET /m HTTP/1.1\r\nHost: h\r\n"));
        assert!(request("https://h:80/m").starts_with(b"GET /m HTTP/1.1\r\nHost: h:80\r\n"));
        // Whole seconds without a fraction, as Prometheus formats them.
        let text = String::from_utf8(request("http://h/")).unwrap();
        assert!(
            text.contains("\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_chunked_body_arriving_a_byte_at_a_time_is_decoded() {
        let chunked = Reply {
            trickle: true,
            ..reply(
                "HTTP/1.1 100 Continue\r\n\r\n\
                 HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n\
                 5;name=value\r\nhello\r\nA\r\n, chunked!\r\n0\r\nX-Trailer: t\r\n\r\n",
            )
        };
        let after = reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let (uri, seen) = serve(vec![chunked, after]).await;
        let mut c = client();
        let r = get(&mut c, &uri, 1024).await.unwrap();
        assert_eq!(r.body, b"hello, chunked!");
        assert_eq!(r.content_encoding.as_deref(), Some("gzip"));
        assert!(c.has_idle());
        assert_eq!(get(&mut c, &uri, 1024).await.unwrap().body, b"ok");
        assert_eq!(seen.lock().unwrap().accepts, 1);
    }

    #[tokio::test]
    async fn a_body_to_the_connections_end_is_read_and_not_reused() {
        let until_close = Reply {
            close: true,
            ..reply("HTTP/1.1 200 OK\r\n\r\nto the end")
        };
        let closing = reply("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx");
        let old = reply("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\ny");
        let (uri, seen) = serve(vec![until_close, closing, old]).await;
        let mut c = client();
        assert_eq!(get(&mut c, &uri, 1024).await.unwrap().body, b"to the end");
        assert!(!c.has_idle());
        assert_eq!(get(&mut c, &uri, 1024).await.unwrap().body, b"x");
        assert!(!c.has_idle(), "Connection: close");
        assert_eq!(get(&mut c, &uri, 1024).await.unwrap().body, b"y");
        assert!(!c.has_idle(), "HTTP/1.0 without keep-alive");
        assert_eq!(seen.lock().unwrap().accepts, 3);
    }

    #[tokio::test]
    async fn a_connection_the_target_closed_while_idle_is_replaced_without_a_failure() {
        let first = Reply {
            close: true,
            ..reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        };
        let second = reply("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb");
        let (uri, seen) = serve(vec![first, second]).await;
        let mut c = client();
        assert_eq!(get(&mut c, &uri, 1024).await.unwrap().body, b"a");
        // The server's close has not been read yet: the connection looks reusable.
        assert!(c.has_idle());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(get(&mut c, &uri, 1024).await.unwrap().body, b"b");
        assert_eq!(seen.lock().unwrap().accepts, 2);
    }

    #[tokio::test]
    async fn a_new_connection_closed_before_an_answer_fails_the_scrape() {
        let (uri, seen) = serve(vec![]).await;
        let mut c = client();
        let e = get(&mut c, &uri, 1024).await.unwrap_err();
        assert_eq!(e.as_str(), "request_failed", "{e}");
        assert_eq!(
            seen.lock().unwrap().accepts,
            1,
            "no retry on a new connection"
        );
        assert!(!c.has_idle());
    }

    #[tokio::test]
    async fn bodies_past_the_limit_fail_however_they_are_framed() {
        let body = "x".repeat(101);
        let (uri, _) = serve(vec![
            reply(&format!("HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n{body}")),
            reply(&format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n{}\r\n1\r\nx\r\n0\r\n\r\n",
                &body[..100]
            )),
            Reply {
                close: true,
                ..reply(&format!("HTTP/1.1 200 OK\r\n\r\n{body}"))
            },
            Reply {
                close: true,
                ..reply(&format!("HTTP/1.1 200 OK\r\n\r\n{}", &body[..100]))
            },
        ])
        .await;
        let mut c = client();
        for _ in 0..3 {
            let e = get(&mut c, &uri, 100).await.unwrap_err();
            assert!(matches!(e, ScrapeError::BodyTooLarge(100)), "{e}");
            assert!(!c.has_idle());
        }
        // Exactly at the limit is fine.
        assert_eq!(get(&mut c, &uri, 100).await.unwrap().body.len(), 100);
    }

    #[tokio::test]
    async fn broken_answers_fail_with_their_reason() {
        let big_head = format!(
            "HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
            "p".repeat(HEAD_MAX)
        );
        let cases = [
            (
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                "http_status",
            ),
            (big_head.as_str(), "request_failed"),
            ("HTTP/1.1 2OO OK\r\n\r\n", "request_failed"),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "request_failed",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "body_read_failed",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "body_read_failed",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "body_read_failed",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                "body_read_failed",
            ),
        ];
        for (answer, reason) in cases {
            let (uri, _) = serve(vec![Reply {
                close: true,
                ..reply(answer)
            }])
            .await;
            let mut c = client();
            let e = get(&mut c, &uri, 1 << 20).await.unwrap_err();
            assert_eq!(e.as_str(), reason, "{answer:?}: {e}");
            assert!(!c.has_idle());
        }
    }

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"FF;x=y"), Some(255));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"10 ;x"), Some(16));
        for bad in [&b""[..], b";x", b"g", b"-1", b"+1", b"1234567890abcdef0"] {
            assert_eq!(chunk_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_content_length_is_decimal_digits_only() {
        assert_eq!(content_length("0"), Some(0));
        assert_eq!(content_length("1130"), Some(1130));
        for bad in [
            "",
            "+5",
            "-5",
            "5 ",
            "5, 5",
            "0x10",
            "99999999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }
}
