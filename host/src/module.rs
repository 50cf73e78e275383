//! Compiling and vetting a module once: the ABI version, the allocator, the memory export
//! and every import are checked here, so a bad filter fails at configuration time with a
//! precise reason, and each later instantiation starts from a pre-linked `InstancePre`.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use wasmtime::{ExternType, InstancePre, Store, ValType};

use crate::cache::{content_digest, CacheOutcome, CodeCache};
use crate::callbacks::CallbackIndex;
use crate::engine::Engine;
use crate::engine::PoolingConfig;
use crate::error::{describe, InstanceLimit, LoadError};
use crate::limits::MemoryLimiter;
use crate::plugin::VmConfig;
use crate::session::HostState;
use crate::snapshot::LastImage;
use crate::types::AbiVersion;

/// Allocator exports, in the order Envoy looks them up.
pub(crate) const ALLOCATORS: [&str; 2] = ["malloc", "proxy_on_memory_allocate"];

/// A compiled, vetted module. Cheap to share; instantiate it with [`Vm`](crate::Vm).
pub struct Module {
    pub(crate) name: String,
    pub(crate) callbacks: CallbackIndex,
    pub(crate) abi: AbiVersion,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) engine: Engine,
    pub(crate) cache: CacheOutcome,
    /// The memory its last reset point held, which the next may share (`snapshot.rs`).
    pub(crate) last_image: LastImage,
}

impl Module {
    /// Compiles `bytes` (binary or text wasm). `name` is used in every message about it.
    pub fn new(engine: &Engine, name: &str, bytes: &[u8], cache: Option<&CodeCache>) -> Result<Arc<Module>, LoadError> {
        Module::with_digest(engine, name, bytes, cache.map(|cache| (cache, content_digest(bytes))))
    }

    /// As [`new`](Module::new), with the cache and the [`content_digest`] of `bytes`, which a
    /// caller that keeps modules by content has made already (hashing is most of what loading
    /// thousands of modules from the cache costs).
    pub fn with_digest(
        engine: &Engine,
        name: &str,
        bytes: &[u8],
        cache: Option<(&CodeCache, [u8; 32])>,
    ) -> Result<Arc<Module>, LoadError> {
        if !bytes.starts_with(b"\0asm") && !looks_like_text(bytes) {
            return Err(LoadError::new(name, "not a WebAssembly module (no \\0asm magic and not text format)"));
        }
        if let Some(pooling) = &engine.config().pooling {
            vet_limits(bytes, pooling).map_err(|(reason, limit)| LoadError { limit: Some(limit), ..LoadError::new(name, reason) })?;
        }
        let compiled = match cache {
            Some((cache, digest)) => cache.load_or_compile(engine.wasmtime(), bytes, &digest),
            None => wasmtime::Module::new(engine.wasmtime(), crate::recycling::prepare(bytes))
                .map(|m| (m, CacheOutcome::Disabled)),
        };
        let (module, cache) = compiled.map_err(|e| LoadError::new(name, format!("invalid WebAssembly: {}", describe(&e))))?;
        let abi = abi_version(&module).ok_or_else(|| {
            LoadError::new(name, "not a proxy-wasm filter: no proxy_abi_version_0_1_0, _0_2_0 or _0_2_1 export")
        })?;
        check_exports(&module).map_err(|reason| LoadError::new(name, reason))?;
        check_imports(engine, &module).map_err(|reason| LoadError::new(name, reason))?;
        let pre = engine.linker().instantiate_pre(&module).map_err(|e| LoadError::new(name, describe(&e)))?;
        let callbacks = CallbackIndex::new(&module);
        let last_image = LastImage::default();
        Ok(Arc::new(Module { name: name.to_string(), callbacks, abi, pre, engine: engine.clone(), cache, last_image }))
    }

    /// Reads and compiles a `.wasm` or `.wat` file; errors name the path.
    pub fn from_file(engine: &Engine, path: &Path, cache: Option<&CodeCache>) -> Result<Arc<Module>, LoadError> {
        let bytes = Module::read_file(path)?;
        Module::new(engine, &path.display().to_string(), &bytes, cache)
    }

    /// The bytes of a module file: a regular file of at most [`MAX_MODULE_FILE`] bytes (a
    /// device or a pipe could be read forever).
    pub fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
        let (file, length) = open_module_file(path)?;
        // Room for one byte more than the file has: read_to_end then never grows the vector.
        let mut bytes = Vec::with_capacity(length as usize + 1);
        let read = file.take(MAX_MODULE_FILE + 1).read_to_end(&mut bytes);
        read.map_err(|e| LoadError::new(&path.display().to_string(), format!("cannot read: {e}")))?;
        // The file may have grown since it was opened.
        check_size(path, bytes.len() as u64)?;
        Ok(bytes)
    }

    /// Checks that `path` can be read as a module file, without reading it (for a caller that
    /// reads it later and wants the error now).
    pub fn check_file(path: &Path) -> Result<(), LoadError> {
        open_module_file(path).map(drop)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn abi_version(&self) -> AbiVersion {
        self.abi
    }

    /// Whether the compiled code came from the cache.
    pub fn cache_outcome(&self) -> &CacheOutcome {
        &self.cache
    }
}

/// `path` opened, and its length, if it is a regular file of at most [`MAX_MODULE_FILE`] bytes.
fn open_module_file(path: &Path) -> Result<(std::fs::File, u64), LoadError> {
    let error = |reason: String| LoadError::new(&path.display().to_string(), reason);
    let file = std::fs::File::open(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let metadata = file.metadata().map_err(|e| error(format!("cannot read: {e}")))?;
    if !metadata.is_file() {
        return Err(error("not a regular file".into()));
    }
    check_size(path, metadata.len())?;
    Ok((file, metadata.len()))
}

/// Refuses a module file of more than [`MAX_MODULE_FILE`] bytes.
fn check_size(path: &Path, size: u64) -> Result<(), LoadError> {
    match size > MAX_MODULE_FILE {
        true => Err(LoadError::new(&path.display().to_string(), format!("larger than {} MiB", MAX_MODULE_FILE >> 20))),
        false => Ok(()),
    }
}

/// The largest module file read (real filters reach tens of MiB: a Go WAF with its rules is
/// about 26 MiB).
pub const MAX_MODULE_FILE: u64 = 256 << 20;

/// Refuses, before the (long) compilation, a binary module no instance of which fits the
/// pool's limits: which limit, and what the module needs. A module wasmparser cannot read
/// is left to wasmtime, whose message is the better one.
fn vet_limits(bytes: &[u8], pooling: &PoolingConfig) -> Result<(), (String, InstanceLimit)> {
    use wasmparser::{Parser, Payload};
    let mut tables = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return Ok(()) };
        match payload {
            Payload::TableSection(section) => {
                for (index, table) in section.into_iter().enumerate() {
                    let Ok(table) = table else { return Ok(()) };
                    tables += 1;
                    let elements = table.ty.initial;
                    if elements > pooling.max_table_elements as u64 {
                        let reason = format!(
                            "table {index} has at least {elements} elements, more than an instance may have ({})",
                            pooling.max_table_elements
                        );
                        return Err((reason, InstanceLimit::TableElements));
                    }
                }
            }
            Payload::MemorySection(section) => {
                for memory in section {
                    let Ok(memory) = memory else { return Ok(()) };
                    let bytes = memory.initial.saturating_mul(1 << 16);
                    if bytes > pooling.max_memory as u64 {
                        let reason = format!(
                            "its memory starts at {bytes} bytes, more than an instance may have ({})",
                            pooling.max_memory
                        );
                        return Err((reason, InstanceLimit::Memory));
                    }
                }
            }
            Payload::CodeSectionStart { .. } => break,
            _ => {}
        }
    }
    if tables > pooling.max_tables {
        let reason = format!("it has {tables} tables, more than an instance may have ({})", pooling.max_tables);
        return Err((reason, InstanceLimit::Tables));
    }
    Ok(())
}

fn looks_like_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| text.trim_start().starts_with('('))
}

fn abi_version(module: &wasmtime::Module) -> Option<AbiVersion> {
    AbiVersion::MARKERS
        .iter()
        .rev()
        .find(|(marker, _)| matches!(module.get_export(marker), Some(ExternType::Func(_))))
        .map(|(_, version)| *version)
}

fn check_exports(module: &wasmtime::Module) -> Result<(), String> {
    if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err("does not export its memory as \"memory\"".into());
    }
    let allocator = ALLOCATORS.iter().find_map(|name| match module.get_export(name) {
        Some(ExternType::Func(func)) => Some((name, func)),
        _ => None,
    });
    match allocator {
        None => Err("exports no allocator (proxy_on_memory_allocate or malloc)".into()),
        Some((name, func)) => {
            let i32_to_i32 = func.params().map(|p| matches!(p, ValType::I32)).eq([true])
                && func.results().map(|r| matches!(r, ValType::I32)).eq([true]);
            if i32_to_i32 {
                Ok(())
            } else {
                Err(format!("allocator export {name} must have type (i32) -> i32"))
            }
        }
    }
}

/// Names the first import this host does not provide, with its module and kind.
fn check_imports(engine: &Engine, module: &wasmtime::Module) -> Result<(), String> {
    let state = HostState::new(AbiVersion::V0_2_1, Arc::new(VmConfig::default()), MemoryLimiter::new(0));
    let mut store = Store::new(engine.wasmtime(), state);
    for import in module.imports() {
        if engine.linker().get_by_import(&mut store, &import).is_none() {
            let kind = match import.ty() {
                ExternType::Func(_) => "function",
                ExternType::Memory(_) => "memory",
                ExternType::Table(_) => "table",
                ExternType::Global(_) => "global",
                _ => "item",
            };
            return Err(format!(
                "imports {kind} {}.{}, which this host does not provide",
                import.module(),
                import.name()
            ));
        }
    }
    Ok(())
}
