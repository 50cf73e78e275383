//! The compiled-code cache: compiled modules serialized to a directory, keyed by the module's
//! content hash and the engine's compilation settings.
//!
//! An entry is two files: `KEY.cwasm`, wasmtime's serialized module as is, and `KEY.sum`,
//! `MAGIC` then the BLAKE3 digest of the `.cwasm`. The digest is checked (over a mapping of the
//! file, nothing copied) before wasmtime sees the code, so a truncated or corrupted entry is
//! recompiled rather than trusted; a stale one (other wasmtime or settings) has another key, and
//! wasmtime's own header check rejects anything left. A valid entry is mapped, not read: its
//! code is shared by every process that maps it and resident only where it runs.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"INWASM3\n";

/// The digest a module's content is known by (BLAKE3: as strong as SHA-256 and several times
/// faster, which matters when thousands of modules start from the cache).
pub fn content_digest(bytes: &[u8]) -> [u8; 32] {
    blake3::hash(bytes).into()
}

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

    /// Where the entry of a module whose content has `digest` lives: its code and its digest.
    fn entry(&self, engine: &wasmtime::Engine, digest: &[u8; 32]) -> (PathBuf, PathBuf) {
        let key = key(engine, digest);
        (self.dir.join(format!("{key}.cwasm")), self.dir.join(format!("{key}.sum")))
    }

    /// Whether the cache has an entry for the module whose content has `digest` (the cheap
    /// check: its code is verified when it is loaded, and recompiled then if it is corrupt).
    pub fn holds(&self, engine: &wasmtime::Engine, digest: &[u8; 32]) -> bool {
        let (code, sum) = self.entry(engine, digest);
        std::fs::read(sum).is_ok_and(|sum| sum.starts_with(MAGIC)) && code.is_file()
    }

    /// Loads the compiled form of `wasm` (whose content digest is `digest`) from the cache,
    /// or compiles and stores it.
    pub(crate) fn load_or_compile(
        &self,
        engine: &wasmtime::Engine,
        wasm: &[u8],
        digest: &[u8; 32],
    ) -> wasmtime::Result<(wasmtime::Module, CacheOutcome)> {
        let (code, sum) = self.entry(engine, digest);
        let rejected = match verify(&code, &sum) {
            Ok(checked) => match load(engine, checked) {
                Ok(module) => return Ok((module, CacheOutcome::Hit)),
                Err(reason) => Some(reason),
            },
            Err(Absent) => None,
            Err(Rejected(reason)) => Some(reason),
        };
        let module = wasmtime::Module::new(engine, crate::recycling::prepare(wasm))?;
        // A cache that cannot be written is not an error: the module is compiled all the same.
        let _ = store(&code, &sum, &module.serialize()?);
        Ok((module, rejected.map_or(CacheOutcome::Miss, CacheOutcome::Replaced)))
    }
}

/// Why an entry was not used.
enum Unusable {
    Absent,
    Rejected(String),
}
use Unusable::{Absent, Rejected};

/// Hex BLAKE3 over the engine's compatibility hash, what the host does to a module before
/// compiling it, and the module's content digest.
fn key(engine: &wasmtime::Engine, digest: &[u8; 32]) -> String {
    let mut hasher = DigestHasher(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.update(crate::recycling::PREPARATION);
    hasher.0.update(digest);
    hex(hasher.0.finalize().as_bytes())
}

/// Checks an entry's code against its digest; the code's file, open.
fn verify(code: &Path, sum: &Path) -> Result<File, Unusable> {
    let Ok(sum) = std::fs::read(sum) else { return Err(Absent) };
    let expected = sum.strip_prefix(MAGIC).filter(|digest| digest.len() == 32).ok_or(Rejected("not a cache entry".into()))?;
    let file = File::open(code).map_err(|_| Absent)?;
    // SAFETY: entries are only ever replaced whole (a rename), never changed in place, so the
    // mapped bytes stay what the file held when it was opened.
    let mapped = unsafe { memmap2::Mmap::map(&file) }.map_err(|error| Rejected(error.to_string()))?;
    if content_digest(&mapped).as_slice() != expected {
        return Err(Rejected("checksum mismatch".into()));
    }
    Ok(file)
}

/// The module in `checked`, an entry's code file that [`verify`] checked.
fn load(engine: &wasmtime::Engine, checked: File) -> Result<wasmtime::Module, String> {
    // SAFETY: the file is byte-for-byte what `Module::serialize` wrote into this cache (its
    // digest matched, and it is the file that was checked, not a path opened again),
    // wasmtime checks that it was produced by a compatible engine, and entries are only ever
    // replaced whole (a rename), never changed in place, so the mapping stays what was checked.
    unsafe { wasmtime::Module::deserialize_open_file(engine, checked) }.map_err(|e| e.to_string())
}

/// Writes an entry atomically: each file through a temporary one and a rename, the digest
/// last (an entry without one is absent).
fn store(code: &Path, sum: &Path, payload: &[u8]) -> std::io::Result<()> {
    let dir = code.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let mut digest = MAGIC.to_vec();
    digest.extend_from_slice(&content_digest(payload));
    for (path, bytes) in [(code, payload), (sum, digest.as_slice())] {
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds `Hash` output into a BLAKE3 digest, so the key is stable across processes.
struct DigestHasher(blake3::Hasher);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// Unused: the key is the digest, not a u64.
    fn finish(&self) -> u64 {
        0
    }
}
