//! The Envoy module through a real Envoy 1.40, with filters built from the SDK: the
//! lifecycle, limits, calls, timers and shared state, and configuration errors.

use std::time::{Duration, Instant};

use inwasm_testkit::*;

fn filter(name: &str) -> String {
    root().join(format!("build/filters/filter_{name}.wasm")).display().to_string()
}

/// The filter configuration for test filter `name` with more `settings` (JSON members).
fn settings(name: &str, more: &str) -> String {
    let separator = if more.is_empty() { "" } else { ", " };
    format!(r#"{{"module": "{}", "name": "{name}"{separator}{more}}}"#, filter(name))
}

/// Envoy with one inwasm filter in front of an echo upstream, with `workers` worker threads.
fn envoy_with(name: &str, more: &str, workers: u32) -> (Envoy, EchoUpstream) {
    let upstream = EchoUpstream::start();
    let setup = EnvoySetup {
        filters: vec![inwasm_filter(&settings(name, more))],
        upstream: Some(upstream.port),
        workers,
        ..Default::default()
    };
    (Envoy::start(&setup), upstream)
}

fn envoy(name: &str, more: &str) -> (Envoy, EchoUpstream) {
    envoy_with(name, more, 1)
}

fn misbehave(envoy: &Envoy, mode: &str) -> Response {
    envoy.request("GET", "/", &[("x-misbehave", mode)], b"")
}

/// With a few request headers and with many: edits of a map of up to 16 entries are made
/// after a walk of its list, of a larger one through Envoy's own lookup.
#[test]
fn request_and_response_headers_are_rewritten() {
    let (envoy, _upstream) = envoy("headers", r#""configuration": "from-config""#);
    let many: Vec<(String, String)> = (0..20).map(|i| (format!("x-extra-{i}"), i.to_string())).collect();
    let few = vec![];
    for extra in [few, many] {
        let mut headers = vec![("X-Remove-Me", "yes"), ("X-Keep", "kept")];
        headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let response = envoy.request("GET", "/path?x=1", &headers, b"");
        assert_eq!(response.status, 200, "{}", envoy.log());
        let seen = response.text();
        assert!(seen.contains("x-inwasm-config: from-config\n"), "{seen}");
        assert!(seen.contains("x-inwasm-added: 1\n") && seen.contains("x-keep: kept\n"), "{seen}");
        assert!(!seen.contains("x-remove-me"), "{seen}");
        assert_eq!(seen.matches("x-header-count: ").count(), 1, "{seen}");
        assert_eq!(response.header("x-inwasm"), Some("hello"));
        assert_eq!(response.header("x-request-path"), Some("/path?x=1"));
    }
}

#[test]
fn configuration_errors_stop_envoy_with_the_reason() {
    let bad = BadModules::in_scratch_dir();
    let (text, refuser) = (&bad.not_wasm, &bad.refuser);
    let cases = [
        (format!(r#"{{"module": "{}", "timeot": "1s"}}"#, filter("headers")), "unknown key \"timeot\"".to_string()),
        (r#"{"configuration": "x"}"#.to_string(), "needs \"module\"".to_string()),
        (format!(r#"{{"module": "{}", "timeout": "soon"}}"#, filter("headers")), "invalid \"timeout\"".to_string()),
        (format!(r#"{{"module": "{}"}}"#, text.display()), format!("\"{}\": not a WebAssembly module", text.display())),
        (r#"{"module": "/nonexistent/x.wasm"}"#.to_string(), "\"/nonexistent/x.wasm\": cannot read".to_string()),
        (
            format!(r#"{{"module": "{}"}}"#, refuser.display()),
            "rejected its configuration (proxy_on_configure returned false)".to_string(),
        ),
    ];
    for (config, expected) in cases {
        let setup = EnvoySetup { filters: vec![inwasm_filter(&config)], ..Default::default() };
        let log = Envoy::try_start(&setup).err().unwrap_or_else(|| panic!("{config} was accepted"));
        assert!(log.contains(&expected), "{config}: expected {expected:?} in\n{log}");
    }
}

#[test]
fn spinning_filter_is_cut_at_its_deadline_and_the_worker_serves_on() {
    let (envoy, _upstream) = envoy("misbehave", r#""configuration": "ok", "timeout": "20ms""#);
    let limit = Duration::from_millis(20);
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(misbehave(&envoy, "spin").status, 503);
        let elapsed = started.elapsed();
        assert!(elapsed >= limit && elapsed < limit * 10, "cut after {elapsed:?}");
        assert_eq!(misbehave(&envoy, "ok").status, 200, "the worker serves the next request");
    }
    let log = envoy.log();
    assert!(log.contains("filter \"misbehave\" exceeded its deadline of 20 ms in proxy_on_request_headers"), "{log}");
    assert!(envoy.stats().contains("inwasm.misbehave.timeouts_total: 5"), "{}", envoy.stats());
}

#[test]
fn memory_hog_is_stopped_at_its_limit() {
    let (envoy, _upstream) = envoy("misbehave", r#""configuration": "ok", "memory_limit": "16m""#);
    for _ in 0..3 {
        assert_eq!(misbehave(&envoy, "hog").status, 503);
        assert_eq!(misbehave(&envoy, "ok").status, 200);
    }
    assert!(envoy.log().contains("exceeded its memory limit of 16777216 bytes"), "{}", envoy.log());
    assert!(envoy.stats().contains("inwasm.misbehave.memory_failures_total: 3"), "{}", envoy.stats());
}

#[test]
fn panic_answers_503_and_the_instance_is_rebuilt() {
    let (envoy, _upstream) = envoy("misbehave", r#""configuration": "ok""#);
    assert_eq!(misbehave(&envoy, "panic").status, 503);
    assert_eq!(misbehave(&envoy, "recurse").status, 503);
    let response = misbehave(&envoy, "ok");
    assert!(response.text().contains("x-misbehave-ok: 1"), "{}", response.text());
    let log = envoy.log();
    assert!(log.contains("misbehave: panic requested"), "{log}");
    // Rust keeps its stack in linear memory: running out of it is a memory fault there.
    assert_eq!(log.matches("trapped in proxy_on_request_headers").count(), 2, "{log}");
    assert!(envoy.stats().contains("inwasm.misbehave.traps_total: 2"), "{}", envoy.stats());
}

#[test]
fn fail_open_skips_the_failed_filter() {
    let (envoy, _upstream) = envoy("misbehave", r#""configuration": "ok", "fail_open": true, "timeout": "20ms""#);
    for mode in ["panic", "spin", "hog"] {
        let response = misbehave(&envoy, mode);
        assert_eq!(response.status, 200, "{mode}: {}", envoy.log());
        assert!(!response.text().contains("x-misbehave-ok"), "{mode}: the filter was skipped");
    }
    assert!(envoy.log().contains("skipped (fail-open)"), "{}", envoy.log());
}

#[test]
fn environment_is_empty_unless_configured() {
    // An empty environment comes out as an empty header value, which Envoy drops.
    let (plain, _a) = envoy("misbehave", r#""configuration": "env""#);
    let seen = plain.get("/").text();
    assert!(seen.contains("x-misbehave-config: env\n") && !seen.contains("x-env: "), "{seen}");
    let (given, _b) = envoy("misbehave", r#""configuration": "env", "environment": {"TENANT": "acme"}"#);
    assert!(given.get("/").text().contains("x-env: TENANT=acme\n"), "{}", given.get("/").text());
}

#[test]
fn isolation_stream_gives_each_request_a_fresh_instance() {
    let (shared, _a) = envoy("lifecycle", "");
    let (fresh, _b) = envoy("lifecycle", r#""isolation": "stream""#);
    for _ in 0..3 {
        shared.get("/");
        fresh.get("/");
    }
    assert_eq!(shared.wait_log("on_done 4", 1), 1, "one instance counts contexts on: {}", shared.log());
    assert_eq!(fresh.wait_log("on_done 2", 3), 3, "a fresh instance per request: {}", fresh.log());
    // Each request's instance saw no request before: a fresh one, or one reset after the
    // last request (not started again: on_vm_start once on the worker, and once where the
    // configuration was loaded).
    assert_eq!(fresh.log().matches("requests before 2: 0").count(), 3, "{}", fresh.log());
    assert!(fresh.log().matches("on_vm_start").count() <= 2, "{}", fresh.log());
    assert!(!fresh.log().contains("gets a fresh instance"), "{}", fresh.log());
}

/// A filter whose memory grows at each request cannot have its instance reset: its requests
/// get a fresh instance each, and the log says why once (per worker).
#[test]
fn isolation_stream_falls_back_to_fresh_instances_for_a_growing_filter() {
    let module = WatModule::growing_filter();
    let upstream = EchoUpstream::start();
    let settings = format!(r#"{{"module": "{}", "name": "grower", "isolation": "stream"}}"#, module.path.display());
    let setup =
        EnvoySetup { filters: vec![inwasm_filter(&settings)], upstream: Some(upstream.port), ..Default::default() };
    let envoy = Envoy::start(&setup);
    for _ in 0..3 {
        assert_eq!(envoy.get("/").status, 200, "{}", envoy.log());
    }
    let notice = "filter \"grower\": each isolated request gets a fresh instance, as an instance cannot be reset: \
                  its memory grows during requests";
    assert_eq!(envoy.wait_log(notice, 1), 1, "{}", envoy.log());
    assert_eq!(envoy.log().matches(notice).count(), 1, "{}", envoy.log());
}

/// A listener update (a new listener from LDS, as a control plane sends it) replaces the
/// filters' configurations while Envoy runs: requests get the new ones, and the old
/// configurations' root contexts end (`on_done`) once Envoy destroys them; with a shared
/// instance and with an instance per request alike.
#[test]
fn a_listener_update_replaces_the_filters_configurations() {
    let upstream = EchoUpstream::start();
    for isolation in ["none", "stream"] {
        let setup = |variant: &str| EnvoySetup {
            filters: vec![
                inwasm_filter(&settings("lifecycle", &format!(r#""isolation": "{isolation}""#))),
                inwasm_filter(&settings(
                    "headers",
                    &format!(r#""configuration": "{variant}", "isolation": "{isolation}""#),
                )),
            ],
            upstream: Some(upstream.port),
            workers: 2,
            ..Default::default()
        };
        let envoy = Envoy::start_with_listener_updates(&setup("first"));
        for variant in ["first", "second", "third"] {
            if variant != "first" {
                envoy.update_listener(&setup(variant));
            }
            // Envoy's worker threads take the new listener each in turn: four requests in a
            // row must see the new configuration soon.
            let (deadline, mut in_a_row) = (Instant::now() + Duration::from_secs(30), 0);
            while in_a_row < 4 {
                let seen = envoy.get("/").text();
                in_a_row = if seen.contains(&format!("x-inwasm-config: {variant}\n")) { in_a_row + 1 } else { 0 };
                assert!(Instant::now() < deadline, "{isolation}, {variant}: {seen}\n{}", envoy.log());
            }
        }
        if isolation == "none" {
            assert!(envoy.wait_log("root on_done", 1) >= 1, "{}", envoy.log());
        }
        assert!(!envoy.log().contains("inwasm: filter"), "{}", envoy.log());
    }
}

#[test]
fn http_call_to_a_cluster_resumes_or_denies_the_request() {
    let upstream = EchoUpstream::start();
    let auth = AuthService::start();
    let dead = free_port();
    let setup = EnvoySetup {
        filters: vec![inwasm_filter(&settings("httpcall", r#""configuration": "auth""#))],
        upstream: Some(upstream.port),
        clusters: vec![("auth".into(), auth.port), ("dead".into(), dead)],
        ..EnvoySetup::default()
    };
    let envoy = Envoy::start(&setup);
    let allowed = envoy.request("GET", "/resource", &[("authorization", "Bearer good")], b"");
    assert!(allowed.text().contains("x-auth-user: alice\n"), "{}", allowed.text());
    let several = envoy.request("GET", "/", &[("authorization", "Bearer good"), ("x-calls", "3")], b"");
    assert_eq!((several.status, several.header("x-auth-calls")), (200, Some("3")));
    let denied = envoy.request("GET", "/", &[("authorization", "Bearer bad")], b"");
    assert_eq!((denied.status, denied.text().as_str()), (403, "forbidden\n"));
    // A call at the end of the body holds the body (not the headers, gone already) until the
    // answer.
    let body = envoy.request("POST", "/upload", &[("authorization", "Bearer good"), ("x-call-at", "body")], b"data");
    assert_eq!(body.status, 200, "{}", envoy.log());
    assert!(envoy.log().contains("call 16 status 200"), "{}", envoy.log());
}

#[test]
fn failed_call_reaches_the_filter() {
    let upstream = EchoUpstream::start();
    let setup = EnvoySetup {
        filters: vec![inwasm_filter(&settings("httpcall", r#""configuration": "dead""#))],
        upstream: Some(upstream.port),
        clusters: vec![("dead".into(), free_port())],
        ..EnvoySetup::default()
    };
    let envoy = Envoy::start(&setup);
    // Envoy answers a call to a dead upstream itself, with 503.
    assert_eq!(envoy.get("/").status, 403);
    assert!(envoy.log().contains("status 503"), "{}", envoy.log());
}

#[test]
fn ticks_run_until_the_filter_stops_them() {
    let setup = EnvoySetup {
        filters: vec![inwasm_filter(&settings("ticker", r#""configuration": "20""#))],
        ..Default::default()
    };
    let envoy = Envoy::start(&setup);
    assert_eq!(envoy.wait_log("tick 3", 1), 1, "{}", envoy.log());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!envoy.log().contains("tick 4"), "period 0 stopped the timer: {}", envoy.log());
}

#[test]
fn shared_counter_loses_no_update_across_worker_threads() {
    let (envoy, _upstream) = envoy_with("shared", "", 2);
    let hits = |envoy: &Envoy| envoy.get("/").header("x-hits").expect("x-hits").parse::<u64>().unwrap();
    assert_eq!(hits(&envoy), 1);
    let port = envoy.port;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || (0..50).filter(|_| request(port, "GET", "/", &[], b"").status == 200).count())
        })
        .collect();
    assert_eq!(clients.into_iter().map(|c| c.join().unwrap()).sum::<usize>(), 200);
    assert_eq!(hits(&envoy), 202, "every increment of both workers counted");
}

#[test]
fn shared_data_is_per_vm_id_and_shared_by_filters_that_name_the_same() {
    let counters = |vm_ids: [&str; 2]| {
        let upstream = EchoUpstream::start();
        let filters = vm_ids.iter().map(|id| inwasm_filter(&settings("shared", &format!(r#""vm_id": "{id}""#))));
        let setup = EnvoySetup { filters: filters.collect(), upstream: Some(upstream.port), ..Default::default() };
        let envoy = Envoy::start(&setup);
        let hits = || {
            let response = envoy.get("/");
            let mut seen: Vec<String> =
                response.headers.iter().filter(|(k, _)| k == "x-hits").map(|(_, v)| v.clone()).collect();
            seen.sort();
            seen.join(",")
        };
        (hits(), hits())
    };
    assert_eq!(counters(["tenant-a", "tenant-b"]), ("1,1".to_string(), "2,2".to_string()), "one counter each");
    assert_eq!(counters(["same", "same"]), ("1,2".to_string(), "3,4".to_string()), "one counter for both");
}

#[test]
fn queue_items_reach_the_main_threads_registrant() {
    let (envoy, _upstream) = envoy_with("queue", "", 2);
    for i in 0..10 {
        assert_eq!(envoy.get(&format!("/item-{i}")).status, 200);
    }
    assert_eq!(envoy.wait_log("dequeued /item-", 10), 10, "{}", envoy.log());
    for i in 0..10 {
        assert!(envoy.log().contains(&format!("dequeued /item-{i}\n")), "item {i}: {}", envoy.log());
    }
}

#[test]
fn metrics_reach_envoy_stats() {
    let (envoy, _upstream) = envoy("metrics", "");
    for _ in 0..3 {
        envoy.request("POST", "/", &[], b"12345");
    }
    assert_eq!(envoy.get("/").header("x-requests-total"), Some("4"));
    let stats = envoy.stats();
    assert!(stats.contains("dynamicmodulescustom.requests_total: 4"), "{stats}");
    assert!(stats.contains("dynamicmodulescustom.inflight: 0"), "{stats}");
    assert!(stats.contains("inwasm.metrics.requests_total: 4"), "{stats}");
}

#[test]
fn metrics_first_defined_by_a_request_reach_envoy_stats_under_a_label() {
    let (envoy, _upstream) = envoy("script", r#""configuration": "request_headers count late_total""#);
    for _ in 0..3 {
        envoy.get("/");
    }
    let stats = envoy.stats();
    assert!(stats.contains("dynamicmodulescustom.counter.name.late_total: 3"), "{stats}");
    let log = envoy.log();
    assert_eq!(log.matches("defined metric \"late_total\" after its configuration loaded").count(), 1, "{log}");
}

#[test]
fn hostile_filter_calls_leave_envoy_serving() {
    let (envoy, _upstream) = envoy("hostile", "");
    let with_mode = |mode: &str| envoy.request("GET", "/", &[("x-hostile", mode)], b"");
    assert_eq!(with_mode("giant-log").status, 200);
    let many = with_mode("many-headers");
    assert_eq!((many.status, many.headers.iter().filter(|(k, _)| k.starts_with("x-many-")).count()), (200, 5000));
    let huge = with_mode("huge-response");
    assert_eq!((huge.status, huge.body.len()), (200, 8 << 20));
    let foreign = with_mode("foreign-context");
    assert!(foreign.text().contains("x-hostile-switch: Err(BadArgument)"), "{}", foreign.text());
    with_mode("late-calls");
    let normal = with_mode("none");
    assert_eq!((normal.status, normal.header("x-hostile")), (200, Some("none")), "{}", envoy.log());
}

#[test]
fn compiled_code_is_cached_between_starts() {
    let cache = scratch_dir().join("cache");
    let more = format!(r#""cache_dir": "{}""#, cache.display());
    let (first, _upstream) = envoy("headers", &more);
    assert!(first.wait_log("compiled and cached", 1) >= 1, "{}", first.log());
    drop(first);
    let (second, _upstream) = envoy("headers", &more);
    assert!(second.wait_log("loaded from the compiled-code cache", 1) >= 1, "{}", second.log());
    assert_eq!(second.get("/").status, 200);
}
