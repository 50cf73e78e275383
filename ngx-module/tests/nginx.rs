//! The nginx module through a real nginx (`load_module`), with filters built from the SDK.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn wasm_block(modules: &[&str]) -> String {
    let lines: String = modules.iter().map(|m| format!("module {m} {};\n", filter(m))).collect();
    format!("wasm {{ {lines} }}")
}

#[test]
fn request_and_response_headers_are_rewritten() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &wasm_block(&["headers"]),
        &format!("location / {{ proxy_wasm headers 'from-config'; proxy_pass http://127.0.0.1:{}; }}", upstream.port),
    );
    let response = nginx.request("GET", "/path?x=1", &[("X-Remove-Me", "yes"), ("X-Keep", "kept")], b"");
    assert_eq!(response.status, 200);
    let seen = response.text();
    assert!(seen.starts_with("GET /path?x=1\n"), "{seen}");
    assert!(seen.contains("x-inwasm-config: from-config\n"), "{seen}");
    assert!(seen.contains("x-inwasm-added: 1\n"), "{seen}");
    assert!(seen.contains("x-keep: kept\n"), "{seen}");
    assert!(!seen.contains("x-remove-me"), "{seen}");
    assert_eq!(response.header("x-inwasm"), Some("hello"));
    assert_eq!(response.header("server"), Some("inwasm"));
    assert_eq!(response.header("x-request-path"), Some("/path?x=1"));
    assert!(nginx.error_log().contains("[wasm] filter \"headers\": request GET /path?x=1"), "{}", nginx.error_log());
}

#[test]
fn repeated_headers_are_replaced_and_removed_whole() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &wasm_block(&["headers"]),
        &format!("location / {{ proxy_wasm headers cfg; proxy_pass http://127.0.0.1:{}; }}", upstream.port),
    );
    let headers = [
        ("X-Remove-Me", "1"),
        ("x-inwasm-config", "old-1"),
        ("x-keep", "a"),
        ("X-Remove-Me", "2"),
        ("x-inwasm-config", "old-2"),
        ("x-keep", "b"),
    ];
    let seen = nginx.request("GET", "/", &headers, b"").text();
    assert_eq!(seen.matches("x-inwasm-config: ").count(), 1, "{seen}");
    assert!(seen.contains("x-inwasm-config: cfg\n"), "{seen}");
    assert!(!seen.contains("x-remove-me"), "{seen}");
    assert!(seen.contains("x-keep: a\n") && seen.contains("x-keep: b\n"), "{seen}");
    assert!(seen.contains("host: "), "nginx's own pointers survive the edits: {seen}");
}

#[test]
fn local_response_short_circuits_upstream() {
    let nginx = Nginx::start(&wasm_block(&["headers"]), "location / { proxy_wasm headers; return 200 'upstream'; }");
    let response = nginx.request("GET", "/", &[("x-deny", "1")], b"");
    assert_eq!(response.status, 403);
    assert_eq!(response.text(), "denied\n");
    assert_eq!(response.header("x-denied"), Some("yes"));
    // The filter's own response callbacks saw the local response too, as in Envoy.
    assert_eq!(response.header("x-inwasm"), Some("hello"));
}

#[test]
fn local_response_in_response_phase_replaces_the_upstream_response() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &wasm_block(&["headers"]),
        &format!("location / {{ proxy_wasm headers; proxy_pass http://127.0.0.1:{}; }}", upstream.port),
    );
    let response = nginx.request("GET", "/", &[("x-deny-response", "1")], b"");
    assert_eq!(response.status, 451);
    assert_eq!(response.text(), "blocked late\n");
    assert_eq!(response.header("x-denied-late"), Some("yes"));
    assert_eq!(response.header("content-length"), Some("13"));
    assert_eq!(nginx.get("/").status, 200, "the next request is untouched");
}

#[test]
fn works_with_return_and_static_files() {
    let nginx = Nginx::start(
        &wasm_block(&["headers"]),
        "location /r { proxy_wasm headers; return 201 'made\n'; }
         location /s { proxy_wasm headers; root /usr/share/nginx/html; try_files /index.html =404; }",
    );
    let made = nginx.get("/r");
    assert_eq!((made.status, made.text().as_str(), made.header("x-inwasm")), (201, "made\n", Some("hello")));
    let file = nginx.get("/s");
    assert_eq!(file.status, 200);
    assert!(file.text().contains("nginx"), "{}", file.text());
    assert_eq!(file.header("x-inwasm"), Some("hello"));
}

#[test]
fn a_body_filter_reads_and_rewrites_a_static_file_and_one_that_does_not_leaves_it_whole() {
    let nginx = Nginx::start(
        &wasm_block(&["body", "headers"]),
        "location /plain { proxy_wasm headers; alias /usr/share/nginx/html/index.html; }
         location /upper { proxy_wasm body; alias /usr/share/nginx/html/index.html; }",
    );
    let file = std::fs::read_to_string("/usr/share/nginx/html/index.html").unwrap();
    let plain = nginx.get("/plain");
    assert_eq!((plain.status, plain.text()), (200, file.clone()));
    let upper = nginx.get("/upper");
    assert_eq!((upper.status, upper.text()), (200, format!("{}!", file.to_ascii_uppercase())));
}

#[test]
fn request_body_is_rewritten_before_upstream() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &wasm_block(&["body"]),
        &format!("location / {{ proxy_wasm body; proxy_pass http://127.0.0.1:{}; }}", upstream.port),
    );
    let response = nginx.request("POST", "/", &[], b"abcdef");
    assert_eq!(response.status, 200);
    let seen = response.text().to_ascii_lowercase();
    assert!(seen.contains("content-length: 6\n"), "{seen}");
    // The response body was upper-cased by the filter; the upstream got the reversed body.
    assert!(response.text().ends_with("\n\nFEDCBA!"), "{}", response.text());
}

#[test]
fn request_body_streams_through_the_chain_as_it_arrives() {
    let nginx = Nginx::start(&wasm_block(&["lifecycle"]), "location / { proxy_wasm lifecycle; return 200 'ok'; }");
    let pieces: [&[u8]; 3] = [b"first-", b"second-", b"third"];
    let response = chunked_request(nginx.port, "/", &pieces, Duration::from_millis(150)).unwrap();
    assert_eq!(response.status, 200);
    nginx.wait_log("on_done 2", 1);
    let log = nginx.error_log();
    let calls: Vec<&str> = log.lines().filter_map(|l| l.split("request_body 2 ").nth(1)).collect();
    assert!(calls.len() >= 3, "one call per piece read: {calls:?}");
    assert!(calls[..calls.len() - 1].iter().all(|c| c.contains("eos=false")), "{calls:?}");
    assert!(calls[calls.len() - 1].contains("eos=true"), "{calls:?}");
}

#[test]
fn paused_body_pieces_accumulate_and_length_is_fixed() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &wasm_block(&["body"]),
        &format!("location / {{ proxy_wasm body; proxy_pass http://127.0.0.1:{}; }}", upstream.port),
    );
    let pieces: [&[u8]; 3] = [b"ab", b"cd", b"ef"];
    let response = chunked_request(nginx.port, "/", &pieces, Duration::from_millis(100)).unwrap();
    assert_eq!(response.status, 200, "{}", nginx.error_log());
    let seen = response.text().to_ascii_lowercase();
    assert!(seen.contains("content-length: 6\n") && !seen.contains("transfer-encoding"), "{seen}");
    assert!(response.text().ends_with("\n\nFEDCBA!"), "the filter saw the whole body at its end: {}", response.text());
}

#[test]
fn large_request_body_from_temp_file_is_seen_whole() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &wasm_block(&["body"]),
        &format!(
            "client_body_buffer_size 1k; client_max_body_size 1m; location / {{ proxy_wasm body; proxy_pass http://127.0.0.1:{}; }}",
            upstream.port
        ),
    );
    let body: Vec<u8> = (0..100_000).map(|i| b'a' + (i % 26) as u8).collect();
    let response = nginx.request("POST", "/", &[], &body);
    assert_eq!(response.status, 200);
    let mut reversed = body.clone();
    reversed.reverse();
    let echoed = &response.body[response.body.len() - body.len() - 1..response.body.len() - 1];
    assert_eq!(echoed, reversed.to_ascii_uppercase().as_slice());
}

#[test]
fn bad_request_body_is_rejected_by_the_filter() {
    let nginx = Nginx::start(&wasm_block(&["body"]), "location / { proxy_wasm body; return 200 'never'; }");
    let response = nginx.request("POST", "/", &[], b"this is bad");
    assert_eq!(response.status, 400);
    assert_eq!(response.text(), "REJECTED: BAD BODY\n!", "the response passes the filter's body callback too");
}

#[test]
fn properties_reach_the_filter() {
    let nginx = Nginx::start(
        &wasm_block(&["properties"]),
        // Filters run at the start of the location's rewrite phase: server-level `set` is visible.
        "set $tenant acme; location / { proxy_wasm properties 'request.path,request.method,source.port,ngx.tenant,plugin_name,request.scheme,plugin_vm_id'; return 200; }",
    );
    let response = nginx.request("GET", "/p?q=1", &[("x-set-prop", "ngx.tenant=globex")], b"");
    assert_eq!(response.header("x-prop-request-path"), Some("/p?q=1"));
    assert_eq!(response.header("x-prop-request-method"), Some("GET"));
    assert_eq!(response.header("x-prop-plugin_name"), Some("properties"));
    assert_eq!(response.header("x-prop-plugin_vm_id"), Some("properties"));
    assert_eq!(response.header("x-prop-request-scheme"), Some("http"));
    assert_eq!(response.header("x-prop-ngx-tenant"), Some("acme"));
    assert_eq!(response.header("x-prop-readback"), Some("globex"), "ngx variables are writable");
    let port: u32 = response.header("x-prop-source-port").unwrap().parse().unwrap();
    assert!(port > 0);
}

#[test]
fn upstream_and_response_properties_at_response_time() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &wasm_block(&["properties"]),
        &format!(
            "location / {{ proxy_wasm properties 'upstream.address,upstream.port,response.code,request.duration';
                           proxy_pass http://127.0.0.1:{}; }}",
            upstream.port
        ),
    );
    let response = nginx.get("/");
    assert_eq!(response.header("x-prop-upstream-address"), Some(format!("127.0.0.1:{}", upstream.port).as_str()));
    assert_eq!(response.header("x-prop-upstream-port"), Some(upstream.port.to_string().as_str()));
    assert_eq!(response.header("x-prop-response-code"), Some("200"));
    let nanos: u64 = response.header("x-prop-request-duration").unwrap().parse().unwrap();
    assert!(nanos < 10_000_000_000, "request.duration is nanoseconds so far: {nanos}");
}

#[test]
fn chain_runs_in_order_and_inherits() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &wasm_block(&["headers", "misbehave"]),
        &format!(
            "proxy_wasm misbehave ok; proxy_wasm headers first;
             location /inherit {{ proxy_pass http://127.0.0.1:{port}; }}
             location /own {{ proxy_wasm headers own; proxy_pass http://127.0.0.1:{port}; }}",
            port = upstream.port
        ),
    );
    let inherited = nginx.get("/inherit").text();
    assert!(inherited.contains("x-misbehave-ok: 1\n") && inherited.contains("x-inwasm-config: first\n"), "{inherited}");
    // misbehave ran before headers: headers counted its added header.
    let own = nginx.get("/own").text();
    assert!(own.contains("x-inwasm-config: own\n") && !own.contains("x-misbehave-ok"), "{own}");
}

#[test]
fn same_module_twice_in_one_chain_with_different_configs() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &wasm_block(&["headers"]),
        &format!(
            "location / {{ proxy_wasm headers one; proxy_wasm headers two; proxy_pass http://127.0.0.1:{}; }}",
            upstream.port
        ),
    );
    let seen = nginx.get("/").text();
    assert!(seen.contains("x-inwasm-config: two\n"), "the second filter set it last: {seen}");
    assert_eq!(seen.matches("x-inwasm-added: 1\n").count(), 2, "{seen}");
}

#[test]
fn trap_answers_503_and_worker_keeps_serving() {
    let nginx =
        Nginx::start(&wasm_block(&["misbehave"]), "location / { proxy_wasm misbehave ok; return 200 'fine\n'; }");
    let failed = nginx.request("GET", "/", &[("x-misbehave", "panic")], b"");
    assert_eq!(failed.status, 503);
    let log = nginx.error_log();
    assert!(log.contains("filter \"misbehave\" trapped in proxy_on_request_headers"), "{log}");
    assert!(log.contains("misbehave: panic requested"), "{log}");
    for _ in 0..3 {
        assert_eq!(nginx.get("/").text(), "fine\n");
    }
    assert_eq!(nginx.worker_pids().len(), 1, "no worker died: {log}");
}

#[test]
fn spinning_filter_is_cut_at_the_deadline() {
    let nginx =
        Nginx::start(&wasm_block(&["misbehave"]), "location / { proxy_wasm misbehave ok; return 200 'fine\n'; }");
    let started = Instant::now();
    let response = nginx.request("GET", "/", &[("x-misbehave", "spin")], b"");
    let elapsed = started.elapsed();
    assert_eq!(response.status, 503);
    assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    assert!(nginx.error_log().contains("exceeded its deadline of 100 ms"), "{}", nginx.error_log());
    assert_eq!(nginx.get("/").text(), "fine\n");
}

#[test]
fn isolation_stream_gives_each_request_a_fresh_instance() {
    let shared = Nginx::start(&wasm_block(&["lifecycle"]), "location / { proxy_wasm lifecycle; return 200; }");
    let fresh = Nginx::start(
        &wasm_block(&["lifecycle"]),
        "location / { proxy_wasm lifecycle; proxy_wasm_isolation stream; return 200; }",
    );
    for _ in 0..3 {
        shared.get("/");
        fresh.get("/");
    }
    let count = |nginx: &Nginx, line: &str| nginx.error_log().matches(line).count();
    // Shared: one instance, context ids 2, 3, 4, which remembers requests. Fresh: every
    // request is context 2 of an instance that saw none before.
    assert_eq!(count(&shared, "request_headers 2 eos=true"), 1, "{}", shared.error_log());
    assert_eq!(count(&shared, "request_headers 4 eos=true"), 1);
    assert_eq!(count(&shared, "requests before 4: 2"), 1);
    assert_eq!(count(&fresh, "request_headers 2 eos=true"), 3, "{}", fresh.error_log());
    assert_eq!(count(&fresh, "requests before 2: 0"), 3, "{}", fresh.error_log());
    assert_eq!(fresh.wait_log("on_log 2", 3), 3);
    // Its instance was reset for each next request, not started again.
    assert_eq!(count(&fresh, "on_vm_start"), 1, "{}", fresh.error_log());
    assert!(!fresh.error_log().contains("gets a fresh instance"), "{}", fresh.error_log());
}

/// A filter whose memory grows at each request cannot have its instance reset: its requests
/// get a fresh instance each, and the log says why once.
#[test]
fn isolation_stream_falls_back_to_fresh_instances_for_a_growing_filter() {
    let module = WatModule::growing_filter();
    let nginx = Nginx::start(
        &format!("wasm {{ module grower {}; }}", module.path.display()),
        "location / { proxy_wasm grower; proxy_wasm_isolation stream; return 200 'ok'; }",
    );
    for _ in 0..3 {
        assert_eq!(nginx.get("/").text(), "ok");
    }
    let log = nginx.error_log();
    let notice = "filter \"grower\": each isolated request gets a fresh instance, as an instance cannot be reset: \
                  its memory grows during requests";
    assert_eq!(log.matches(notice).count(), 1, "{log}");
}

#[test]
fn isolation_filter_gives_each_filter_its_own_instance() {
    let chain = "proxy_wasm lifecycle; proxy_wasm lifecycle; return 200;";
    let per_request =
        Nginx::start(&wasm_block(&["lifecycle"]), &format!("location / {{ proxy_wasm_isolation stream; {chain} }}"));
    let per_filter =
        Nginx::start(&wasm_block(&["lifecycle"]), &format!("location / {{ proxy_wasm_isolation filter; {chain} }}"));
    per_request.get("/");
    per_filter.get("/");
    // stream: both filters share one fresh instance (root 1 and its stream 2, then root 3
    // and its stream 4); filter: each has its own (root 1, stream 2).
    let log = per_request.error_log();
    assert!(log.contains("request_headers 2 eos=true") && log.contains("request_headers 4 eos=true"), "{log}");
    let log = per_filter.error_log();
    assert_eq!(log.matches("request_headers 2 eos=true").count(), 2, "{log}");
    assert!(!log.contains("request_headers 4"), "{log}");
}

#[test]
fn lifecycle_ends_with_done_and_log() {
    let nginx = Nginx::start(&wasm_block(&["lifecycle"]), "location / { proxy_wasm lifecycle; return 200 'x'; }");
    nginx.get("/");
    nginx.wait_log("on_done 2", 1);
    let log = nginx.error_log();
    let position = |needle: &str| log.find(needle).unwrap_or_else(|| panic!("{needle} missing: {log}"));
    assert!(position("request_headers 2") < position("response_headers 2"));
    assert!(position("response_headers 2") < position("on_log 2"));
    assert!(position("on_log 2") < position("on_done 2"), "Envoy's order");
}

#[test]
fn reload_picks_up_new_configuration() {
    let nginx = Nginx::start(&wasm_block(&["headers"]), "location / { proxy_wasm headers; return 200; }");
    assert_eq!(nginx.request("GET", "/", &[("x-deny", "1")], b"").status, 403);
    nginx.reload(&wasm_block(&["misbehave"]), "location / { proxy_wasm misbehave ok; return 200 'reloaded\n'; }");
    let response = nginx.request("GET", "/", &[("x-deny", "1")], b"");
    assert_eq!((response.status, response.text().as_str()), (200, "reloaded\n"));
}

#[test]
fn reload_picks_up_a_module_changed_on_disk_and_old_requests_finish_on_old_instances() {
    let upstream = EchoUpstream::start_slow(Duration::from_millis(800));
    let dir = std::env::temp_dir().join(format!("inwasm-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("filter.wasm");
    std::fs::copy(filter("headers"), &module).unwrap();
    let block = format!("wasm {{ module tenant {}; }}", module.display());
    let location = format!("location / {{ proxy_wasm tenant; proxy_pass http://127.0.0.1:{}; }}", upstream.port);
    let nginx = Nginx::start(&block, &location);
    let port = nginx.port;
    let in_flight = std::thread::spawn(move || request(port, "GET", "/old", &[], b""));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::copy(filter("misbehave"), &module).unwrap();
    nginx.reload(&block, &location);
    let old = in_flight.join().unwrap();
    assert_eq!((old.status, old.header("x-inwasm")), (200, Some("hello")), "the old filter finished it");
    let new = nginx.get("/new");
    assert!(new.text().contains("x-misbehave-ok: 1"), "the new module runs: {}", new.text());
    assert_eq!(new.header("x-inwasm"), None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_errors_name_the_file_and_reason() {
    let bad = BadModules::in_scratch_dir();
    let (text, refuser) = (&bad.not_wasm, &bad.refuser);
    let cases = [
        (
            format!("wasm {{ module bad {}; }}", text.display()),
            String::new(),
            format!("wasm module \"{}\": not a WebAssembly module", text.display()),
        ),
        (
            "wasm { module gone /nonexistent/x.wasm; }".to_string(),
            String::new(),
            "wasm module \"/nonexistent/x.wasm\": cannot read".to_string(),
        ),
        (
            wasm_block(&["headers"]),
            "server { location / { proxy_wasm nosuch; } }".to_string(),
            "proxy_wasm: no module \"nosuch\" is declared in the wasm {} block".to_string(),
        ),
        (
            format!("wasm {{ module refuser {}; }}", refuser.display()),
            "server { location / { proxy_wasm refuser; } }".to_string(),
            "proxy_wasm \"refuser\": filter \"refuser\" rejected its configuration (proxy_on_configure returned false)"
                .to_string(),
        ),
        (
            wasm_block(&["headers"]),
            "server { location / { proxy_wasm_isolation sometimes; } }".to_string(),
            "invalid proxy_wasm_isolation \"sometimes\"".to_string(),
        ),
        ("wasm { modul x y; }".to_string(), String::new(), "unknown directive \"modul\" in wasm block".to_string()),
        ("wasm { memory_limit lots; }".to_string(), String::new(), "invalid memory_limit \"lots\"".to_string()),
        (
            "wasm { shm_kv * 64k namespace=global; }".to_string(),
            String::new(),
            "invalid shm_kv option \"namespace=global\"".to_string(),
        ),
        (
            "wasm { module zero /dev/zero; }".to_string(),
            String::new(),
            "wasm module \"/dev/zero\": not a regular file".to_string(),
        ),
        (
            wasm_block(&["headers"]),
            "server { location / { proxy_wasm_timeout 999999999999; } }".to_string(),
            "invalid proxy_wasm_timeout \"999999999999\"".to_string(),
        ),
        (
            wasm_block(&["headers"]),
            "server { location / { proxy_wasm headers cfg nonsense; } }".to_string(),
            "the third argument is root_id=ID".to_string(),
        ),
    ];
    for (main, http, expected) in cases {
        let (ok, output) = nginx_test(&main, &http);
        assert!(!ok, "nginx -t accepted: {main} {http}");
        assert!(output.contains(&expected), "expected {expected:?} in:\n{output}");
        assert!(output.contains("nginx.conf:"), "the error names the config line: {output}");
    }
}

/// Thousands of filters are started in shares, one child per CPU: each outcome still goes to
/// its own directive, whichever share it is in.
#[test]
fn many_filters_start_in_shares_and_a_refusal_names_its_own_directive() {
    let bad = BadModules::in_scratch_dir();
    let main = format!("wasm {{ module headers {}; module refuser {}; }}", filter("headers"), bad.refuser.display());
    let locations = |refuser_at: Option<usize>| {
        let filter = |i| if Some(i) == refuser_at { "refuser" } else { "headers" };
        (0..700).map(|i| format!("location = /{i} {{ proxy_wasm {}; return 200; }}\n", filter(i))).collect::<String>()
    };
    let (ok, output) = nginx_test(&main, &format!("server {{ {} }}", locations(None)));
    assert!(ok, "{output}");
    let (ok, output) = nginx_test(&main, &format!("server {{ {} }}", locations(Some(650))));
    assert!(!ok, "nginx -t accepted a filter that refuses its configuration");
    let expected = "proxy_wasm \"refuser\": filter \"refuser\" rejected its configuration";
    assert!(output.contains(expected), "expected {expected:?} in:\n{output}");
}

#[test]
fn text_format_modules_are_accepted() {
    let module = WatModule::new(
        "noop",
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_0"))
           (func (export "malloc") (param i32) (result i32) (i32.const 8)))"#,
    );
    let nginx = Nginx::start(
        &format!("wasm {{ module noop {}; }}", module.path.display()),
        "location / { proxy_wasm noop; return 200 'ok'; }",
    );
    assert_eq!(nginx.get("/").text(), "ok");
}

/// The demo's own nginx.conf, as a user runs it (ports and log moved aside).
#[test]
fn header_rewriting_example_runs_as_documented() {
    let example = Example::start("headers", 8080);
    let response = example.request(8080, "GET", "/", &[("x-internal", "secret")], b"");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-powered-by"), Some("inwasm"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert!(response.header("x-inwasm-request-ms").unwrap().parse::<u64>().is_ok());
    assert_eq!(response.text(), "upstream saw x-hello=[world] x-internal=[]\n");
}
