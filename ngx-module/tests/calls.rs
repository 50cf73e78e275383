//! Asynchronous work through a real nginx: http calls (a filter pauses the request, calls an
//! auth service and resumes or answers) and root-context ticks.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use support::*;

/// An nginx whose `/` asks the auth service (a second server block, behind `upstream auth`)
/// through the httpcall filter, configured with `target`, before proxying to an echo upstream.
fn auth_gateway(target: &str) -> Nginx {
    let upstream = EchoUpstream::start();
    let auth_port = free_port();
    Nginx::start_with(
        1,
        &format!("wasm {{ module httpcall {}; }}", filter("httpcall")),
        &format!(
            "location / {{ proxy_wasm httpcall '{}'; proxy_pass http://127.0.0.1:{}; }}",
            target.replace("AUTH_PORT", &auth_port.to_string()),
            upstream.port
        ),
        &format!(
            "upstream auth {{ server 127.0.0.1:{auth_port}; }}
             server {{
                 listen 127.0.0.1:{auth_port};
                 location /check {{
                     if ($http_x_token = 'Bearer good') {{ return 200 'alice'; }}
                     return 401;
                 }}
             }}"
        ),
    )
}

/// The httpcall filter holding the response headers for its call (`x-call-at: response`),
/// with the call and the upstream taking the times given.
fn held_response(call_delay: Duration, upstream_delay: Duration, token: &str) -> Response {
    let upstream = EchoUpstream::start_slow(upstream_delay);
    let auth = AuthService::start_slow(call_delay);
    let nginx = Nginx::start_with(
        1,
        &format!("wasm {{ module httpcall {}; }}", filter("httpcall")),
        &format!("location / {{ proxy_wasm httpcall auth; proxy_pass http://127.0.0.1:{}; }}", upstream.port),
        &format!("upstream auth {{ server 127.0.0.1:{}; }}", auth.port),
    );
    nginx.request("GET", "/held", &[("authorization", token), ("x-call-at", "response")], b"")
}

#[test]
fn paused_response_headers_wait_for_the_call_whichever_ends_first() {
    let slow = Duration::from_millis(300);
    for (call, upstream) in [(slow, Duration::ZERO), (Duration::ZERO, slow)] {
        let response = held_response(call, upstream, "Bearer good");
        assert_eq!((response.status, response.header("x-auth-user")), (200, Some("alice")), "call {call:?}");
        assert!(response.text().starts_with("GET /held\n"), "the whole body follows: {}", response.text());
    }
}

#[test]
fn a_local_response_replaces_a_held_response() {
    let response = held_response(Duration::from_millis(200), Duration::ZERO, "Bearer bad");
    assert_eq!((response.status, response.text().as_str()), (403, "forbidden\n"));
}

#[test]
fn call_to_an_upstream_block_resumes_the_request() {
    let nginx = auth_gateway("auth");
    let response = nginx.request("GET", "/resource", &[("authorization", "Bearer good")], b"");
    assert_eq!(response.status, 200, "{}", nginx.error_log());
    let seen = response.text();
    assert!(seen.starts_with("GET /resource\n"), "{seen}");
    assert!(seen.contains("x-auth-user: alice\n"), "the filter resumed with the call's answer: {seen}");
    assert_eq!(response.header("x-auth-calls"), Some("1"));
    assert!(nginx.error_log().contains("status 200 body 5"), "{}", nginx.error_log());
}

#[test]
fn several_calls_in_flight_from_one_request() {
    let nginx = auth_gateway("auth");
    let response = nginx.request("GET", "/", &[("authorization", "Bearer good"), ("x-calls", "3")], b"");
    assert_eq!(response.status, 200, "{}", nginx.error_log());
    assert_eq!(response.header("x-auth-calls"), Some("3"));
    assert_eq!(nginx.error_log().matches("status 200 body 5").count(), 3, "{}", nginx.error_log());
}

#[test]
fn call_at_the_end_of_the_body_holds_it_then_lets_the_changed_body_through() {
    let nginx = auth_gateway("auth");
    let headers = [("authorization", "Bearer good"), ("x-call-at", "body")];
    let response = nginx.request("POST", "/upload", &headers, b"payload");
    assert_eq!(response.status, 200, "{}", nginx.error_log());
    let seen = response.text();
    assert!(seen.contains("x-auth-user: alice\n"), "{seen}");
    assert!(seen.contains("content-length: 15\n"), "{seen}");
    assert!(seen.ends_with("\n\nchecked:payload"), "{seen}");
}

#[test]
fn call_answer_can_deny_the_request() {
    let nginx = auth_gateway("auth");
    let response = nginx.request("GET", "/resource", &[("authorization", "Bearer bad")], b"");
    assert_eq!((response.status, response.text().as_str()), (403, "forbidden\n"));
}

#[test]
fn call_to_host_and_port() {
    let nginx = auth_gateway("127.0.0.1:AUTH_PORT");
    let response = nginx.request("GET", "/", &[("authorization", "Bearer good")], b"");
    assert!(response.text().contains("x-auth-user: alice\n"), "{}", response.text());
}

#[test]
fn failed_calls_reach_the_filter_with_no_headers() {
    let refused = auth_gateway(&format!("127.0.0.1:{}", free_port()));
    let response = refused.request("GET", "/", &[], b"");
    assert_eq!((response.status, response.header("x-call-failed")), (502, Some("1")), "{}", refused.error_log());
}

#[test]
fn call_to_an_unknown_upstream_is_refused_at_dispatch() {
    // As Envoy refuses an unknown cluster: the filter's dispatch fails with BAD_ARGUMENT.
    let unknown = auth_gateway("nosuch");
    let response = unknown.request("GET", "/", &[], b"");
    assert_eq!((response.status, response.header("x-call-error")), (500, Some("BadArgument")));
}

#[test]
fn call_timeout_is_the_filters() {
    // A service that accepts and never answers; the filter asks for a 500 ms timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let _held: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(30));
    });
    let nginx = auth_gateway(&format!("127.0.0.1:{port}"));
    let started = Instant::now();
    let response = nginx.request("GET", "/", &[], b"");
    let elapsed = started.elapsed();
    assert_eq!(response.status, 502);
    assert!(elapsed >= Duration::from_millis(490) && elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[test]
fn many_requests_with_calls_in_flight_at_once() {
    let nginx = auth_gateway("auth");
    let port = nginx.port;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..10)
                    .filter(|_| {
                        let response = request(port, "GET", "/", &[("authorization", "Bearer good")], b"");
                        response.status == 200 && response.text().contains("x-auth-user: alice\n")
                    })
                    .count()
            })
        })
        .collect();
    assert_eq!(clients.into_iter().map(|c| c.join().unwrap()).sum::<usize>(), 80);
}

#[test]
fn ticks_run_on_a_timer_until_the_filter_stops_them() {
    let nginx = Nginx::start(
        &format!("wasm {{ module ticker {}; }}", filter("ticker")),
        "location /never-requested { proxy_wasm ticker 30; }",
    );
    assert_eq!(nginx.wait_log("tick 3", 1), 1, "{}", nginx.error_log());
    std::thread::sleep(Duration::from_millis(200));
    let log = nginx.error_log();
    assert!(log.contains("tick 1") && log.contains("tick 2"), "{log}");
    assert!(!log.contains("tick 4"), "period 0 stopped the timer: {log}");
}

fn shared_counter(workers: u32, modules: &str, server: &str) -> Nginx {
    let upstream = EchoUpstream::start();
    Nginx::start_with(
        workers,
        &format!("wasm {{ {modules} }}"),
        &server.replace("UPSTREAM", &format!("http://127.0.0.1:{}", upstream.port)),
        "",
    )
}

fn hits(nginx: &Nginx, path: &str) -> u64 {
    nginx.get(path).header("x-hits").expect("x-hits").parse().unwrap()
}

#[test]
fn shared_counter_loses_no_update_across_workers() {
    let nginx = shared_counter(
        2,
        &format!("module shared {};", filter("shared")),
        "location / { proxy_wasm shared; proxy_pass UPSTREAM; }",
    );
    // The first write cannot be a compare-and-swap (Envoy's semantics: there is no cas to
    // compare yet), so the key is created before the race starts.
    assert_eq!(hits(&nginx, "/"), 1);
    let port = nginx.port;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || (0..50).filter(|_| request(port, "GET", "/", &[], b"").status == 200).count())
        })
        .collect();
    assert_eq!(clients.into_iter().map(|c| c.join().unwrap()).sum::<usize>(), 200);
    assert_eq!(hits(&nginx, "/"), 202, "every increment of both workers counted: {}", nginx.error_log());
    assert_eq!(nginx.started_workers(2).len(), 2);
}

#[test]
fn shared_data_is_namespaced_per_module() {
    let nginx = shared_counter(
        1,
        &format!("module tenant_a {f}; module tenant_b {f};", f = filter("shared")),
        "location /a { proxy_wasm tenant_a; proxy_pass UPSTREAM; }
         location /b { proxy_wasm tenant_b; proxy_pass UPSTREAM; }",
    );
    assert_eq!((hits(&nginx, "/a"), hits(&nginx, "/a"), hits(&nginx, "/b")), (1, 2, 1));
}

#[test]
fn a_shared_namespace_zone_is_seen_by_every_module() {
    let nginx = shared_counter(
        1,
        &format!(
            "module tenant_a {f}; module tenant_b {f}; shm_kv * 64k namespace=shared eviction=none;",
            f = filter("shared")
        ),
        "location /a { proxy_wasm tenant_a; proxy_pass UPSTREAM; }
         location /b { proxy_wasm tenant_b; proxy_pass UPSTREAM; }",
    );
    assert_eq!((hits(&nginx, "/a"), hits(&nginx, "/b"), hits(&nginx, "/a")), (1, 2, 3));
}

#[test]
fn ticks_store_shared_data() {
    let nginx = Nginx::start(
        &format!("wasm {{ module ticker {}; shm_kv * 64k; }}", filter("ticker")),
        "location /never-requested { proxy_wasm ticker 20; }",
    );
    assert_eq!(nginx.wait_log("tick 3", 1), 1, "{}", nginx.error_log());
    assert!(!nginx.error_log().contains("shared data unavailable"), "{}", nginx.error_log());
}

#[test]
fn queue_items_from_any_worker_reach_the_registrant() {
    let nginx = shared_counter(
        2,
        &format!("module queue {};", filter("queue")),
        "location / { proxy_wasm queue; proxy_pass UPSTREAM; }",
    );
    nginx.started_workers(2);
    let port = nginx.port;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                (0..5).filter(|i| request(port, "GET", &format!("/item-{c}-{i}"), &[], b"").status == 200).count()
            })
        })
        .collect();
    assert_eq!(clients.into_iter().map(|c| c.join().unwrap()).sum::<usize>(), 20);
    assert_eq!(nginx.wait_log("dequeued /item-", 20), 20, "{}", nginx.error_log());
    let log = nginx.error_log();
    let drainers: std::collections::HashSet<&str> = log
        .lines()
        .filter(|l| l.contains("dequeued /item-"))
        .filter_map(|l| l.split_whitespace().nth(3)) // "pid#tid:"
        .collect();
    assert_eq!(drainers.len(), 1, "one registrant drains the queue: {drainers:?}");
    for c in 0..4 {
        for i in 0..5 {
            assert!(
                log.contains(&format!("dequeued /item-{c}-{i}\n")) || log.contains(&format!("dequeued /item-{c}-{i},")),
                "item {c}-{i}: {log}"
            );
        }
    }
}

#[test]
fn metrics_are_aggregated_across_workers_and_scraped() {
    let nginx = shared_counter(
        2,
        &format!("module metrics {}; module misbehave {};", filter("metrics"), filter("misbehave")),
        "location / { proxy_wasm metrics; proxy_pass UPSTREAM; }
         location /bad { proxy_wasm misbehave panic; return 200; }
         location /metrics { proxy_wasm_metrics; }",
    );
    nginx.started_workers(2);
    let mut seen = Vec::new();
    for _ in 0..10 {
        let response = nginx.request("POST", "/", &[], b"0123456789");
        seen.push(response.header("x-requests-total").unwrap().parse::<u64>().unwrap());
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "one counter for both workers");
    assert_eq!(nginx.get("/bad").status, 503);
    let scrape = nginx.get("/metrics");
    assert_eq!(scrape.header("content-type"), Some("text/plain; version=0.0.4"));
    let text = scrape.text();
    for line in [
        "# TYPE requests_total counter",
        "requests_total{filter=\"metrics\"} 10",
        "inflight{filter=\"metrics\"} 0",
        "# TYPE body_size histogram",
        "body_size_bucket{filter=\"metrics\",le=\"10\"} 10",
        "body_size_bucket{filter=\"metrics\",le=\"5\"} 0",
        "body_size_count{filter=\"metrics\"} 10",
        "body_size_sum{filter=\"metrics\"} 100",
        "inwasm_requests_total{filter=\"metrics\"} 10",
        "inwasm_requests_total{filter=\"misbehave\"} 1",
        "inwasm_traps_total{filter=\"misbehave\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn full_shared_data_zone_evicts_least_recently_used_or_fails() {
    let module = format!("module shared {};", filter("shared"));
    let evicting =
        shared_counter(1, &format!("{module} shm_kv * 64k;"), "location / { proxy_wasm shared; proxy_pass UPSTREAM; }");
    let filled = evicting.request("GET", "/", &[("x-fill", "300"), ("x-check", "fill-299")], b"");
    assert_eq!((filled.status, filled.header("x-present")), (200, Some("yes")), "{}", evicting.error_log());
    let oldest = evicting.request("GET", "/", &[("x-check", "fill-0")], b"");
    assert_eq!(oldest.header("x-present"), Some("no"), "the least recently used keys made room");

    let strict = shared_counter(
        1,
        &format!("{module} shm_kv * 64k eviction=none;"),
        "location / { proxy_wasm shared; proxy_pass UPSTREAM; }",
    );
    assert_eq!(strict.request("GET", "/", &[("x-fill", "300")], b"").status, 503, "a full zone refuses the write");
}
