//! Test harness: one engine per test process (with its epoch ticker), SDK-built filters from
//! `build/filters`, and a VM wired to the in-memory embedding.
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use inwasm_host::testing::{pairs, Exchange, ExchangeState, MemoryEmbedding, Node};
use inwasm_host::*;

pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let engine = Engine::new(EngineConfig::default()).expect("engine");
        // Deadlines need the epoch to advance; the ticker lives as long as the test process.
        std::mem::forget(EpochTicker::start(&engine, Duration::from_millis(1)).expect("ticker"));
        engine
    })
}

/// The SDK-built test filter `name` (from `host/tests/filters/<name>`), compiled once.
pub fn filter(name: &str) -> Arc<Module> {
    static MODULES: OnceLock<Mutex<HashMap<String, Arc<Module>>>> = OnceLock::new();
    let modules = MODULES.get_or_init(Default::default);
    if let Some(module) = modules.lock().unwrap().get(name) {
        return module.clone();
    }
    let path = filters_dir().join(format!("filter_{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make filters` (ci/build-filters.sh) first", path.display());
    let module = Module::from_file(engine(), &path, None).unwrap_or_else(|e| panic!("{e}"));
    modules.lock().unwrap().insert(name.to_string(), module.clone());
    module
}

pub fn filters_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/filters")
}

/// A module from WebAssembly text.
pub fn wat(name: &str, text: &str) -> Arc<Module> {
    Module::new(engine(), name, text.as_bytes(), None).unwrap_or_else(|e| panic!("{e}"))
}

/// A VM running one plugin over the in-memory proxy.
pub struct Harness {
    pub node: Node,
    pub vm: Vm,
    pub plugin: PluginId,
}

impl Harness {
    pub fn new(module: Arc<Module>, configuration: &str) -> Harness {
        Harness::with_config(module, configuration, VmConfig::default())
    }

    pub fn with_config(module: Arc<Module>, configuration: &str, vm_config: VmConfig) -> Harness {
        Harness::try_new(module, configuration, vm_config).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_new(module: Arc<Module>, configuration: &str, vm_config: VmConfig) -> Result<Harness, FilterError> {
        let node = Node::default();
        let mut vm = Vm::new(module, vm_config)?;
        let plugin = vm.add_plugin(plugin_config("test", configuration), MemoryEmbedding::root(&node))?;
        Ok(Harness { node, vm, plugin })
    }

    /// Starts a stream for a request with these headers.
    pub fn stream(&mut self, headers: &[(&str, &str)]) -> (StreamId, Exchange) {
        let exchange = Exchange::default();
        exchange.borrow_mut().request_headers = pairs(headers);
        let stream = self
            .vm
            .new_stream(self.plugin, MemoryEmbedding::stream(&self.node, &exchange), StreamLimits::default())
            .expect("stream");
        (stream, exchange)
    }

    pub fn logs(&self) -> Vec<String> {
        self.node.borrow().log_lines()
    }
}

pub fn plugin_config(name: &str, configuration: &str) -> PluginConfig {
    PluginConfig {
        name: name.into(),
        root_id: String::new(),
        configuration: configuration.as_bytes().to_vec(),
        timeout: None,
    }
}

pub fn get_request_headers() -> Vec<(&'static str, &'static str)> {
    vec![(":method", "GET"), (":path", "/hello"), (":authority", "example.com"), (":scheme", "http")]
}

/// The value of `key` in string form, if present.
pub fn header(pairs: &Pairs, key: &str) -> Option<String> {
    pairs.first_value(key.as_bytes()).map(|v| String::from_utf8(v.to_vec()).unwrap())
}

pub fn request_header(exchange: &Exchange, key: &str) -> Option<String> {
    header(&exchange.borrow().request_headers, key)
}

pub fn response_header(exchange: &Exchange, key: &str) -> Option<String> {
    header(&exchange.borrow().response_headers, key)
}

pub fn set_response(exchange: &Exchange, headers: &[(&str, &str)], body: &[u8]) {
    let mut state: std::cell::RefMut<'_, ExchangeState> = exchange.borrow_mut();
    state.response_headers = pairs(headers);
    state.response_body = body.to_vec();
}
