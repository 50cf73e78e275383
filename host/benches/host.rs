//! Host micro-benchmarks, each measured side by side with its alternative in one run (A B A B
//! ..., best of the rounds), since absolute numbers drift on shared machines:
//!
//! - a whole request through the one-header filter (stream, request and response headers,
//!   response body, end), with and without epoch interruption (what deadlines cost), and
//!   against the typical filter (the floor under its rows in the HTTP benchmark);
//! - a 16 KB form through the heavy filter (CPU-bound body inspection), with and without
//!   epoch interruption (what deadlines cost code that is all loops and calls);
//! - instantiation per request: a fresh instance with the pooling allocator (copy-on-write
//!   memory images) and without, alone, with its root context started, and with a request;
//! - one callback round trip, and host calls: header get and set, property get.
//!
//! Run with `make bench` (which writes the table to docs/benchmarks), or
//! `cargo bench -p inwasm-host --bench host` once `make filters` has built the filters. To
//! profile one measure, name it: `... --bench host -- request|typical|instance|reset|callback` runs just
//! that one for a while (under `perf record`, say).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inwasm_host::testing::{pairs, Exchange, MemoryEmbedding, Node};
use inwasm_host::*;

const ROUNDS: usize = 7;

/// A filter `make filters` built (`build/filters/NAME.wasm`).
fn built_filter(engine: &Engine, name: &str) -> Arc<Module> {
    let path = format!("{}/../build/filters/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
    Module::from_file(engine, path.as_ref(), None).unwrap_or_else(|e| panic!("{e} (run `make filters`)"))
}

/// A module whose `proxy_on_request_headers` makes `CALLS` host calls of one kind (`body`,
/// a WAT instruction sequence leaving nothing on the stack), so their cost shows per call.
fn host_calls(engine: &Engine, body: &str) -> Arc<Module> {
    let text = format!(
        r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $property (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 100) ":path")
  (data (i32.const 120) "x-bench")
  (data (i32.const 140) "request\00path")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32)
    ;; A bump allocator that starts over each time it passes 32 KiB.
    (if (i32.gt_u (global.get $heap) (i32.const 32768)) (then (global.set $heap (i32.const 4096))))
    (global.get $heap) (global.set $heap (i32.add (global.get $heap) (local.get $n))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (loop $again
      {body}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {CALLS}))))
    (i32.const 0)))"#
    );
    Module::new(engine, "bench", text.as_bytes(), None).unwrap()
}

/// A module whose `proxy_on_request_headers` returns at once: a callback round trip alone.
fn empty_callback(engine: &Engine) -> Arc<Module> {
    let text = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;
    Module::new(engine, "bench", text.as_bytes(), None).unwrap()
}

const CALLS: usize = 100;
const NO_OP: &str = "";
const GET_HEADER: &str = "(drop (call $get (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 64) (i32.const 68)))";
const SET_HEADER: &str = "(drop (call $set (i32.const 0) (i32.const 120) (i32.const 7) (i32.const 100) (i32.const 5)))";
const GET_PROPERTY: &str = "(drop (call $property (i32.const 140) (i32.const 12) (i32.const 64) (i32.const 68)))";

fn request_headers() -> Pairs {
    pairs(&[(":method", "GET"), (":path", "/bench"), (":authority", "bench"), ("user-agent", "bench")])
}

/// A VM of `module` with one plugin, and its node.
fn started(module: &Arc<Module>) -> (Vm, PluginId, Node) {
    let node = Node::default();
    node.borrow_mut().properties.insert("request.path".into(), b"/bench".to_vec());
    let mut vm = Vm::new(module.clone(), VmConfig::default()).unwrap();
    let plugin = vm
        .add_plugin(PluginConfig { name: "bench".into(), ..Default::default() }, MemoryEmbedding::root(&node))
        .unwrap();
    (vm, plugin, node)
}

/// One whole request on `vm`: stream, request headers, response headers and body, end.
fn request(vm: &mut Vm, plugin: PluginId, node: &Node) {
    let exchange = Exchange::default();
    exchange.borrow_mut().request_headers = request_headers();
    let stream = vm.new_stream(plugin, MemoryEmbedding::stream(node, &exchange), StreamLimits::default()).unwrap();
    vm.on_request_headers(stream, true).unwrap();
    {
        let mut e = exchange.borrow_mut();
        e.response_headers = pairs(&[(":status", "200"), ("content-length", "6")]);
        e.response_body = b"hello\n".to_vec();
    }
    vm.on_response_headers(stream, false).unwrap();
    vm.on_response_body(stream, 6, true).unwrap();
    vm.finish_stream(stream).unwrap();
}

/// A benign 16 KB form through the heavy filter: its body normalized and every rule run over it.
fn inspection_cost(vm: &mut Vm, plugin: PluginId, node: &Node) -> Duration {
    let body = format!("user=alice&comment={}", "the+quick+brown+fox+jumps+over+the+lazy+dog+".repeat(370));
    per_run(50, || {
        let exchange = Exchange::default();
        {
            let mut e = exchange.borrow_mut();
            e.request_headers = pairs(&[(":method", "POST"), (":path", "/form"), (":authority", "bench")]);
            e.request_body = body.clone().into_bytes();
        }
        let limits = StreamLimits { timeout: Some(Duration::from_secs(5)), ..StreamLimits::default() };
        let stream = vm.new_stream(plugin, MemoryEmbedding::stream(node, &exchange), limits).unwrap();
        vm.on_request_headers(stream, false).unwrap();
        assert_eq!(vm.on_request_body(stream, body.len(), true).unwrap(), Action::Continue);
        vm.finish_stream(stream).unwrap();
    })
}

/// Average time of `f` over `n` runs.
fn per_run(n: usize, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n as u32
}

fn request_cost(module: &Arc<Module>) -> Duration {
    let (mut vm, plugin, node) = started(module);
    per_run(20_000, || request(&mut vm, plugin, &node))
}

fn instantiation_cost(module: &Arc<Module>) -> Duration {
    per_run(2_000, || drop(Vm::new(module.clone(), VmConfig::default()).unwrap()))
}

fn started_instance_cost(module: &Arc<Module>) -> Duration {
    per_run(2_000, || drop(started(module)))
}

fn fresh_request_cost(module: &Arc<Module>) -> Duration {
    per_run(2_000, || {
        let (mut vm, plugin, node) = started(module);
        request(&mut vm, plugin, &node);
    })
}

/// A request on a VM returned to its state after start-up (isolation stream with reset
/// instances), the reset included.
fn reset_request_cost(module: &Arc<Module>) -> Duration {
    let (mut vm, plugin, node) = started(module);
    vm.keep_reset_point().unwrap();
    per_run(20_000, || {
        request(&mut vm, plugin, &node);
        vm.reset().unwrap();
    })
}

/// One `on_request_headers` on a live stream: a callback round trip plus what it does.
fn callback_cost(module: &Arc<Module>) -> Duration {
    let (mut vm, plugin, node) = started(module);
    let exchange = Exchange::default();
    exchange.borrow_mut().request_headers = request_headers();
    let stream = vm.new_stream(plugin, MemoryEmbedding::stream(&node, &exchange), StreamLimits::default()).unwrap();
    per_run(20_000, || {
        vm.on_request_headers(stream, true).unwrap();
    })
}

/// One host call, from a loop of `CALLS`, less the callback around them.
fn host_call_cost(module: &Arc<Module>, empty: &Arc<Module>) -> Duration {
    callback_cost(module).saturating_sub(callback_cost(empty)) / CALLS as u32
}

fn best(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[0]
}

/// Measures `a` and `b` in alternating rounds and prints a table row with the best of each.
fn compare(title: &str, a: (&str, &dyn Fn() -> Duration), b: (&str, &dyn Fn() -> Duration)) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        first.push((a.1)());
        second.push((b.1)());
    }
    let (x, y) = (micros(best(&mut first)), micros(best(&mut second)));
    println!("| {title} | {}: {x:.2} us | {}: {y:.2} us | {:.2} |", a.0, b.0, y / x);
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs one measure for about ten seconds, for a profiler.
fn profile(which: &str, filter: &Arc<Module>, typical: &Arc<Module>, empty: &Arc<Module>) {
    let run: &dyn Fn() -> Duration = match which {
        "request" => &|| request_cost(filter),
        "typical" => &|| request_cost(typical),
        "instance" => &|| fresh_request_cost(filter),
        "reset" => &|| reset_request_cost(filter),
        "callback" => &|| callback_cost(empty),
        other => panic!("unknown measure {other:?}: use request, typical, instance, reset or callback"),
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        run();
    }
}

fn main() {
    let engine = |deadlines: bool, pooling: bool| {
        let config =
            EngineConfig { deadlines, pooling: pooling.then(PoolingConfig::default), ..EngineConfig::default() };
        Engine::new(config).unwrap()
    };
    let epochs = engine(true, true);
    let _ticker = EpochTicker::start(&epochs, Duration::from_millis(1)).unwrap();
    let plain = engine(false, true);
    let on_demand = engine(true, false);
    let one_header = |engine: &Engine| built_filter(engine, "filter_one_header");
    let (filter, filter_plain, filter_on_demand) = (one_header(&epochs), one_header(&plain), one_header(&on_demand));
    let typical = built_filter(&epochs, "filter_typical");
    let calls = |engine: &Engine| [NO_OP, GET_HEADER, SET_HEADER, GET_PROPERTY].map(|body| host_calls(engine, body));
    let (with_epochs, without_epochs) = (calls(&epochs), calls(&plain));
    let (empty, empty_plain) = (empty_callback(&epochs), empty_callback(&plain));

    let heavy_started = |engine: &Engine| {
        let mut vm = Vm::new(
            built_filter(engine, "filter_heavy"),
            VmConfig { start_timeout: Some(Duration::from_secs(30)), ..VmConfig::default() },
        )
        .unwrap();
        let node = Node::default();
        let plugin = vm
            .add_plugin(PluginConfig { name: "heavy".into(), ..Default::default() }, MemoryEmbedding::root(&node))
            .unwrap();
        (RefCell::new(vm), plugin, node)
    };
    let (heavy_vm, heavy_plugin, heavy_node) = heavy_started(&epochs);
    let (heavy_plain_vm, heavy_plain_plugin, heavy_plain_node) = heavy_started(&plain);

    if let Some(which) = std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        return profile(&which, &filter, &typical, &empty);
    }
    println!("Best of {ROUNDS} alternating rounds; the one-header filter is the Rust SDK's (proxy-wasm 0.2.5).\n");
    println!("| measure | A | B | B / A |");
    println!("|---|---|---|---|");
    compare(
        "one request through the one-header filter",
        ("without epochs", &|| request_cost(&filter_plain)),
        ("with epoch deadlines", &|| request_cost(&filter)),
    );
    compare(
        "one request, the one-header filter against the typical filter",
        ("one-header", &|| request_cost(&filter)),
        ("typical", &|| request_cost(&typical)),
    );
    compare(
        "a 16 KB form through the heavy filter (every rule over the body)",
        ("without epochs", &|| {
            inspection_cost(&mut heavy_plain_vm.borrow_mut(), heavy_plain_plugin, &heavy_plain_node)
        }),
        ("with epoch deadlines", &|| inspection_cost(&mut heavy_vm.borrow_mut(), heavy_plugin, &heavy_node)),
    );
    compare(
        "fresh instance (instantiate, `_initialize`)",
        ("pooling", &|| instantiation_cost(&filter)),
        ("on demand", &|| instantiation_cost(&filter_on_demand)),
    );
    compare(
        "fresh instance and its root context (`on_vm_start`, `on_configure`)",
        ("pooling", &|| started_instance_cost(&filter)),
        ("on demand", &|| started_instance_cost(&filter_on_demand)),
    );
    compare(
        "fresh instance per request (isolation stream), whole request",
        ("pooling", &|| fresh_request_cost(&filter)),
        ("on demand", &|| fresh_request_cost(&filter_on_demand)),
    );
    compare(
        "a request with isolation stream (a VM of its own, as after start-up)",
        ("fresh instance", &|| fresh_request_cost(&filter)),
        ("reset instance", &|| reset_request_cost(&filter)),
    );
    compare(
        "one callback round trip (`on_request_headers` doing nothing)",
        ("without epochs", &|| callback_cost(&empty_plain)),
        ("with epoch deadlines", &|| callback_cost(&empty)),
    );
    for (index, name) in
        [(1, "host call: get a header"), (2, "host call: set a header"), (3, "host call: get a property")]
    {
        compare(
            name,
            ("without epochs", &|| host_call_cost(&without_epochs[index], &without_epochs[0])),
            ("with epoch deadlines", &|| host_call_cost(&with_epochs[index], &with_epochs[0])),
        );
    }
}
