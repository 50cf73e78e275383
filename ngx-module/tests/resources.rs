//! What a filter makes the host do outside its own memory stays bounded: output, shared
//! data, queues, metrics, calls, CPU in host calls and in the background. Hostile filters are
//! played by the `script` test filter.

mod support;

use std::time::Duration;

use support::*;

/// Budgets far beyond what a flood of host calls takes: these tests are about the bounds on
/// shared space, calls and output, which must not race a deadline on a busy machine.
const ROOMY: &str = "proxy_wasm_timeout 30s; proxy_wasm_request_timeout 60s;";

/// Two tenants: modules `a` and `b`, the same `script` file under two names (two VM ids).
fn two_tenants(extra: &str) -> String {
    let script = filter("script");
    format!("wasm {{ module a {script}; module b {script}; {extra} }}")
}

fn script(module: &str, lines: &[&str]) -> String {
    format!("proxy_wasm {module} '{}';", lines.join("\n"))
}

/// The worker's resident memory, in KiB.
fn worker_rss_kib(nginx: &Nginx) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", nginx.worker_pids()[0])).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

#[test]
fn a_flood_of_output_logs_a_bounded_amount() {
    let nginx = Nginx::start(
        &two_tenants(""),
        &format!(
            "{ROOMY} location / {{ {} return 200 'served\n'; }}",
            script("a", &["request_headers stdout 16777216", "response_headers stdout 1048576"])
        ),
    );
    for _ in 0..3 {
        assert_eq!(nginx.get("/").text(), "served\n", "{}", nginx.error_log());
    }
    let log = nginx.error_log();
    assert_eq!(log.matches("bytes of stdout/stderr output dropped").count(), 6, "{}", &log[..log.len().min(4000)]);
    assert!(log.len() < 2 << 20, "{} bytes of error log", log.len());
}

#[test]
fn zones_too_small_for_nginx_are_refused_with_the_reason() {
    for (block, expected) in [
        ("shm_kv * 1;", "shm_kv \"*\": 1 bytes is too small (at least 32k)"),
        ("shm_kv * 100;", "shm_kv \"*\": 100 bytes is too small (at least 32k)"),
        ("shm_kv * 1k;", "shm_kv \"*\": 1024 bytes is too small (at least 32k)"),
        ("shm_queue * 1;", "shm_queue \"*\": 1 bytes is too small (at least 32k)"),
        ("shm_kv * 64k quota=1m;", "quota=1048576 is more than the zone"),
    ] {
        let (ok, output) = nginx_test(&two_tenants(block), "");
        assert!(!ok, "{block}: {output}");
        assert!(output.contains(expected), "{block}: expected {expected:?} in {output}");
        assert!(!output.contains("signal"), "{output}");
    }
    // A reload onto a zone too small is refused; the master and its workers serve on.
    let nginx = Nginx::start(&two_tenants(""), "location / { return 200 'up\n'; }");
    let master = nginx.master_pid();
    nginx.reload_expecting_failure(&two_tenants("shm_kv * 100;"), "location / { return 200 'up\n'; }");
    assert_eq!(nginx.get("/").text(), "up\n");
    assert!(std::path::Path::new(&format!("/proc/{master}")).exists());
    assert!(nginx.error_log().contains("100 bytes is too small"), "{}", nginx.error_log());
}

#[test]
fn one_tenant_cannot_evict_or_starve_another() {
    let nginx = Nginx::start(
        &two_tenants("shm_kv * 256k;"),
        &format!(
            "{ROOMY}
             location /a/keep {{ {} return 200; }}
             location /a/read {{ {} return 200; }}
             location /b/flood {{ {} return 200; }}
             location /a/metrics {{ {} return 200; }}",
            script("a", &["request_headers shared-fill keep 8 1000"]),
            script("a", &["request_headers shared-get keep0", "request_headers shared-get keep7"]),
            script("b", &["request_headers shared-fill flood 2000 1000", "request_headers metric-fill m 6000"]),
            script("a", &["request_headers metric-fill mine 3"]),
        ),
    );
    assert_eq!(nginx.get("/a/keep").status, 200);
    assert_eq!(nginx.get("/b/flood").status, 200);
    assert_eq!(nginx.get("/a/read").status, 200);
    assert_eq!(nginx.get("/a/metrics").status, 200);
    let log = nginx.error_log();
    assert!(log.contains("shared keep0=1000 bytes") && log.contains("shared keep7=1000 bytes"), "{log}");
    // The flood evicted only b's own keys, and b's metrics stopped at its share of the zone.
    assert!(log.contains("shared-fill 2000 of 2000"), "{log}");
    assert!(log.contains("metric-fill 2044 of 6000, then status 10"), "{log}");
    assert!(log.contains("metric-fill 3 of 3"), "{log}");
    assert_eq!(
        log.matches("filter \"b\": cannot define metric \"m2044\": a filter may define 2044 metrics").count(),
        1
    );
    assert!(!log.contains("ngx_slab_alloc() failed"), "{log}");
}

#[test]
fn a_value_as_large_as_the_zone_allows_is_written_without_a_scan_of_the_zone() {
    let nginx = Nginx::start(
        &two_tenants("shm_kv * 8m;"),
        &format!(
            "location / {{ proxy_wasm_timeout 2s; {} return 200; }}",
            script("a", &["request_headers shared-fill small 500 1000", "request_headers shared-fill big 1 3145728"])
        ),
    );
    for _ in 0..3 {
        assert_eq!(nginx.get("/").status, 200, "{}", nginx.error_log());
    }
    assert_eq!(nginx.error_log().matches("shared-fill 1 of 1").count(), 3, "{}", nginx.error_log());
}

#[test]
fn a_module_cannot_register_queues_without_end_or_overflow_a_zone() {
    let nginx = Nginx::start(
        &two_tenants(""),
        &format!(
            "{ROOMY}
             location /queues {{ {} return 200; }}
             location /items {{ {} return 200; }}
             location / {{ return 200 'fine\n'; }}",
            script("a", &["request_headers queue-fill q 5000"]),
            script("b", &["request_headers enqueue-fill items 3000 1000"]),
        ),
    );
    assert_eq!(nginx.get("/queues").status, 200);
    assert_eq!(nginx.get("/items").status, 200);
    let log = nginx.error_log();
    assert!(log.contains("queue-fill 1024 of 5000, then status 10"), "{log}");
    assert!(log.contains("cannot register queue \"q1024\": a module may have 1024 queues in a zone"), "{log}");
    assert!(log.contains("enqueue-fill 3000 of 3000"), "{log}");
    // An idle worker with a thousand queues looks at one word per zone: it stays idle.
    let worker = nginx.worker_pids()[0];
    let cpu = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu(worker);
    std::thread::sleep(Duration::from_secs(2));
    assert!(cpu(worker) - before < 20, "an idle worker used {} ticks in 2 s", cpu(worker) - before);
    assert_eq!(nginx.get("/").text(), "fine\n");
}

#[test]
fn requests_whose_clients_left_free_what_their_filters_held() {
    let nginx = Nginx::start(
        &two_tenants(""),
        &format!(
            "{ROOMY} location / {{ {} return 200; }}",
            script(
                "a",
                &["request_headers bulk-header request x-big 4194304", "request_headers pause", "log log ended"]
            )
        ),
    );
    for _ in 0..12 {
        let mut client = std::net::TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
        std::io::Write::write_all(&mut client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(nginx.wait_log("log: ended", 12), 12, "{}", nginx.error_log());
    let rss = worker_rss_kib(&nginx);
    assert!(rss < 150 * 1024 || under_asan(), "worker RSS {rss} KiB after 12 abandoned 4 MiB requests");
}

#[test]
fn a_request_budget_bounds_a_filter_across_its_callbacks() {
    // Each callback of `a` would fit the 1 s deadline, hundreds of milliseconds apart on a
    // busy machine; the budget left for its response headers (900 ms) is what stops it,
    // long before its spin would end (so the spin cannot outrun the interruption).
    let nginx = Nginx::start(
        &two_tenants(""),
        &format!(
            "proxy_wasm_timeout 1s; proxy_wasm_request_timeout 1500ms;
             location /spread {{ {} return 200 'never\n'; }}
             location /fits {{ {} return 200 'fits\n'; }}",
            script("a", &["request_headers spin-ms 600", "response_headers spin-ms 60000"]),
            script("b", &["request_headers spin-ms 40", "response_headers spin-ms 40"]),
        ),
    );
    assert_eq!(nginx.get("/spread").status, 503);
    assert_eq!(nginx.get("/fits").text(), "fits\n");
    let log = nginx.error_log();
    assert!(
        log.contains("filter \"a\" exceeded its request budget of 1500 ms (all its callbacks for one request) in proxy_on_response_headers"),
        "{log}"
    );
    assert!(log.contains("this worker: 0 traps, 1 timeouts, 0 memory failures"), "{log}");
}

#[test]
fn a_root_in_the_background_gets_a_short_budget_and_a_tenth_of_the_worker() {
    let nginx = Nginx::start(
        &two_tenants(""),
        &format!(
            "location /busy {{ {} return 200; }}
             location /slow {{ {} return 200; }}
             location / {{ return 200 'fine\n'; }}",
            script("a", &["configure tick 1", "tick log tick", "tick spin-ms 15"]),
            script("b", &["configure tick 100", "tick spin-ms 50"]),
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = nginx.error_log();
    let ticks = log.matches("tick: tick").count();
    assert!((2..=30).contains(&ticks), "{ticks} ticks of 15 ms in 2 s");
    assert!(log.contains("filter \"b\" exceeded its deadline of 20 ms in proxy_on_tick"), "{log}");
    assert_eq!(nginx.get("/").text(), "fine\n");
}

/// Waits until `done` holds (polling), for at most 20 s; returns whether it did.
fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn http_calls_are_bounded_per_context_and_cancelled_with_their_request() {
    let silent = SilentUpstream::start();
    let target = format!("127.0.0.1:{}", silent.port);
    let nginx = Nginx::start(
        &two_tenants(""),
        &format!(
            "{ROOMY}
             location /flood {{ {} return 200 'answered\n'; }}
             location /tick {{ {} return 200; }}
             location / {{ return 200 'fine\n'; }}",
            script("a", &[&format!("request_headers call-fill 200 {target} /never timeout=60000")]),
            script("b", &["configure tick 1", &format!("tick call-fill 50 {target} /never timeout=60000")]),
        ),
    );
    // b's root keeps at most 64 calls in flight, whatever its ticks ask.
    assert!(eventually(|| silent.open() >= 64), "{} open", silent.open());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(silent.open(), 64, "{}", nginx.error_log());
    // A request's calls are cut at 64 too, and go when the request does.
    assert_eq!(nginx.get("/flood").text(), "answered\n");
    assert!(eventually(|| silent.open() == 64), "{} open after the request ended", silent.open());
    let log = nginx.error_log();
    assert!(log.contains("filter \"a\": http call refused: a context may have 64 calls in flight"));
    let dispatched = log.lines().filter(|l| l.contains("request_headers: call ") && l.contains(" dispatched")).count();
    assert_eq!(dispatched, 64);
    assert_eq!(nginx.get("/").text(), "fine\n");
}

#[test]
fn a_requests_grpc_stream_ends_with_the_request() {
    let silent = SilentUpstream::start();
    let nginx = Nginx::start_with(
        1,
        &two_tenants(""),
        &format!(
            "{ROOMY}
             location /stream {{ proxy_wasm_pause_timeout 300ms; {} }}",
            script("a", &["request_headers grpc-stream quiet inwasm.test.Echo Stream a", "request_headers pause"]),
        ),
        &format!("upstream quiet {{ server 127.0.0.1:{}; }}", silent.port),
    );
    for round in 1..=3 {
        assert_eq!(nginx.get("/stream").status, 504, "the stream is never answered: {}", nginx.error_log());
        assert!(eventually(|| silent.accepted() == round), "{} connections", silent.accepted());
        assert!(eventually(|| silent.open() == 0), "the stream's connection closed with its request");
    }
}
