//! Deadlines, memory caps, traps and panics: each fails only the call, and the instance is
//! rebuilt (root context re-configured) for the next stream.

mod common;

use std::time::{Duration, Instant};

use common::*;
use inwasm_host::*;

fn misbehaving(mode: &str, vm_config: VmConfig) -> (Harness, Result<Action, FilterError>) {
    let mut h = Harness::with_config(filter("misbehave"), "ok", vm_config);
    let mut headers = get_request_headers();
    headers.push(("x-misbehave", mode));
    let (stream, _) = h.stream(&headers);
    let result = h.vm.on_request_headers(stream, true);
    (h, result)
}

/// After a failure the next stream runs normally on a rebuilt instance.
fn assert_recovers(h: &mut Harness) {
    let (stream, exchange) = h.stream(&get_request_headers());
    assert_eq!(h.vm.on_request_headers(stream, true).unwrap(), Action::Continue);
    assert_eq!(request_header(&exchange, "x-misbehave-ok").as_deref(), Some("1"));
    assert_eq!(request_header(&exchange, "x-misbehave-config").as_deref(), Some("ok"), "root context reconfigured");
    assert_eq!(h.vm.stats().instances_created, 2);
}

#[test]
fn spinning_filter_is_cut_at_its_deadline() {
    let timeout = Duration::from_millis(50);
    let started = Instant::now();
    let (mut h, result) = misbehaving("spin", VmConfig { timeout: Some(timeout), ..VmConfig::default() });
    let elapsed = started.elapsed();
    let error = result.unwrap_err();
    assert_eq!(error.kind, FailureKind::Deadline(timeout));
    assert_eq!(error.callback, "proxy_on_request_headers");
    assert_eq!(error.to_string(), "filter \"test\" exceeded its deadline of 50 ms in proxy_on_request_headers");
    assert!(elapsed >= timeout, "cut early: {elapsed:?}");
    assert!(elapsed < timeout * 5, "cut late: {elapsed:?}");
    assert_eq!(h.vm.stats().timeouts, 1);
    assert_recovers(&mut h);
}

#[test]
fn plugin_timeout_overrides_vm_timeout() {
    let mut h = Harness::new(filter("misbehave"), "ok");
    let short = PluginConfig { timeout: Some(Duration::from_millis(20)), ..plugin_config("short", "spin") };
    let plugin = h.vm.add_plugin(short, testing::MemoryEmbedding::root(&h.node)).unwrap();
    let exchange = testing::Exchange::default();
    let stream =
        h.vm.new_stream(plugin, testing::MemoryEmbedding::stream(&h.node, &exchange), StreamLimits::default()).unwrap();
    let error = h.vm.on_request_headers(stream, true).unwrap_err();
    assert_eq!((error.filter.as_str(), error.kind), ("short", FailureKind::Deadline(Duration::from_millis(20))));
}

#[test]
fn memory_hog_hits_the_limit() {
    let limit = 24 << 20;
    // No deadline: a test of the memory limit must not race one, however busy the machine.
    let config = VmConfig { memory_limit: limit, timeout: None, ..VmConfig::default() };
    let (mut h, result) = misbehaving("hog", config);
    let error = result.unwrap_err();
    assert_eq!(error.kind, FailureKind::MemoryLimit(limit));
    assert!(error.is_memory_limit());
    assert_eq!(h.vm.stats().memory_failures, 1);
    assert!(h.logs().iter().any(|l| l.contains("memory allocation of 1048576 bytes failed")), "{:?}", h.logs());
    assert_recovers(&mut h);
}

#[test]
fn panic_is_a_trap_with_the_filters_message() {
    let (mut h, result) = misbehaving("panic", VmConfig::default());
    let FailureKind::Trap(message) = result.unwrap_err().kind else { panic!("expected a trap") };
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains("proxy_on_request_headers"), "backtrace names the callback: {message}");
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(h.logs().iter().any(|l| l.contains("misbehave: panic requested")), "{:?}", h.logs());
    assert_eq!(h.vm.stats().traps, 1);
    assert_recovers(&mut h);
}

#[test]
fn runaway_recursion_traps() {
    let (mut h, result) = misbehaving("recurse", VmConfig::default());
    assert!(matches!(result.unwrap_err().kind, FailureKind::Trap(_)));
    assert_recovers(&mut h);
}

#[test]
fn failure_in_response_phase_is_reported_there() {
    let mut h = Harness::new(filter("misbehave"), "ok");
    let mut headers = get_request_headers();
    headers.extend([("x-misbehave", "panic"), ("x-misbehave-at", "response")]);
    let (stream, _) = h.stream(&headers);
    assert_eq!(h.vm.on_request_headers(stream, true).unwrap(), Action::Continue);
    let error = h.vm.on_response_headers(stream, true).unwrap_err();
    assert_eq!(error.callback, "proxy_on_response_headers");
}

#[test]
fn streams_of_a_failed_instance_are_lost_others_unaffected() {
    let mut h = Harness::new(filter("misbehave"), "ok");
    let (bystander, _) = h.stream(&get_request_headers());
    let mut headers = get_request_headers();
    headers.push(("x-misbehave", "panic"));
    let (culprit, _) = h.stream(&headers);
    assert!(h.vm.on_request_headers(culprit, true).is_err());
    let error = h.vm.on_request_headers(bystander, true).unwrap_err();
    assert_eq!(error.kind, FailureKind::InstanceLost);
    h.vm.finish_stream(bystander).unwrap();

    // Another VM of the same module never noticed.
    let mut other = Harness::new(filter("misbehave"), "ok");
    assert_recovers_fresh(&mut other);
}

fn assert_recovers_fresh(h: &mut Harness) {
    let (stream, exchange) = h.stream(&get_request_headers());
    assert_eq!(h.vm.on_request_headers(stream, true).unwrap(), Action::Continue);
    assert_eq!(request_header(&exchange, "x-misbehave-ok").as_deref(), Some("1"));
    assert_eq!(h.vm.stats().instances_created, 1);
}

#[test]
fn stream_timeout_overrides_plugin_timeout() {
    let mut h = Harness::new(filter("misbehave"), "ok");
    let mut headers = get_request_headers();
    headers.push(("x-misbehave", "spin"));
    let exchange = testing::Exchange::default();
    exchange.borrow_mut().request_headers = testing::pairs(&headers);
    let embedding = testing::MemoryEmbedding::stream(&h.node, &exchange);
    let stream =
        h.vm.new_stream(
            h.plugin,
            embedding,
            StreamLimits { timeout: Some(Duration::from_millis(15)), ..StreamLimits::default() },
        )
        .unwrap();
    let started = Instant::now();
    let error = h.vm.on_request_headers(stream, true).unwrap_err();
    assert_eq!(error.kind, FailureKind::Deadline(Duration::from_millis(15)));
    assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
}

/// Polls `condition` for up to two seconds.
fn eventually(condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !condition() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn an_idle_ticker_sleeps_and_wakes_for_the_next_deadline() {
    // The budget outlasts the ticker's 100 idle ticks: the spinning callback itself must
    // keep the ticker awake (were it to sleep, the spin would never be cut).
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let ticker = EpochTicker::start(&engine, Duration::from_millis(1)).unwrap();
    let bytes = std::fs::read(filters_dir().join("filter_misbehave.wasm")).unwrap();
    let module = Module::new(&engine, "misbehave", &bytes, None).unwrap();
    let timeout = Duration::from_millis(250);
    let mut h = Harness::with_config(module, "ok", VmConfig { timeout: Some(timeout), ..VmConfig::default() });
    assert!(eventually(|| ticker.is_sleeping()), "no callback runs: the ticker sleeps");

    let mut headers = get_request_headers();
    headers.push(("x-misbehave", "spin"));
    let (stream, _) = h.stream(&headers);
    assert!(eventually(|| !ticker.is_sleeping()), "a callback woke the ticker");
    let started = Instant::now();
    let error = h.vm.on_request_headers(stream, true).unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(error.kind, FailureKind::Deadline(timeout));
    assert!(elapsed >= timeout && elapsed < timeout * 3, "cut after {elapsed:?}");
    assert!(eventually(|| ticker.is_sleeping()), "idle again, the ticker sleeps again");
    drop(ticker);
}
