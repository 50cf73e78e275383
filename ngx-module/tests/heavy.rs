//! Heavy filters (a WAF with a large rule set is the common case): large modules, slow
//! start-up, slow body inspection, and what compiling them costs.

mod support;

use std::time::Duration;

use support::*;

fn script_block(directives: &str) -> String {
    format!("wasm {{ {directives} module script {}; }}", filter("script"))
}

fn script(lines: &[&str]) -> String {
    format!("proxy_wasm script '{}';", lines.join("\n"))
}

#[test]
fn large_tables_fit_and_one_too_large_is_refused_before_compiling_naming_the_setting() {
    let dir = scratch_dir();
    let fits = dir.join("fits.wasm");
    std::fs::write(&fits, large_module(100, 30_000)).unwrap();
    let huge = dir.join("huge.wasm");
    std::fs::write(&huge, large_module(10, 300_000)).unwrap();
    let (ok, output) = nginx_test(
        &format!("wasm {{ module fits {}; }}", fits.display()),
        "server { location / { proxy_wasm fits; } }",
    );
    assert!(ok, "{output}");
    let (ok, output) = nginx_test(
        &format!("wasm {{ module huge {}; }}", huge.display()),
        "server { location / { proxy_wasm huge; } }",
    );
    assert!(!ok);
    let reason =
        "table 0 has at least 300000 elements, more than an instance may have (262144): raise max_table_elements";
    assert!(output.contains(reason), "{output}");
    let (ok, output) = nginx_test(
        &format!("wasm {{ max_table_elements 400000; module huge {}; }}", huge.display()),
        "server { location / { proxy_wasm huge; } }",
    );
    assert!(ok, "{output}");
}

#[test]
fn a_slow_start_fits_the_default_budget_and_a_stricter_one_names_itself() {
    let location = format!("location / {{ {} return 200; }}", script(&["configure spin-ms 1500"]));
    let (ok, output) = nginx_test(&script_block(""), &format!("server {{ {location} }}"));
    assert!(ok, "{output}");
    let (ok, output) = nginx_test(&script_block("start_timeout 1s;"), &format!("server {{ {location} }}"));
    assert!(!ok);
    assert!(
        output.contains(
            "exceeded its deadline of 1000 ms in proxy_on_configure (raise start_timeout if the filter needs more)"
        ),
        "{output}"
    );
}

#[test]
fn a_slow_starting_filter_starts_with_the_worker_and_is_rebuilt_after_a_failure_before_any_request() {
    let nginx = Nginx::start(
        &script_block(""),
        &format!(
            "location / {{ {} return 200 'fine\n'; }}",
            script(&["configure spin-ms 40", "configure log configured", "request_headers trap"])
        ),
    );
    // Started with the worker, not at the first request.
    assert_eq!(nginx.wait_log("configure: configured", 1), 1, "{}", nginx.error_log());
    assert_eq!(nginx.get("/").status, 503);
    // Rebuilt right after the failure: the next request finds it ready.
    assert_eq!(nginx.wait_log("configure: configured", 2), 2, "{}", nginx.error_log());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(nginx.error_log().matches("configure: configured").count(), 2);
}

#[test]
fn a_body_inspection_past_its_budget_names_the_setting_to_raise() {
    let nginx = Nginx::start(
        &script_block(""),
        &format!(
            "location /strict {{ {script} return 200 'checked\n'; }}
             location /roomy {{ proxy_wasm_timeout 5s; proxy_wasm_request_timeout 10s; {script} return 200 'checked\n'; }}",
            script = script(&["request_body buffer", "request_body spin-ms 300"])
        ),
    );
    assert_eq!(nginx.request("POST", "/strict", &[], b"a=b").status, 503);
    assert_eq!(nginx.request("POST", "/roomy", &[], b"a=b").text(), "checked\n");
    let log = nginx.error_log();
    let line =
        "exceeded its deadline of 100 ms in proxy_on_request_body (raise proxy_wasm_timeout if the filter needs more)";
    assert!(log.contains(line), "{log}");
}

/// The master's resident memory, in KiB.
fn master_rss_kib(nginx: &Nginx) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", nginx.master_pid())).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

#[test]
fn compiling_leaves_no_memory_behind_in_the_master() {
    let dir = scratch_dir();
    let module = dir.join("large.wasm");
    std::fs::write(&module, large_module(20_000, 20_000)).unwrap();
    let cache = dir.join("cache");
    let main = format!("wasm {{ cache_dir {}; module large {}; }}", cache.display(), module.display());
    let server = "location / { proxy_wasm large; return 200 'up\n'; }";
    let cold = Nginx::start(&main, server);
    assert_eq!(cold.get("/").text(), "up\n");
    let cold_rss = master_rss_kib(&cold);
    drop(cold);
    let warm = Nginx::start(&main, server);
    let warm_rss = master_rss_kib(&warm);
    println!("master RSS after a cold start {cold_rss} KiB, from the cache {warm_rss} KiB");
    assert!(cold_rss < warm_rss + 16 * 1024 || under_asan(), "cold {cold_rss} KiB, warm {warm_rss} KiB");
}
