//! Compiling the modules a configuration declares: each distinct file content once per nginx
//! master, so a module declared many times (one per tenant, say) is compiled once and a
//! reload recompiles only what changed; through the on-disk code cache when there is one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use inwasm_host::{CodeCache, Module};
use sha2::{Digest, Sha256};

use crate::wasm_block::{engine, limit_directive};

/// Compiled modules by content digest (only ever used in the master, while configuring).
static COMPILED: Mutex<Option<HashMap<[u8; 32], Arc<Module>>>> = Mutex::new(None);

fn compiled() -> MutexGuard<'static, Option<HashMap<[u8; 32], Arc<Module>>>> {
    COMPILED.lock().unwrap_or_else(|p| p.into_inner())
}

/// The compiled module of the file at `path`; errors name the path and the reason.
pub fn load(path: &Path, cache: Option<&CodeCache>) -> Result<Arc<Module>, String> {
    let shown = path.display().to_string();
    let bytes = Module::read_file(path).map_err(|e| e.to_string())?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    if let Some(module) = compiled().get_or_insert_with(HashMap::new).get(&digest) {
        return Ok(module.clone());
    }
    let module = Module::new(engine(), &shown, &bytes, cache).map_err(|e| match e.limit {
        Some(limit) => format!("{e}: raise {} in wasm {{}}", limit_directive(limit)),
        None => e.to_string(),
    })?;
    compiled().get_or_insert_with(HashMap::new).insert(digest, module.clone());
    Ok(module)
}

/// Forgets compiled modules the configuration just read does not use (an older one that
/// still runs keeps its own).
pub fn keep_only<'a>(in_use: impl Iterator<Item = &'a Arc<Module>>) {
    let in_use: Vec<&Arc<Module>> = in_use.collect();
    if let Some(modules) = compiled().as_mut() {
        modules.retain(|_, module| in_use.iter().any(|used| Arc::ptr_eq(used, module)));
    }
}

/// The code cache in `dir` if the directory exists or can be made; else why not.
pub fn cache_in(dir: PathBuf) -> Result<CodeCache, String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(CodeCache::new(dir))
}
