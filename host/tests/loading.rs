//! Compile-time vetting and the compiled-code cache.

mod common;

use common::*;
use inwasm_host::*;

fn load_error(bytes: &[u8]) -> String {
    match Module::new(engine(), "tenant.wasm", bytes, None) {
        Ok(_) => panic!("module accepted"),
        Err(error) => error.to_string(),
    }
}

const MINIMAL: &str = r#"(module
  IMPORTS
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) CONFIGURE))"#;

fn minimal(imports: &str, configure: &str) -> String {
    MINIMAL.replace("IMPORTS", imports).replace("CONFIGURE", configure)
}

#[test]
fn text_that_is_not_wasm_is_refused() {
    let error = load_error(b"hello, I am a text file");
    assert_eq!(error, "wasm module \"tenant.wasm\": not a WebAssembly module (no \\0asm magic and not text format)");
}

#[test]
fn corrupt_binary_is_refused_with_wasmtime_reason() {
    let error = load_error(b"\0asm\x01\0\0\0\x01\xff\xff");
    assert!(error.starts_with("wasm module \"tenant.wasm\": invalid WebAssembly:"), "{error}");
}

#[test]
fn module_without_abi_marker_is_refused() {
    let error = load_error(br#"(module (memory (export "memory") 1))"#);
    assert!(error.contains("not a proxy-wasm filter: no proxy_abi_version_0_1_0, _0_2_0 or _0_2_1 export"), "{error}");
}

#[test]
fn module_without_allocator_is_refused() {
    let error = load_error(br#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_0")))"#);
    assert!(error.contains("exports no allocator (proxy_on_memory_allocate or malloc)"), "{error}");
}

#[test]
fn unknown_import_is_named() {
    let text = minimal(r#"(import "env" "proxy_teleport" (func (param i32)))"#, "(i32.const 1)");
    let error = load_error(text.as_bytes());
    assert!(error.contains("imports function env.proxy_teleport, which this host does not provide"), "{error}");
}

#[test]
fn import_with_wrong_signature_is_refused() {
    let text = minimal(r#"(import "env" "proxy_log" (func (param i64)))"#, "(i32.const 1)");
    let error = load_error(text.as_bytes());
    assert!(error.contains("proxy_log"), "{error}");
}

#[test]
fn old_wasi_namespace_links() {
    let text =
        minimal(r#"(import "wasi_unstable" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#, "(i32.const 1)");
    Module::new(engine(), "old-wasi", text.as_bytes(), None).unwrap();
}

#[test]
fn every_built_filter_loads_with_its_sdks_abi() {
    for entry in std::fs::read_dir(filters_dir()).expect("filters built") {
        let path = entry.unwrap().path();
        let module = Module::from_file(engine(), &path, None).unwrap_or_else(|e| panic!("{e}"));
        // The Rust SDK 0.2.5 marks 0.2.1; AssemblyScript's @solo-io/proxy-runtime 0.1.8, 0.2.0.
        let expected =
            if path.to_string_lossy().contains("assemblyscript") { AbiVersion::V0_2_0 } else { AbiVersion::V0_2_1 };
        assert_eq!(module.abi_version(), expected, "{}", path.display());
    }
}

#[test]
fn missing_file_names_the_path() {
    let error = Module::from_file(engine(), std::path::Path::new("/nonexistent/f.wasm"), None).err().unwrap();
    assert!(error.to_string().starts_with("wasm module \"/nonexistent/f.wasm\": cannot read:"), "{error}");
}

#[test]
fn refused_configuration_is_reported() {
    let module = wat("refuser", &minimal("", "(i32.const 0)"));
    let error = Harness::try_new(module, "", VmConfig::default()).err().expect("refused");
    assert_eq!(error.kind, FailureKind::Refused);
    assert_eq!(error.to_string(), "filter \"test\" rejected its configuration (proxy_on_configure returned false)");
}

#[test]
fn trap_during_start_is_reported_with_the_export() {
    let text =
        minimal("", "(i32.const 1)").replacen("(memory", "(func (export \"_initialize\") unreachable) (memory", 1);
    let error = Vm::new(wat("bad-start", &text), VmConfig::default()).err().expect("start trap");
    assert_eq!(error.callback, "_initialize");
    assert!(matches!(error.kind, FailureKind::Trap(_)));
}

#[test]
fn initial_memory_beyond_the_limit_cannot_instantiate() {
    let text =
        minimal("", "(i32.const 1)").replace("(memory (export \"memory\") 1)", "(memory (export \"memory\") 100)");
    let config = VmConfig { memory_limit: 1 << 20, ..VmConfig::default() };
    let error = Vm::new(wat("fat", &text), config).err().expect("too big");
    assert!(matches!(error.kind, FailureKind::Instantiation(_)), "{error}");
}

#[test]
fn code_cache_hits_and_replaces_corrupt_entries() {
    let dir = std::env::temp_dir().join(format!("inwasm-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = CodeCache::new(&dir);
    let bytes = std::fs::read(filters_dir().join("filter_headers.wasm")).unwrap();
    let load = || Module::new(engine(), "headers", &bytes, Some(&cache)).unwrap();
    assert_eq!(load().cache_outcome(), &CacheOutcome::Miss);
    assert_eq!(load().cache_outcome(), &CacheOutcome::Hit);

    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .unwrap();
    let mut corrupted = std::fs::read(&entry).unwrap();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0xff;
    std::fs::write(&entry, &corrupted).unwrap();
    let module = load();
    assert_eq!(module.cache_outcome(), &CacheOutcome::Replaced("checksum mismatch".into()));
    assert_eq!(load().cache_outcome(), &CacheOutcome::Hit);

    // The module from the cache works.
    let mut h = Harness::new(module, "from-cache");
    let (stream, exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(stream, true).unwrap();
    assert_eq!(request_header(&exchange, "x-inwasm-config").as_deref(), Some("from-cache"));

    // Another engine configuration never reads this engine's entries.
    let other = Engine::new(EngineConfig { deadlines: false, pooling: None, ..EngineConfig::default() }).unwrap();
    let module = Module::new(&other, "headers", &bytes, Some(&cache)).unwrap();
    assert_eq!(module.cache_outcome(), &CacheOutcome::Miss);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn many_vms_share_one_module() {
    let module = filter("headers");
    let mut harnesses: Vec<Harness> = (0..20).map(|i| Harness::new(module.clone(), &format!("vm{i}"))).collect();
    for (i, h) in harnesses.iter_mut().enumerate() {
        let (stream, exchange) = h.stream(&get_request_headers());
        h.vm.on_request_headers(stream, true).unwrap();
        assert_eq!(request_header(&exchange, "x-inwasm-config"), Some(format!("vm{i}")));
    }
}

#[test]
fn spinning_configure_is_cut_at_the_start_budget() {
    let module = wat("spinner", &minimal("", "(loop (br 0)) (i32.const 1)"));
    let config = VmConfig { start_timeout: Some(std::time::Duration::from_millis(30)), ..VmConfig::default() };
    let started = std::time::Instant::now();
    let error = Harness::try_new(module, "", config).err().expect("cut");
    assert_eq!(error.kind, FailureKind::Deadline(std::time::Duration::from_millis(30)));
    assert_eq!(error.callback, "proxy_on_configure");
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
}

#[test]
fn a_full_instance_pool_is_told_apart_and_a_released_slot_is_reused() {
    let pooling = PoolingConfig { max_instances: 2, ..PoolingConfig::default() };
    let small =
        Engine::new(EngineConfig { deadlines: false, pooling: Some(pooling), ..EngineConfig::default() }).unwrap();
    let module = Module::new(&small, "tiny", minimal("", "(i32.const 1)").as_bytes(), None).unwrap();
    let first = Vm::new(module.clone(), VmConfig::default()).unwrap();
    let _second = Vm::new(module.clone(), VmConfig::default()).unwrap();
    let error = Vm::new(module.clone(), VmConfig::default()).err().expect("the pool is full");
    assert!(matches!(error.kind, FailureKind::NoFreeSlot(_)), "{error}");
    assert!(error.to_string().contains("every instance slot of this process is in use"), "{error}");
    drop(first);
    Vm::new(module, VmConfig::default()).expect("a released slot is taken again");
}

#[test]
fn work_in_flight_is_an_open_stream_or_a_pending_call() {
    let mut h = Harness::new(filter("headers"), "");
    assert!(!h.vm.has_work_in_flight());
    let (stream, _exchange) = h.stream(&get_request_headers());
    assert!(h.vm.has_work_in_flight());
    h.vm.finish_stream(stream).unwrap();
    assert!(!h.vm.has_work_in_flight());
}
