//! `weir health`: a probe of a weir's own `GET /health`, for container health checks
//! and scripts where no curl exists (the image has nothing but the binary).
//!
//! Owns: one plain-HTTP/1.1 GET with a deadline and the verdict on its status line.
//! Must never: wait without a deadline, or call a weir healthy on anything but a 2xx.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why a probe found no healthy weir.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The URL is not `http://host:port/path`.
    #[error("not an http:// URL with a host and port: {0:?}")]
    BadUrl(String),
    /// The host did not resolve, or no address of it answered in time.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// `host:port` from the URL.
        address: String,
        /// The last connect or resolve error.
        reason: String,
    },
    /// The connection broke or the deadline passed before a status line arrived.
    #[error("no answer from {address}: {reason}")]
    NoAnswer {
        /// `host:port` from the URL.
        address: String,
        /// The I/O error.
        reason: String,
    },
    /// The server answered with something other than 2xx.
    #[error("unhealthy: {0}")]
    Unhealthy(String),
}

/// GETs `url` (plain `http://`, as the admin listener on loopback serves it) and
/// returns the status line when it is a 2xx, all within `timeout`.
pub fn probe(url: &str, timeout: Duration) -> Result<String, HealthError> {
    let deadline = Instant::now() + timeout;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HealthError::BadUrl(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || !authority.contains(':') {
        return Err(HealthError::BadUrl(url.to_owned()));
    }
    let connect_error = |reason: String| HealthError::Connect {
        address: authority.to_owned(),
        reason,
    };
    let addresses = authority
        .to_socket_addrs()
        .map_err(|e| connect_error(e.to_string()))?;
    let mut last = "the host resolved to no address".to_owned();
    let mut stream = None;
    for address in addresses {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = "deadline passed".to_owned();
            break;
        }
        match TcpStream::connect_timeout(&address, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let mut stream = stream.ok_or_else(|| connect_error(last))?;
    let no_answer = |e: std::io::Error| HealthError::NoAnswer {
        address: authority.to_owned(),
        reason: e.to_string(),
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left)).map_err(no_answer)?;
    stream.set_write_timeout(Some(left)).map_err(no_answer)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(no_answer)?;
    // The status line is all the verdict needs; 512 bytes hold it.
    let mut head = [0u8; 512];
    let mut filled = 0;
    while filled < head.len() && !head[..filled].contains(&b'\n') {
        match stream.read(&mut head[filled..]).map_err(no_answer)? {
            0 => break,
            n => filled += n,
        }
    }
    let text = String::from_utf8_lossy(&head[..filled]);
    let status_line = text.lines().next().unwrap_or("").trim().to_owned();
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if code.len() == 3 && code.starts_with('2') && status_line.starts_with("HTTP/1.") {
        Ok(status_line)
    } else if status_line.is_empty() {
        Err(HealthError::Unhealthy("an empty answer".to_owned()))
    } else {
        Err(HealthError::Unhealthy(status_line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Answers one connection with `answer` and returns the request it read.
    fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/health", listener.local_addr().expect("addr"));
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut request = [0u8; 1024];
            let n = conn.read(&mut request).expect("read");
            conn.write_all(answer.as_bytes()).expect("write");
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        (url, server)
    }

    #[test]
    fn a_200_is_healthy_and_the_request_asks_for_the_path() {
        let (url, server) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
        let status = probe(&url, Duration::from_secs(10)).expect("healthy");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let request = server.join().expect("server");
        assert!(request.starts_with("GET /health HTTP/1.1\r\n"), "{request}");
    }

    #[test]
    fn a_503_is_unhealthy_and_says_so() {
        let (url, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let error = probe(&url, Duration::from_secs(10)).expect_err("unhealthy");
        assert_eq!(
            error.to_string(),
            "unhealthy: HTTP/1.1 503 Service Unavailable"
        );
        server.join().expect("server");
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let url = format!("http://127.0.0.1:{port}/health");
        let error = probe(&url, Duration::from_secs(10)).expect_err("refused");
        assert!(matches!(error, HealthError::Connect { .. }), "{error}");
    }

    #[test]
    fn urls_that_are_not_plain_http_with_a_port_are_refused() {
        for url in [
            "https://127.0.0.1:8686/health",
            "http:///health",
            "http://localhost/health",
            "ftp://x:1/",
        ] {
            assert!(
                matches!(
                    probe(url, Duration::from_secs(1)),
                    Err(HealthError::BadUrl(_))
                ),
                "{url}"
            );
        }
    }
}
