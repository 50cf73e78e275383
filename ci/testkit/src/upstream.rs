//! Upstreams for the servers under test: one that echoes what it received, and one that
//! answers as a small authorization service.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A request as an upstream received it (header names in lower case).
#[derive(Debug, Default)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Serves every connection on a free port with `answer` (status and body), after `delay`.
fn serve(delay: Duration, answer: fn(&Received) -> (u16, Vec<u8>)) -> u16 {
    serve_bytes(move |received| {
        std::thread::sleep(delay);
        let (status, body) = answer(received);
        reply(status, &body)
    })
}

/// Serves every connection on a free port: one request, answered with the bytes `respond`
/// makes of it.
fn serve_bytes(respond: impl Fn(&Received) -> Vec<u8> + Copy + Send + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                if let Some(received) = receive(&stream) {
                    let _ = stream.write_all(&respond(&received));
                }
            });
        }
    });
    port
}

/// An upstream on a free port that answers every request with 200 and a body describing
/// what it received: `method path`, then each header as `name: value`, a blank line, the body.
pub struct EchoUpstream {
    pub port: u16,
}

impl EchoUpstream {
    pub fn start() -> EchoUpstream {
        EchoUpstream::start_slow(Duration::ZERO)
    }

    /// An echo upstream that waits `delay` before answering (to keep requests in flight).
    pub fn start_slow(delay: Duration) -> EchoUpstream {
        EchoUpstream { port: serve(delay, |r| (200, echo(r))) }
    }
}

fn echo(received: &Received) -> Vec<u8> {
    let mut report = format!("{} {}\n", received.method, received.path);
    for (k, v) in &received.headers {
        report.push_str(&format!("{k}: {v}\n"));
    }
    report.push('\n');
    let mut payload = report.into_bytes();
    payload.extend_from_slice(&received.body);
    payload
}

/// An upstream that accepts connections and never answers; it counts the connections open
/// and those ever accepted.
pub struct SilentUpstream {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentUpstream {
    pub fn start() -> SilentUpstream {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(AtomicUsize::new(0));
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let (counted, accepts) = (open.clone(), accepted.clone());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                accepts.fetch_add(1, Ordering::SeqCst);
                let open = counted.clone();
                open.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        SilentUpstream { port, open, accepted }
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many connections are open to it now.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An upstream that answers every request with a chunked body of `size` bytes (`0123456789`
/// over and over) in chunks of at most 1000 bytes, then a trailer `x-checksum: <size>`.
pub struct ChunkedUpstream {
    pub port: u16,
}

impl ChunkedUpstream {
    pub fn start(size: usize) -> ChunkedUpstream {
        ChunkedUpstream { port: serve_bytes(move |_| chunked_response(size)) }
    }

    /// The body it sends.
    pub fn body(size: usize) -> Vec<u8> {
        b"0123456789".iter().copied().cycle().take(size).collect()
    }
}

fn chunked_response(size: usize) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in ChunkedUpstream::body(size).chunks(1000) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("0\r\nx-checksum: {size}\r\n\r\n").as_bytes());
    out
}

/// An authorization service: `x-token: Bearer good` gets 200 with body `alice`, anything
/// else 401.
pub struct AuthService {
    pub port: u16,
}

impl AuthService {
    pub fn start() -> AuthService {
        AuthService::start_slow(Duration::ZERO)
    }

    /// An authorization service that takes `delay` to answer.
    pub fn start_slow(delay: Duration) -> AuthService {
        AuthService {
            port: serve(delay, |r| match r.header("x-token") {
                Some("Bearer good") => (200, b"alice".to_vec()),
                _ => (401, Vec::new()),
            }),
        }
    }
}

/// Reads one request (a Content-Length or chunked body).
fn receive(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let mut received = Received {
        method: words.next().unwrap_or("").to_string(),
        path: words.next().unwrap_or("").to_string(),
        ..Received::default()
    };
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            received.headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    if received.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line).ok()?;
            let size = usize::from_str_radix(line.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            received.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let length = received.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        received.body = vec![0; length];
        reader.read_exact(&mut received.body).ok()?;
    }
    Some(received)
}

/// A response with `status` and `body`, closing the connection.
fn reply(status: u16, body: &[u8]) -> Vec<u8> {
    let head =
        format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nServer: echo\r\nConnection: close\r\n\r\n", body.len());
    [head.as_bytes(), body].concat()
}
