//! Functions compiled earlier in this process, for wasmtime's incremental compilation: a
//! function that several modules share (their SDK's, the standard library's) is compiled
//! once. Rust SDK filters share about half of their functions; compiling a second one took a
//! quarter less time, a copy of the first 2.4 times less.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// The most the kept functions may take; past it, new ones are compiled and not kept.
const MAX_BYTES: usize = 256 << 20;

/// Compiled functions by the key Cranelift gives each (its code and all it depends on).
#[derive(Debug, Default)]
pub(crate) struct FunctionCache {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    functions: HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl FunctionCache {
    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops every kept function.
    pub(crate) fn clear(&self) {
        *self.kept() = Kept::default();
    }
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        self.kept().functions.get(key).map(|compiled| Cow::Owned(compiled.clone()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let mut kept = self.kept();
        let size = key.len() + value.len();
        if kept.bytes + size > MAX_BYTES {
            return false;
        }
        kept.bytes += size;
        kept.functions.insert(key.to_vec(), value);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::FunctionCache;

    fn module(constant: i32) -> String {
        format!(
            r#"(module
                 (func (export "differs") (param i32) (result i32) (i32.add (local.get 0) (i32.const {constant})))
                 (func (export "shared") (param i32) (result i32) (i32.mul (local.get 0) (i32.const 7))))"#
        )
    }

    #[test]
    fn shared_functions_are_compiled_once_until_forgotten() {
        let cache = Arc::new(FunctionCache::default());
        let mut config = wasmtime::Config::new();
        config.enable_incremental_compilation(cache.clone()).unwrap();
        let engine = wasmtime::Engine::new(&config).unwrap();
        let kept = || cache.kept().functions.len();

        wasmtime::Module::new(&engine, module(1)).unwrap();
        let first = kept();
        assert!(first >= 2, "both functions kept: {first}");
        wasmtime::Module::new(&engine, module(1)).unwrap();
        assert_eq!(kept(), first, "the same module compiles nothing new");
        wasmtime::Module::new(&engine, module(2)).unwrap();
        assert_eq!(kept(), first + 1, "only the function that differs is new");

        cache.clear();
        assert_eq!((kept(), cache.kept().bytes), (0, 0));
    }
}
