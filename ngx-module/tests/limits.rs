//! Deadlines, memory limits, fail-open and the sandbox, through a real nginx.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn misbehave_server(directives: &str) -> Nginx {
    misbehave_server_with(directives, "")
}

/// `misbehave_server` with directives for its location too.
fn misbehave_server_with(directives: &str, location: &str) -> Nginx {
    let upstream = EchoUpstream::start();
    Nginx::start(
        &format!(
            "wasm {{ module misbehave {}; module headers {}; {directives} }}",
            filter("misbehave"),
            filter("headers")
        ),
        &format!("location / {{ {location} proxy_wasm misbehave ok; proxy_pass http://127.0.0.1:{}; }}", upstream.port),
    )
}

fn misbehave(nginx: &Nginx, mode: &str) -> Response {
    nginx.request("GET", "/", &[("x-misbehave", mode)], b"")
}

#[test]
fn location_timeout_cuts_a_spinning_filter_precisely() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &format!("wasm {{ module misbehave {}; }}", filter("misbehave")),
        &format!(
            "location / {{ proxy_wasm misbehave ok; proxy_wasm_timeout 20ms; proxy_pass http://127.0.0.1:{}; }}",
            upstream.port
        ),
    );
    let limit = Duration::from_millis(20);
    let mut overshoots = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(misbehave(&nginx, "spin").status, 503);
        let elapsed = started.elapsed();
        assert!(elapsed >= limit, "cut before the limit: {elapsed:?}");
        overshoots.push(elapsed - limit);
        assert_eq!(misbehave(&nginx, "ok").status, 200, "the worker serves the next request");
    }
    overshoots.sort();
    let (median, worst) = (overshoots[overshoots.len() / 2], overshoots[overshoots.len() - 1]);
    println!("deadline 20 ms: time past the limit to the 503: median {median:?}, max {worst:?}");
    assert!(median < Duration::from_millis(10), "median overshoot {median:?}");
    assert!(worst < Duration::from_millis(200), "worst overshoot {worst:?}");
    let log = nginx.error_log();
    assert!(log.contains("filter \"misbehave\" exceeded its deadline of 20 ms in proxy_on_request_headers"), "{log}");
    assert!(log.contains("this worker: 0 traps, 20 timeouts, 0 memory failures"), "{log}");
}

#[test]
fn memory_hog_is_stopped_at_its_module_limit() {
    // A budget far beyond the hog's time: a test of the memory limit must not race a deadline.
    let nginx = misbehave_server_with("module_memory_limit misbehave 16m;", "proxy_wasm_timeout 10s;");
    for _ in 0..10 {
        assert_eq!(misbehave(&nginx, "hog").status, 503);
        assert_eq!(misbehave(&nginx, "ok").status, 200);
    }
    let log = nginx.error_log();
    assert!(log.contains("filter \"misbehave\" exceeded its memory limit of 16777216 bytes"), "{log}");
    assert!(log.contains("this worker: 0 traps, 0 timeouts, 10 memory failures"), "{log}");
    // Ten 16 MiB hogs later, the worker holds no more than one instance's worth of them.
    let worker = nginx.worker_pids()[0];
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let rss_kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    println!("worker RSS after 10 memory-limit failures: {} MiB", rss_kib / 1024);
    assert!(rss_kib < 100 * 1024 || under_asan(), "worker RSS {rss_kib} KiB");
}

#[test]
fn stack_overflow_is_caught() {
    let nginx = misbehave_server("");
    assert_eq!(misbehave(&nginx, "recurse").status, 503);
    assert!(nginx.error_log().contains("trapped in proxy_on_request_headers"), "{}", nginx.error_log());
    assert_eq!(misbehave(&nginx, "ok").status, 200);
}

#[test]
fn fail_open_skips_the_failed_filter_and_serves() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &format!("wasm {{ module misbehave {}; module headers {}; }}", filter("misbehave"), filter("headers")),
        &format!(
            "location / {{ proxy_wasm misbehave ok; proxy_wasm headers open; proxy_wasm_fail_open on;
                           proxy_pass http://127.0.0.1:{}; }}",
            upstream.port
        ),
    );
    for mode in ["panic", "spin", "hog"] {
        let response = misbehave(&nginx, mode);
        assert_eq!(response.status, 200, "{mode}: {}", nginx.error_log());
        assert!(response.text().contains("x-inwasm-config: open\n"), "the next filter still ran: {}", response.text());
        assert_eq!(response.header("x-inwasm"), Some("hello"));
    }
    assert_eq!(nginx.error_log().matches("skipped (fail-open)").count(), 3, "{}", nginx.error_log());
}

#[test]
fn environment_is_empty_unless_passed() {
    let closed = misbehave_server("");
    assert!(misbehave(&closed, "env").text().contains("x-env: \n"), "{}", misbehave(&closed, "env").text());
    let open = misbehave_server("module_env misbehave TENANT=acme REGION=eu;");
    assert!(
        misbehave(&open, "env").text().contains("x-env: REGION=eu;TENANT=acme\n"),
        "{}",
        misbehave(&open, "env").text()
    );
}

/// Sends 4 x 50 normal requests and 24 misbehaving ones at once; returns how many of each
/// got the expected status (200 and 503). A closed or reset connection counts as neither.
fn storm(port: u16) -> (usize, usize) {
    let status = move |mode: &str| try_request(port, "GET", "/", &[("x-misbehave", mode)], b"").map(|r| r.status).ok();
    let normal: Vec<_> =
        (0..4).map(|_| std::thread::spawn(move || (0..50).filter(|_| status("ok") == Some(200)).count())).collect();
    let attack = std::thread::spawn(move || {
        ["panic", "spin", "hog", "recurse"].iter().cycle().take(24).filter(|mode| status(mode) == Some(503)).count()
    });
    let served = normal.into_iter().map(|t| t.join().unwrap()).sum();
    (served, attack.join().unwrap())
}

fn two_workers(isolation: &str) -> Nginx {
    let upstream = EchoUpstream::start();
    Nginx::start_with(
        2,
        &format!("wasm {{ module misbehave {}; }}", filter("misbehave")),
        &format!(
            "location / {{ proxy_wasm misbehave ok; proxy_wasm_isolation {isolation}; proxy_wasm_timeout 30ms;
                           proxy_pass http://127.0.0.1:{}; }}",
            upstream.port
        ),
        "",
    )
}

#[test]
fn per_request_isolation_keeps_concurrent_traffic_whole() {
    let nginx = two_workers("stream");
    let workers = nginx.started_workers(2);
    assert_eq!(storm(nginx.port), (200, 24), "{}", nginx.error_log());
    assert!(!nginx.error_log().contains("exited on signal"));
    assert_eq!(nginx.worker_pids(), workers, "no worker was replaced");
}

/// With one shared instance per worker (isolation none), a failure discards that instance,
/// and requests in flight on it fail too: 503 before their response has begun, a closed
/// connection after (as streams of a failed VM in Envoy get a 503 or a reset). The worker
/// itself keeps serving.
#[test]
fn shared_instance_failure_spares_the_worker() {
    let nginx = two_workers("none");
    let workers = nginx.started_workers(2);
    let (served, failed_as_expected) = storm(nginx.port);
    println!("isolation none: {served}/200 concurrent normal requests served during 24 failures");
    assert_eq!(failed_as_expected, 24);
    assert!(served > 0);
    for _ in 0..20 {
        assert_eq!(request(nginx.port, "GET", "/", &[("x-misbehave", "ok")], b"").status, 200);
    }
    let log = nginx.error_log();
    let lifecycle: Vec<&str> = log.lines().filter(|l| l.contains("worker process") || l.contains("[alert]")).collect();
    assert_eq!(nginx.worker_pids(), workers, "no worker was replaced: {lifecycle:#?}");
}

#[test]
fn filter_spinning_at_configuration_fails_nginx_t_quickly() {
    let spinner = WatModule::new(
        "spinner",
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
           (func (export "malloc") (param i32) (result i32) (i32.const 8))
           (func (export "proxy_on_configure") (param i32 i32) (result i32) (loop (br 0)) (i32.const 1)))"#,
    );
    let started = Instant::now();
    let (ok, output) = nginx_test(
        &format!("wasm {{ start_timeout 1s; module spinner {}; }}", spinner.path.display()),
        "server { location / { proxy_wasm spinner; } }",
    );
    assert!(!ok);
    assert!(output.contains("exceeded its deadline of 1000 ms in proxy_on_configure"), "{output}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[test]
fn limit_directive_errors_are_clear() {
    let module = format!("module misbehave {};", filter("misbehave"));
    let cases = [
        (format!("wasm {{ {module} }}"), "server { proxy_wasm_timeout soon; }", "invalid proxy_wasm_timeout \"soon\""),
        (
            format!("wasm {{ {module} }}"),
            "server { proxy_wasm_fail_open maybe; }",
            "invalid proxy_wasm_fail_open \"maybe\"",
        ),
        ("wasm { module_memory_limit ghost 1m; }".to_string(), "", "no module \"ghost\" is declared before this line"),
        ("wasm { module_env ghost A=1; }".to_string(), "", "no module \"ghost\" is declared before this line"),
        (
            format!("wasm {{ {module} module_memory_limit misbehave lots; }}"),
            "",
            "invalid module_memory_limit \"lots\"",
        ),
    ];
    for (main, http, expected) in cases {
        let (ok, output) = nginx_test(&main, http);
        assert!(!ok, "accepted: {main} {http}");
        assert!(output.contains(expected), "expected {expected:?} in:\n{output}");
    }
}

/// More modules than the process's 1,000 instance slots, each used once by one worker: the
/// least recently used idle instances are released to make room, so every module serves.
/// A filter that works in the background (the ticker's timer) is never released.
#[test]
fn a_worker_serves_more_modules_than_its_instance_slots() {
    const MODULES: usize = 1100;
    let headers = filter("headers");
    let modules: String = (0..MODULES).map(|i| format!("module t{i} {headers};")).collect();
    let locations: String =
        (0..MODULES).map(|i| format!("location = /t{i} {{ proxy_wasm t{i}; return 200 \"t{i}\"; }}")).collect();
    let nginx = Nginx::start(
        &format!("wasm {{ module ticker {}; {modules} }}", filter("ticker")),
        &format!("location /never-requested {{ proxy_wasm ticker 1000; }} {locations}"),
    );
    for i in (0..MODULES).chain([0, 1, MODULES - 1]) {
        let response = nginx.get(&format!("/t{i}"));
        assert_eq!(response.status, 200, "/t{i}: {}", nginx.error_log());
        assert_eq!(response.header("x-inwasm"), Some("hello"), "/t{i}");
    }
    assert_eq!(nginx.wait_log("tick 3", 1), 1, "the background filter kept its timer: {}", nginx.error_log());
}
