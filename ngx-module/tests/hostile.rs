//! A hostile filter and hostile clients through a real nginx: nothing may crash a worker or
//! leak past the request.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

fn hostile() -> (Nginx, EchoUpstream) {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &format!("wasm {{ module hostile {}; }}", filter("hostile")),
        &format!("location / {{ proxy_wasm hostile; proxy_pass http://127.0.0.1:{}; }}", upstream.port),
    );
    (nginx, upstream)
}

fn with_mode(nginx: &Nginx, mode: &str) -> Response {
    nginx.request("GET", "/", &[("x-hostile", mode)], b"")
}

/// The workers that have started so far (a crashed worker is replaced by a new pid).
fn workers(nginx: &Nginx) -> usize {
    nginx.worker_pids().len()
}

#[test]
fn hostile_filter_calls_leave_the_worker_serving() {
    let (nginx, _upstream) = hostile();
    nginx.started_workers(1);
    let giant = with_mode(&nginx, "giant-log");
    assert_eq!(giant.status, 200);
    let many = with_mode(&nginx, "many-headers");
    assert_eq!((many.status, many.headers.iter().filter(|(k, _)| k.starts_with("x-many-")).count()), (200, 5000));
    let huge = with_mode(&nginx, "huge-response");
    assert_eq!((huge.status, huge.body.len()), (200, 8 << 20));
    let foreign = with_mode(&nginx, "foreign-context");
    assert!(foreign.text().contains("x-hostile-switch: Err(BadArgument)"), "{}", foreign.text());
    assert!(foreign.text().contains("x-hostile-read: true"), "reads stay on the filter's own context");
    assert_eq!(with_mode(&nginx, "late-calls").status, 200, "the response went before on_log");
    let normal = with_mode(&nginx, "none");
    assert_eq!((normal.status, normal.header("x-hostile")), (200, Some("none")));
    let log = nginx.error_log();
    assert_eq!(workers(&nginx), 1, "no worker crashed: {log}");
    assert!(!log.contains("[alert]") && !log.contains("[crit]"), "{log}");
}

#[test]
fn malformed_requests_are_refused_by_nginx_before_the_filter() {
    let (nginx, _upstream) = hostile();
    nginx.started_workers(1);
    let huge_header = "a".repeat(64 << 10);
    let response = nginx.request("GET", "/", &[("x-big", &huge_header)], b"");
    assert!(response.status == 400 || response.status == 494, "{}", response.status);
    let mut stream = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n").unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(with_mode(&nginx, "none").status, 200);
    assert_eq!(workers(&nginx), 1, "{}", nginx.error_log());
}

#[test]
fn clients_that_leave_mid_body_while_a_filter_waits_on_a_call_leave_nothing_behind() {
    // The call answers after 300 ms; the clients are gone by then.
    let upstream = EchoUpstream::start();
    let auth = AuthService::start_slow(Duration::from_millis(300));
    let nginx = Nginx::start_with(
        1,
        &format!("wasm {{ module httpcall {}; }}", filter("httpcall")),
        &format!("location / {{ proxy_wasm httpcall auth; proxy_pass http://127.0.0.1:{}; }}", upstream.port),
        &format!("upstream auth {{ server 127.0.0.1:{}; }}", auth.port),
    );
    nginx.started_workers(1);
    for _ in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nauthorization: Bearer good\r\nContent-Length: 100000\r\n\r\npartial",
            )
            .unwrap();
        drop(stream);
    }
    std::thread::sleep(Duration::from_millis(600));
    let response = nginx.request("GET", "/", &[("authorization", "Bearer good")], b"");
    assert!(response.text().contains("x-auth-user: alice"), "{}", response.text());
    let log = nginx.error_log();
    assert_eq!(workers(&nginx), 1, "{log}");
    assert!(!log.contains("trapped") && !log.contains("alert"), "late answers reached nobody: {log}");
}
