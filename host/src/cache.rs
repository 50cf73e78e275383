//! The compiled-code cache: compiled modules serialized to a directory, keyed by the module's
//! content hash and the engine's compilation settings.
//!
//! An entry is `MAGIC`, the SHA-256 of its payload, then the payload (wasmtime's serialized
//! module). The digest is checked before wasmtime sees the bytes, so a truncated or corrupted
//! file is recompiled rather than trusted; a stale one (other wasmtime or settings) has another
//! key, and wasmtime's own header check rejects anything left.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"INWASM1\n";

/// What the cache did for one module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// No cache directory configured.
    Disabled,
    Hit,
    /// Compiled and stored.
    Miss,
    /// An entry existed but was rejected (the reason), then recompiled and replaced.
    Replaced(String),
}

#[derive(Clone, Debug)]
pub struct CodeCache {
    dir: PathBuf,
}

impl CodeCache {
    pub fn new(dir: impl Into<PathBuf>) -> CodeCache {
        CodeCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the compiled form of `wasm` from the cache, or compiles and stores it.
    pub(crate) fn load_or_compile(
        &self,
        engine: &wasmtime::Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(wasmtime::Module, CacheOutcome)> {
        let path = self.dir.join(format!("{}.cwasm", key(engine, wasm)));
        let rejected = match std::fs::read(&path) {
            Ok(entry) => match deserialize(engine, &entry) {
                Ok(module) => return Ok((module, CacheOutcome::Hit)),
                Err(reason) => Some(reason),
            },
            Err(_) => None,
        };
        let module = wasmtime::Module::new(engine, wasm)?;
        // A cache that cannot be written is not an error: the module is compiled all the same.
        let _ = store(&path, &module.serialize()?);
        Ok((module, rejected.map_or(CacheOutcome::Miss, CacheOutcome::Replaced)))
    }
}

/// Hex SHA-256 over the module bytes and the engine's compatibility hash.
fn key(engine: &wasmtime::Engine, wasm: &[u8]) -> String {
    let mut hasher = DigestHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.update(wasm);
    hex(&hasher.0.finalize())
}

fn deserialize(engine: &wasmtime::Engine, entry: &[u8]) -> Result<wasmtime::Module, String> {
    let rest = entry.strip_prefix(MAGIC).ok_or("not a cache entry")?;
    if rest.len() < 32 {
        return Err("truncated".into());
    }
    let (digest, payload) = rest.split_at(32);
    if Sha256::digest(payload).as_slice() != digest {
        return Err("checksum mismatch".into());
    }
    // SAFETY: the payload is byte-for-byte what `Module::serialize` wrote into this cache
    // (its digest matches), and wasmtime checks that it was produced by a compatible engine.
    unsafe { wasmtime::Module::deserialize(engine, payload) }.map_err(|e| e.to_string())
}

/// Writes an entry atomically (temporary file, then rename).
fn store(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(MAGIC)?;
    file.write_all(&Sha256::digest(payload))?;
    file.write_all(payload)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds `Hash` output into a SHA-256 digest, so the key is stable across processes.
struct DigestHasher(Sha256);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// Unused: the key is the digest, not a u64.
    fn finish(&self) -> u64 {
        0
    }
}
