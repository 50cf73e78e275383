//! Where the builds under test are.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Which nginx the module was built for: `debian` (default), `1.28` or `1.28-asan`.
fn flavor() -> String {
    std::env::var("INWASM_NGINX").unwrap_or_else(|_| "debian".into())
}

/// Whether nginx and the module under test are built with AddressSanitizer, whose shadow
/// memory and quarantine make a process's RSS say nothing about the module.
pub fn under_asan() -> bool {
    flavor().ends_with("-asan")
}

/// The nginx under test: Debian's by default, or the nginx 1.28 build.
pub fn nginx_binary() -> PathBuf {
    match flavor().as_str() {
        "debian" => PathBuf::from("/usr/sbin/nginx"),
        built => root().join(format!("target/nginx/{built}/objs/nginx")),
    }
}

pub fn module_path() -> PathBuf {
    let name = match flavor().as_str() {
        "debian" => "ngx_http_inwasm_module.so".to_string(),
        built => format!("ngx_http_inwasm_module-{built}.so"),
    };
    let path = root().join("build").join(name);
    assert!(path.exists(), "{} is missing: run `make build`", path.display());
    path
}

pub fn filter(name: &str) -> String {
    let path = root().join(format!("build/filters/filter_{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make build`", path.display());
    path.display().to_string()
}

/// A fresh directory for one server's configuration and logs.
pub fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "inwasm-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Envoy 1.40 as the setup installs it.
pub fn envoy_binary() -> PathBuf {
    let path = root().join("target/envoy/envoy");
    assert!(path.exists(), "{} is missing: run `make setup`", path.display());
    path
}

/// The directory holding the Envoy module (`libinwasm.so`).
pub fn envoy_module_dir() -> PathBuf {
    let dir = root().join("build");
    assert!(dir.join("libinwasm.so").exists(), "build/libinwasm.so is missing: run `make build`");
    dir
}

/// Modules that must fail to load, for the tests of configuration errors: a file that is not
/// wasm, and a filter whose `proxy_on_configure` refuses every configuration.
pub struct BadModules {
    pub dir: PathBuf,
    pub not_wasm: PathBuf,
    pub refuser: PathBuf,
}

impl BadModules {
    /// Writes them to a fresh scratch directory (removed with the value).
    pub fn in_scratch_dir() -> BadModules {
        let dir = scratch_dir();
        let not_wasm = dir.join("not-wasm.wasm");
        std::fs::write(&not_wasm, "I am not wasm").unwrap();
        let refuser = dir.join("refuser.wat");
        std::fs::write(
            &refuser,
            r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
           (func (export "malloc") (param i32) (result i32) (i32.const 8))
           (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0)))"#,
        )
        .unwrap();
        BadModules { dir, not_wasm, refuser }
    }
}

impl Drop for BadModules {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A module written as WebAssembly text to a fresh scratch directory (removed with the value),
/// for tests whose filter is a few lines of its own.
pub struct WatModule {
    dir: PathBuf,
    pub path: PathBuf,
}

impl WatModule {
    /// Writes `text` to `NAME.wat`.
    pub fn new(name: &str, text: &str) -> WatModule {
        let dir = scratch_dir();
        let path = dir.join(format!("{name}.wat"));
        std::fs::write(&path, text).unwrap();
        WatModule { dir, path }
    }
}

impl WatModule {
    /// Filter `grower`, whose memory grows by a page at each request: its instances cannot be
    /// reset for another request.
    pub fn growing_filter() -> WatModule {
        WatModule::new(
            "grower",
            r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
               (func (export "malloc") (param i32) (result i32) (i32.const 8))
               (func (export "proxy_on_context_create") (param i32 i32))
               (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
               (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (drop (memory.grow (i32.const 1))) (i32.const 0)))"#,
        )
    }
}

impl Drop for WatModule {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A proxy-wasm module that does nothing, in the binary format, with `functions` functions
/// in its table (as upstream Go builds have) and a table of `elements`: large modules for tests.
pub fn large_module(functions: usize, elements: usize) -> Vec<u8> {
    let bodies: String = (0..functions)
        .map(|i| {
            format!("(func $f{i} (result i32) (i32.add (i32.const {i}) (i32.mul (i32.const 3) (i32.const {i}))))\n")
        })
        .collect();
    let names: String = (0..functions).map(|i| format!("$f{i} ")).collect();
    let text = format!(
        r#"(module
  (memory (export "memory") 1)
  (table {elements} funcref)
  (elem (i32.const 0) func {names})
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  {bodies})"#
    );
    wat::parse_str(text).expect("a valid module")
}
