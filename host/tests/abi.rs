//! ABI-level behaviour with hand-written modules: version differences, statuses for bad
//! guest pointers and malformed data, WASI. Each probe runs host calls in
//! `proxy_on_request_headers` and reports each call's status as request header `x-s<i>`.

mod common;

use common::*;
use inwasm_host::*;

const IMPORTS: &str = r#"
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_context (param i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment (param i32 i64) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_unstable" "proc_exit" (func $exit (param i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $map_size (param i32 i32) (result i32)))
  (import "env" "emscripten_notify_memory_growth" (func $grown (param i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $time (param i32) (result i32)))
"#;

/// Memory layout: 1000 "x-s?" report key, 1010 two report digits, 1100.. scratch strings,
/// 2000/2004 out-pointers, 4096.. heap.
fn probe(abi: &str, allocator: &str, calls: &[&str]) -> String {
    let headers_params = if abi == "0_1_0" { "(param i32 i32)" } else { "(param i32 i32 i32)" };
    let reports: String =
        calls.iter().enumerate().map(|(i, call)| format!("(call $report (i32.const {i}) {call})\n")).collect();
    format!(
        r#"(module {IMPORTS}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_{abi}"))
  (func (export "malloc") (param $size i32) (result i32) {allocator})
  (func $report (param $index i32) (param $status i32)
    (i32.store8 (i32.const 1003) (i32.add (i32.const 48) (local.get $index)))
    (i32.store8 (i32.const 1010) (i32.add (i32.const 48) (i32.div_u (local.get $status) (i32.const 10))))
    (i32.store8 (i32.const 1011) (i32.add (i32.const 48) (i32.rem_u (local.get $status) (i32.const 10))))
    (drop (call $add (i32.const 0) (i32.const 1000) (i32.const 4) (i32.const 1010) (i32.const 2))))
  (data (i32.const 1000) "x-s")
  (data (i32.const 1100) "x-missing")
  (data (i32.const 1200) "hello\nwor")
  (data (i32.const 1220) "ld\n")
  (data (i32.const 1300) "\c8\04\00\00\09\00\00\00\d4\04\00\00\03\00\00\00")
  (data (i32.const 1400) "\ff\ff\ff\ff\00\00\00\00")
  (data (i32.const 1500) "plugin_name")
  (data (i32.const 1600) "nope")
  (data (i32.const 1700) "echo")
  (data (i32.const 1900) "x-dup")
  (data (i32.const 1950) "X-Got")
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") {headers_params} (result i32)
    {reports}
    (i32.const 0)))"#
    )
}

const BUMP: &str = "(global.get $heap) (global.set $heap (i32.add (global.get $heap) (local.get $size)))";

/// Runs the probe's calls and returns the statuses they reported, in order.
fn statuses(abi: &str, allocator: &str, calls: &[&str]) -> (Vec<u32>, Harness) {
    let module = wat(&format!("probe-{abi}"), &probe(abi, allocator, calls));
    let mut h = Harness::new(module, "cfg");
    let (stream, exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(stream, true).unwrap();
    let found = (0..calls.len())
        .map(|i| request_header(&exchange, &format!("x-s{i}")).expect("reported").parse().unwrap())
        .collect();
    (found, h)
}

fn status_of(call: &str) -> u32 {
    statuses("0_2_1", BUMP, &[call]).0[0]
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;
const SERIALIZATION_FAILURE: u32 = 3;
const INVALID_MEMORY_ACCESS: u32 = 6;

const GET_MISSING_HEADER: &str =
    "(call $get_header (i32.const 0) (i32.const 1100) (i32.const 9) (i32.const 2000) (i32.const 2004))";

#[test]
fn missing_header_is_not_found_from_0_2_0_on() {
    assert_eq!(statuses("0_2_0", BUMP, &[GET_MISSING_HEADER]).0, vec![NOT_FOUND]);
    assert_eq!(statuses("0_2_1", BUMP, &[GET_MISSING_HEADER]).0, vec![NOT_FOUND]);
}

#[test]
fn abi_0_1_0_missing_header_is_empty_and_two_argument_callbacks_work() {
    let (found, h) = statuses("0_1_0", BUMP, &[GET_MISSING_HEADER]);
    assert_eq!(found, vec![OK]);
    assert_eq!(h.vm.module().abi_version(), AbiVersion::V0_1_0);
}

#[test]
fn out_of_bounds_pointers_are_invalid_memory_access() {
    for call in [
        "(call $log (i32.const 2) (i32.const 65530) (i32.const 100))",
        "(call $log (i32.const 2) (i32.const 16) (i32.const -1))",
        "(call $log (i32.const 2) (i32.const -16) (i32.const 32))",
        "(call $get_pairs (i32.const 0) (i32.const 65534) (i32.const 2004))",
        "(call $get_pairs (i32.const 0) (i32.const 2000) (i32.const -4))",
        "(call $add (i32.const 0) (i32.const 1100) (i32.const 70000) (i32.const 1100) (i32.const 1))",
        "(call $get_property (i32.const 1500) (i32.const 11) (i32.const 65535) (i32.const 2004))",
    ] {
        assert_eq!(status_of(call), INVALID_MEMORY_ACCESS, "{call}");
    }
}

#[test]
fn misaligned_out_pointers_work() {
    assert_eq!(status_of("(call $get_pairs (i32.const 0) (i32.const 2001) (i32.const 2007))"), OK);
}

#[test]
fn garbage_from_the_allocator_is_caught() {
    let garbage = "(i32.const -256)";
    let (found, _) = statuses("0_2_1", garbage, &["(call $get_pairs (i32.const 0) (i32.const 2000) (i32.const 2004))"]);
    assert_eq!(found, vec![INVALID_MEMORY_ACCESS]);
}

#[test]
fn malformed_maps_are_serialization_failures() {
    // 1300: a map claiming keys at lengths that run past the buffer; 1400: count 0xffffffff.
    assert_eq!(status_of("(call $set_pairs (i32.const 0) (i32.const 1300) (i32.const 16))"), SERIALIZATION_FAILURE);
    assert_eq!(status_of("(call $set_pairs (i32.const 0) (i32.const 1400) (i32.const 8))"), SERIALIZATION_FAILURE);
}

#[test]
fn bad_enum_values_are_bad_arguments() {
    for call in [
        "(call $get_pairs (i32.const 99) (i32.const 2000) (i32.const 2004))",
        "(call $get_buffer (i32.const 42) (i32.const 0) (i32.const 10) (i32.const 2000) (i32.const 2004))",
        "(call $log (i32.const 9) (i32.const 1100) (i32.const 1))",
        "(call $set_context (i32.const 9999))",
        // http_call without :method/:path/:authority
        "(call $http_call (i32.const 1600) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 2000))",
        // call-response headers are read-only
        "(call $set_pairs (i32.const 6) (i32.const 0) (i32.const 0))",
    ] {
        assert_eq!(status_of(call), BAD_ARGUMENT, "{call}");
    }
}

#[test]
fn effective_context_redirects_host_calls() {
    // On the root context (id 1) there are no request headers; back on the stream (id 2)
    // there are. Each snippet switches, reads :path, and switches back before reporting.
    let read_path = "(call $get_header (i32.const 0) (i32.const 1800) (i32.const 5) (i32.const 2000) (i32.const 2004))";
    let on = |id: u32| {
        format!("(drop (call $set_context (i32.const {id}))) {read_path} (drop (call $set_context (i32.const 2)))")
    };
    let text = probe("0_2_1", BUMP, &[&on(1), &on(2)]).replacen(
        "(data (i32.const 1000)",
        "(data (i32.const 1800) \":path\") (data (i32.const 1000)",
        1,
    );
    let mut h = Harness::new(wat("switch", &text), "");
    let (stream, exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(stream, true).unwrap();
    assert_eq!(request_header(&exchange, "x-s0").as_deref(), Some("01"));
    assert_eq!(request_header(&exchange, "x-s1").as_deref(), Some("00"));
}

#[test]
fn unimplemented_capabilities_answer_unimplemented_once_in_the_log() {
    let grpc = "(call $grpc_call (i32.const 1600) (i32.const 4) (i32.const 1600) (i32.const 4) (i32.const 1600) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 2000))";
    let (found, h) = statuses("0_2_1", BUMP, &[grpc, grpc]);
    assert_eq!(found, vec![12, 12]);
    let reports = h.logs().iter().filter(|l| l.contains("proxy_grpc_call is not supported")).count();
    assert_eq!(reports, 1, "{:?}", h.logs());
}

#[test]
fn foreign_functions_unknown_are_not_found() {
    assert_eq!(status_of("(call $foreign (i32.const 1600) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 2000) (i32.const 2004))"), NOT_FOUND);
    assert_eq!(status_of("(call $foreign (i32.const 1700) (i32.const 4) (i32.const 1100) (i32.const 3) (i32.const 2000) (i32.const 2004))"), OK);
}

#[test]
fn counter_increment_must_be_positive() {
    let define = "(call $define_metric (i32.const 0) (i32.const 1600) (i32.const 4) (i32.const 2000))";
    let (found, _) = statuses(
        "0_2_1",
        BUMP,
        &[define, "(call $increment (i32.const 0) (i64.const 0))", "(call $increment (i32.const 0) (i64.const 3))"],
    );
    assert_eq!(found, vec![OK, BAD_ARGUMENT, OK]);
}

#[test]
fn stdout_becomes_log_lines() {
    // iovecs at 1240: (1200, 9) then (1220, 3): "hello\nwor" + "ld\n"
    let call = "(i32.store (i32.const 1240) (i32.const 1200)) (i32.store (i32.const 1244) (i32.const 9)) \
                (i32.store (i32.const 1248) (i32.const 1220)) (i32.store (i32.const 1252) (i32.const 3)) \
                (call $fd_write (i32.const 1) (i32.const 1240) (i32.const 2) (i32.const 2000))";
    let (found, h) = statuses("0_2_1", BUMP, &[call]);
    assert_eq!(found, vec![0]);
    let logs = h.logs();
    assert!(logs.contains(&"hello".to_string()) && logs.contains(&"world".to_string()), "{logs:?}");
}

#[test]
fn wasi_environment_is_empty_unless_configured() {
    let sizes = "(drop (call $environ_sizes (i32.const 2000) (i32.const 2004))) (i32.load (i32.const 2000))";
    assert_eq!(statuses("0_2_1", BUMP, &[sizes]).0, vec![0]);
    let module = wat("env", &probe("0_2_1", BUMP, &[sizes, "(call $environ (i32.const 3000) (i32.const 3100))"]));
    let config = VmConfig { environment: vec![("TENANT".into(), "acme".into())], ..VmConfig::default() };
    let mut h = Harness::with_config(module, "", config);
    let (stream, exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(stream, true).unwrap();
    assert_eq!(request_header(&exchange, "x-s0").as_deref(), Some("01"));
    assert_eq!(request_header(&exchange, "x-s1").as_deref(), Some("00"));
}

#[test]
fn wasi_has_no_files_and_random_works() {
    let open = "(call $path_open (i32.const 3) (i32.const 0) (i32.const 1600) (i32.const 4) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 2000))";
    let random = "(call $random (i32.const 3000) (i32.const 64))";
    let random_oob = "(call $random (i32.const 65530) (i32.const 64))";
    assert_eq!(statuses("0_2_1", BUMP, &[open, random, random_oob]).0, vec![8, 0, 21]);
}

#[test]
fn proc_exit_ends_the_call() {
    let module = wat("exit", &probe("0_2_1", BUMP, &["(call $exit (i32.const 3)) (i32.const 0)"]));
    let mut h = Harness::new(module, "");
    let (stream, _) = h.stream(&get_request_headers());
    assert_eq!(h.vm.on_request_headers(stream, true).unwrap_err().kind, FailureKind::Exit(3));
}

#[test]
fn native_stack_exhaustion_is_a_stack_overflow_trap() {
    let text = probe("0_2_1", BUMP, &["(call $deep) (i32.const 0)"]).replacen(
        "(func $report",
        "(func $deep (call $deep)) (func $report",
        1,
    );
    let mut h = Harness::new(wat("deep", &text), "");
    let (stream, _) = h.stream(&get_request_headers());
    let FailureKind::Trap(message) = h.vm.on_request_headers(stream, true).unwrap_err().kind else { panic!() };
    assert!(message.starts_with("stack overflow"), "{message}");
}

#[test]
fn repeated_header_reads_first_value_and_written_keys_are_lower_case() {
    let copy = "(call $get_header (i32.const 0) (i32.const 1900) (i32.const 5) (i32.const 2000) (i32.const 2004)) \
                (drop (call $add (i32.const 0) (i32.const 1950) (i32.const 5) (i32.load (i32.const 2000)) (i32.load (i32.const 2004))))";
    let module = wat("dup", &probe("0_2_1", BUMP, &[copy]));
    let mut h = Harness::new(module, "");
    let mut headers = get_request_headers();
    headers.extend([("x-dup", "first"), ("x-dup", "second")]);
    let (stream, exchange) = h.stream(&headers);
    h.vm.on_request_headers(stream, true).unwrap();
    let state = exchange.borrow();
    let written = state.request_headers.iter().find(|(k, _)| k.starts_with(b"x-got"));
    assert_eq!(written, Some((&b"x-got"[..], &b"first"[..])));
}

#[test]
fn header_map_size_is_in_bytes() {
    let size = "(drop (call $map_size (i32.const 0) (i32.const 2000))) (i32.load (i32.const 2000))";
    // :method GET :path /hello :authority example.com :scheme http = 7+3+5+6+10+11+7+4
    let module = wat("size", &probe("0_2_1", BUMP, &[size]));
    let mut h = Harness::new(module, "");
    let (stream, exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(stream, true).unwrap();
    assert_eq!(request_header(&exchange, "x-s0").as_deref(), Some("53"));
}

#[test]
fn local_response_stops_the_stream_whatever_the_filter_returns() {
    let local = "(call $local (i32.const 418) (i32.const 0) (i32.const 0) (i32.const 1600) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const -1))";
    let module = wat("local", &probe("0_2_1", BUMP, &[local]));
    let mut h = Harness::new(module, "");
    let (stream, exchange) = h.stream(&get_request_headers());
    assert_eq!(h.vm.on_request_headers(stream, true).unwrap(), Action::Pause, "the probe returns 0 (Continue)");
    let response = exchange.borrow().local_response.clone().unwrap();
    assert_eq!((response.status, response.body.as_slice()), (418, &b"nope"[..]));
}

#[test]
fn logs_and_clock_work_during_start_up() {
    let initialize = r#"(data (i32.const 2100) "starting")
         (func (export "_initialize")
           (drop (call $log (i32.const 2) (i32.const 2100) (i32.const 8)))
           (if (call $time (i32.const 2200)) (then unreachable)))
         (func $report"#;
    let text = probe("0_2_1", BUMP, &[]).replacen("(func $report", initialize, 1);
    let h = Harness::new(wat("startup", &text), "");
    assert!(h.logs().contains(&"starting".to_string()), "{:?}", h.logs());
}

#[test]
fn emscripten_imports_link() {
    assert_eq!(status_of("(call $grown (i32.const 0)) (i32.const 0)"), OK);
}

/// A module whose `on_http_call_response` logs what `proxy_get_status` says.
const STATUS_REPORTER: &str = r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_status" (func $status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $size (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32)
    (global.get $heap) (global.set $heap (i32.add (global.get $heap) (local.get $n))))
  ;; a serialized map with :method, :path and :authority
  (data (i32.const 100) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\01\00\00\00\0a\00\00\00\01\00\00\00:method\00GET\00:path\00/\00:authority\00a\00")
  (data (i32.const 200) "auth")
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $call (i32.const 200) (i32.const 4) (i32.const 100) (i32.const 61)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 300)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (drop (call $status (i32.const 2000) (i32.const 2004) (i32.const 2008)))
    ;; log the message, then the code as one digit pair
    (drop (call $log (i32.const 2) (i32.load (i32.const 2004)) (i32.load (i32.const 2008))))
    (i32.store8 (i32.const 2100) (i32.add (i32.const 48) (i32.div_u (i32.load (i32.const 2000)) (i32.const 10))))
    (i32.store8 (i32.const 2101) (i32.add (i32.const 48) (i32.rem_u (i32.load (i32.const 2000)) (i32.const 10))))
    (drop (call $log (i32.const 2) (i32.const 2100) (i32.const 2)))))"#;

#[test]
fn failed_call_reports_why_through_get_status() {
    let mut h = Harness::new(wat("status", STATUS_REPORTER), "");
    let token = h.node.borrow().http_calls.first().expect("the module made a call").0;
    h.vm.on_http_call_response(h.plugin, token, Err("connection refused".into())).unwrap();
    let logs = h.logs();
    assert!(logs.contains(&"connection refused".to_string()), "{logs:?}");
    assert!(logs.contains(&"11".to_string()), "BROKEN_CONNECTION: {logs:?}");
}

#[test]
fn successful_call_reports_ok_through_get_status() {
    let mut h = Harness::new(wat("status", STATUS_REPORTER), "");
    let token = h.node.borrow().http_calls[0].0;
    h.vm.on_http_call_response(h.plugin, token, Ok(HttpCallResponse::default())).unwrap();
    assert!(h.logs().contains(&"00".to_string()), "{:?}", h.logs());
}

#[test]
fn stdout_floods_are_cut_to_the_output_budget_quickly() {
    // 200 iovecs at 3000, each the same 50,000 bytes at 8192: newlines, then a few letters.
    let call = "(memory.fill (i32.const 8192) (i32.const 10) (i32.const 50000)) \
                (memory.fill (i32.const 8192) (i32.const 120) (i32.const 8)) \
                (i32.store (i32.const 2000) (i32.const 3000)) \
                (block $done (loop $iovs \
                  (i32.store (i32.load (i32.const 2000)) (i32.const 8192)) \
                  (i32.store (i32.add (i32.load (i32.const 2000)) (i32.const 4)) (i32.const 50000)) \
                  (i32.store (i32.const 2000) (i32.add (i32.load (i32.const 2000)) (i32.const 8))) \
                  (br_if $iovs (i32.lt_u (i32.load (i32.const 2000)) (i32.const 4600))))) \
                (drop (call $fd_write (i32.const 1) (i32.const 3000) (i32.const 200) (i32.const 2000))) \
                (i32.ne (i32.load (i32.const 2000)) (i32.const 10000000))";
    let started = std::time::Instant::now();
    let (found, h) = statuses("0_2_1", BUMP, &[call]);
    assert_eq!(found, vec![0], "fd_write reports every byte written");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let logs = h.logs();
    assert!(logs.len() <= 260, "{} log lines", logs.len());
    assert!(logs.iter().all(|line| !line.is_empty()));
    assert!(logs.iter().any(|line| line.contains("bytes of stdout/stderr output dropped")), "{logs:?}");
}
