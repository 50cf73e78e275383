//! examples/limits: a filter that loops, hogs memory, panics or recurses on request, through
//! its nginx.conf as is (one worker, 20 ms per callback, 16 MiB for the module).

mod support;

use std::time::{Duration, Instant};

use support::*;

fn get(example: &Example, path: &str) -> Response {
    example.request(8080, "GET", path, &[], b"")
}

/// `x-instance-requests` of a normal request: the requests its instance has seen.
fn instance_requests(example: &Example, path: &str) -> u64 {
    let response = get(example, path);
    assert_eq!(response.status, 200, "{}", example.nginx.error_log());
    response.header("x-instance-requests").expect("x-instance-requests").parse().unwrap()
}

#[test]
fn limits_endless_loop_gets_503_at_the_deadline() {
    let example = Example::start("limits", 8080);
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(get(&example, "/loop").status, 503);
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(20) && elapsed < Duration::from_secs(1), "{elapsed:?}");
        assert_eq!(instance_requests(&example, "/ok"), 1, "the instance was rebuilt");
    }
    let log = example.nginx.error_log();
    let line = "inwasm: filter \"limits\" exceeded its deadline of 20 ms in proxy_on_request_headers (raise proxy_wasm_timeout if the filter needs more); request failed";
    assert_eq!(log.matches(line).count(), 5, "{log}");
    assert!(log.contains("this worker: 0 traps, 5 timeouts, 0 memory failures"), "{log}");
}

#[test]
fn limits_memory_hog_is_stopped_at_the_module_limit() {
    let example = Example::start("limits", 8080);
    assert_eq!(instance_requests(&example, "/ok"), 1);
    assert_eq!(instance_requests(&example, "/ok"), 2, "one shared instance");
    assert_eq!(get(&example, "/hog").status, 503);
    assert_eq!(instance_requests(&example, "/ok"), 1, "the instance was rebuilt");
    let log = example.nginx.error_log();
    assert!(
        log.contains("filter \"limits\" exceeded its memory limit of 16777216 bytes in proxy_on_request_headers"),
        "module_memory_limit 16m, not memory_limit 64m: {log}"
    );
    assert!(log.contains("this worker: 0 traps, 0 timeouts, 1 memory failures"), "{log}");
}

#[test]
fn limits_panic_and_endless_recursion_trap() {
    let example = Example::start("limits", 8080);
    assert_eq!(get(&example, "/panic").status, 503);
    assert_eq!(get(&example, "/recurse").status, 503);
    assert_eq!(instance_requests(&example, "/ok"), 1);
    let log = example.nginx.error_log();
    assert!(log.contains("[wasm] filter \"limits\": panicked at"), "the panic message is logged: {log}");
    assert_eq!(log.matches("inwasm: filter \"limits\" trapped in proxy_on_request_headers").count(), 2, "{log}");
    // Rust's stack lives in linear memory: running off its end is an out-of-bounds access.
    assert!(log.contains("example_limits") && log.contains("recurse") && log.contains("out of bounds memory access"));
    assert!(log.contains("this worker: 2 traps, 0 timeouts, 0 memory failures"), "{log}");
}

#[test]
fn limits_fail_open_skips_the_failed_filter() {
    let example = Example::start("limits", 8080);
    for mode in ["loop", "hog", "panic", "recurse"] {
        let response = get(&example, &format!("/fail-open/{mode}"));
        assert_eq!(response.status, 200, "{mode}: {}", example.nginx.error_log());
        assert_eq!(response.text(), format!("upstream served /fail-open/{mode}\n"));
        assert_eq!(response.header("x-instance-requests"), None, "{mode}: skipped for the rest of the request");
    }
    assert_eq!(example.nginx.error_log().matches("; skipped (fail-open);").count(), 4);
}

#[test]
fn limits_metrics_count_requests_and_failures() {
    let example = Example::start("limits", 8080);
    for path in ["/ok", "/loop", "/hog", "/panic", "/recurse", "/fail-open/loop", "/isolated/panic", "/ok"] {
        get(&example, path);
    }
    let metrics = get(&example, "/metrics").text();
    for line in [
        "inwasm_requests_total{filter=\"limits\"} 8",
        "inwasm_traps_total{filter=\"limits\"} 3",
        "inwasm_timeouts_total{filter=\"limits\"} 2",
        "inwasm_memory_failures_total{filter=\"limits\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in:\n{metrics}");
    }
}

#[test]
fn limits_stream_isolation_serves_concurrent_requests_through_failures() {
    let example = Example::start("limits", 8080);
    let port = example.port(8080);
    let normal: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| {
                        let response = request(port, "GET", "/isolated/ok", &[], b"");
                        (response.status, response.header("x-instance-requests").map(String::from))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let failing = std::thread::spawn(move || {
        let modes = ["loop", "hog", "panic", "recurse"].iter().cycle().take(12);
        modes.map(|mode| request(port, "GET", &format!("/isolated/{mode}"), &[], b"").status).collect::<Vec<_>>()
    });
    let served: Vec<_> = normal.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(failing.join().unwrap(), [503; 12]);
    assert_eq!(served.len(), 100);
    for (status, instance_requests) in served {
        assert_eq!(status, 200, "{}", example.nginx.error_log());
        assert_eq!(instance_requests.as_deref(), Some("1"), "a fresh instance for each request");
    }
}
