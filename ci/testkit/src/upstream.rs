//! An upstream that echoes what it received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

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
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || echo(stream, delay));
            }
        });
        EchoUpstream { port }
    }
}

fn echo(stream: TcpStream, delay: Duration) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut report = String::new();
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut words = line.split_whitespace();
    report.push_str(&format!("{} {}\n", words.next().unwrap_or(""), words.next().unwrap_or("")));
    let mut length = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            report.push_str(&format!("{}: {}\n", k.to_ascii_lowercase(), v.trim()));
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    report.push('\n');
    let mut payload = report.into_bytes();
    payload.extend_from_slice(&body);
    std::thread::sleep(delay);
    let mut stream = stream;
    let head =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nServer: echo\r\nConnection: close\r\n\r\n", payload.len());
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&payload);
}
