//! Host micro-benchmarks, measured side by side in one run (A B A B ...), since absolute
//! numbers drift on shared machines: a whole request through a one-header filter with and
//! without epoch interruption (the mechanism behind deadlines), and instantiation per request
//! with the pooling allocator and without.
//!
//! Run with `make bench` (filters must be built: `make filters`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use inwasm_host::testing::{pairs, Exchange, MemoryEmbedding, Node};
use inwasm_host::*;

const ROUNDS: usize = 5;
const REQUESTS: usize = 20_000;
const INSTANCES: usize = 2_000;

fn filter(engine: &Engine) -> Arc<Module> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../build/filters/filter_headers.wasm");
    Module::from_file(engine, path.as_ref(), None).unwrap_or_else(|e| panic!("{e} (run `make filters`)"))
}

/// Average time of one request (stream, request headers, response headers, end) on one VM.
fn request_cost(module: &Arc<Module>) -> Duration {
    let node = Node::default();
    let mut vm = Vm::new(module.clone(), VmConfig::default()).unwrap();
    let plugin = vm
        .add_plugin(PluginConfig { name: "bench".into(), ..Default::default() }, MemoryEmbedding::root(&node))
        .unwrap();
    let headers = pairs(&[(":method", "GET"), (":path", "/"), (":authority", "bench"), ("user-agent", "bench")]);
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let exchange = Exchange::default();
        exchange.borrow_mut().request_headers = headers.clone();
        let stream = vm.new_stream(plugin, MemoryEmbedding::stream(&node, &exchange)).unwrap();
        vm.on_request_headers(stream, true).unwrap();
        exchange.borrow_mut().response_headers = pairs(&[(":status", "200")]);
        vm.on_response_headers(stream, true).unwrap();
        vm.finish_stream(stream).unwrap();
    }
    node.borrow_mut().logs.clear();
    started.elapsed() / REQUESTS as u32
}

/// Average time to create a VM and start the filter on it (isolation per request).
fn instantiation_cost(module: &Arc<Module>) -> Duration {
    let node = Node::default();
    let started = Instant::now();
    for _ in 0..INSTANCES {
        let mut vm = Vm::new(module.clone(), VmConfig::default()).unwrap();
        vm.add_plugin(PluginConfig::default(), MemoryEmbedding::root(&node)).unwrap();
    }
    started.elapsed() / INSTANCES as u32
}

fn best(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[0]
}

fn compare(title: &str, a: (&str, &Arc<Module>), b: (&str, &Arc<Module>), cost: fn(&Arc<Module>) -> Duration) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        first.push(cost(a.1));
        second.push(cost(b.1));
    }
    let (x, y) = (best(&mut first), best(&mut second));
    println!(
        "| {title} | {}: {:.2} us | {}: {:.2} us | {:.3} |",
        a.0,
        micros(x),
        b.0,
        micros(y),
        micros(y) / micros(x)
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let engine = |deadlines: bool, pooling: bool| {
        let config = EngineConfig { deadlines, pooling: pooling.then(PoolingConfig::default) };
        Engine::new(config).unwrap()
    };
    let with_epochs = engine(true, true);
    let _ticker = EpochTicker::start(&with_epochs, Duration::from_millis(1)).unwrap();
    let without_epochs = engine(false, true);
    let on_demand = engine(true, false);
    let (epochs, plain, unpooled) = (filter(&with_epochs), filter(&without_epochs), filter(&on_demand));

    println!("best of {ROUNDS} alternating rounds\n");
    println!("| measure | A | B | B / A |");
    println!("|---|---|---|---|");
    compare("one request, one-header filter", ("no epochs", &plain), ("epoch deadlines", &epochs), request_cost);
    compare("new instance + on_configure", ("pooling", &epochs), ("on demand", &unpooled), instantiation_cost);
}
