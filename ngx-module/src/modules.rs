//! Compiling the modules a configuration declares: each distinct file content once per nginx
//! master, so a module declared many times (one per tenant, say) is compiled once and a
//! reload recompiles only what changed; through the on-disk code cache when there is one.
//!
//! With a cache, modules it does not hold yet are compiled in child processes, one per CPU,
//! which store them there, and the master then maps them from the cache: a cold start uses
//! every core (the master itself never runs a thread), says how far it has got, and
//! compiling leaves no memory behind in the master (and in the workers it forks). Without a
//! cache they are compiled in the master, one after the other.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use inwasm_host::{content_digest, CodeCache, Module};
use ngx::ffi::{ngx_log_t, ngx_uint_t, NGX_LOG_NOTICE};

use crate::child;
use crate::ffi::log_error;
use crate::wasm_block::{engine, limit_directive};

/// Compiled modules by content digest (only ever used in the master, while configuring).
static COMPILED: Mutex<Option<HashMap<[u8; 32], Arc<Module>>>> = Mutex::new(None);

fn compiled() -> MutexGuard<'static, Option<HashMap<[u8; 32], Arc<Module>>>> {
    COMPILED.lock().unwrap_or_else(|p| p.into_inner())
}

/// A module file declared by `module NAME PATH`: checked where it is declared, read when the
/// block ends, one file at a time (ten thousand modules' bytes held at once would stay in the
/// heap of the master and of every worker).
pub struct Source {
    pub path: PathBuf,
}

impl Source {
    /// The module file at `path`, if it can be read; errors name the path and the reason.
    pub fn check(path: PathBuf) -> Result<Source, String> {
        Module::check_file(&path).map_err(|e| e.to_string())?;
        Ok(Source { path })
    }

    /// The file's bytes and their content digest.
    fn read(&self) -> Result<(Vec<u8>, [u8; 32]), String> {
        let bytes = Module::read_file(&self.path).map_err(|e| e.to_string())?;
        let digest = content_digest(&bytes);
        Ok((bytes, digest))
    }
}

/// How often a long compilation says how far it has got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The compiled modules of `sources`, in order (each distinct content compiled once); errors
/// name the module's path and the reason (and the setting to raise, for a limit). Modules the
/// cache holds are loaded as they are read; the others are compiled in child processes first.
pub fn load_all(
    sources: &[Source],
    cache: Option<&CodeCache>,
    log: *mut ngx_log_t,
) -> Result<Vec<Arc<Module>>, String> {
    let loaded = load_each(sources, cache, log);
    // What the master compiled itself (without a cache, or what a child could not) is done:
    // the functions kept for it are freed, and the freed pages given back to the system.
    engine().forget_compiled_functions();
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe { libc::malloc_trim(0) };
    loaded
}

fn load_each(sources: &[Source], cache: Option<&CodeCache>, log: *mut ngx_log_t) -> Result<Vec<Arc<Module>>, String> {
    let mut loaded: Vec<Option<Arc<Module>>> = Vec::with_capacity(sources.len());
    let mut missing: Vec<(usize, [u8; 32])> = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        let (bytes, digest) = source.read()?;
        let known = compiled().get_or_insert_with(HashMap::new).contains_key(&digest);
        match cache {
            Some(cache) if !known && !cache.holds(engine().wasmtime(), &digest) => {
                missing.push((index, digest));
                loaded.push(None);
            }
            _ => loaded.push(Some(load(source, &bytes, digest, cache)?)),
        }
    }
    if let Some(cache) = cache {
        let mut distinct = HashSet::new();
        let to_compile: Vec<&Source> =
            missing.iter().filter(|(_, digest)| distinct.insert(*digest)).map(|&(index, _)| &sources[index]).collect();
        compile_in_children(&to_compile, cache, log)?;
    }
    for (index, _) in missing {
        let (bytes, digest) = sources[index].read()?;
        loaded[index] = Some(load(&sources[index], &bytes, digest, cache)?);
    }
    Ok(loaded.into_iter().map(|module| module.expect("every module is loaded above")).collect())
}

/// The compiled module of `bytes` (from the cache when it holds it).
fn load(source: &Source, bytes: &[u8], digest: [u8; 32], cache: Option<&CodeCache>) -> Result<Arc<Module>, String> {
    if let Some(module) = compiled().get_or_insert_with(HashMap::new).get(&digest) {
        return Ok(module.clone());
    }
    let shown = source.path.display().to_string();
    let module =
        Module::with_digest(engine(), &shown, bytes, cache.map(|c| (c, digest))).map_err(|e| match e.limit {
            Some(limit) => format!("{e}: raise {} in wasm {{}}", limit_directive(limit)),
            None => e.to_string(),
        })?;
    compiled().get_or_insert_with(HashMap::new).insert(digest, module.clone());
    Ok(module)
}

/// Compiles `sources` into `cache` in child processes, one per CPU. A module a child could
/// not compile is left to the master, whose error is then the one reported.
fn compile_in_children(sources: &[&Source], cache: &CodeCache, log: *mut ngx_log_t) -> Result<(), String> {
    if sources.is_empty() {
        return Ok(());
    }
    let processes = std::thread::available_parallelism().map_or(1, |n| n.get()).min(sources.len());
    if sources.len() > 1 {
        let message = format!("inwasm: compiling {} modules in {processes} processes", sources.len());
        log_error(NGX_LOG_NOTICE as ngx_uint_t, log, &message);
    }
    let mut children = Vec::new();
    for share in 0..processes {
        let mine: Vec<&Source> = sources.iter().skip(share).step_by(processes).copied().collect();
        children.push(spawn_compiler(&mine, cache)?);
    }
    let (started, mut reported) = (Instant::now(), Instant::now());
    let mut done = 0;
    let mut buffer = [0u8; 256];
    // Each byte a child writes is one module done; every child is read as it writes.
    let mut open: Vec<&mut std::fs::File> = children.iter_mut().map(|(_, output)| output).collect();
    while !open.is_empty() {
        let mut polled: Vec<libc::pollfd> = open
            .iter()
            .map(|output| libc::pollfd { fd: output.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: `polled` is an array of `polled.len()` pollfd structures.
        unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, PROGRESS_EVERY.as_millis() as i32) };
        // From the end, so that removing one (its place taken by the last) skips none.
        for index in (0..open.len()).rev() {
            if polled[index].revents == 0 {
                continue;
            }
            match open[index].read(&mut buffer) {
                Ok(0) => drop(open.swap_remove(index)),
                Ok(n) => done += n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => drop(open.swap_remove(index)),
            }
        }
        if reported.elapsed() >= PROGRESS_EVERY {
            reported = Instant::now();
            // SAFETY: the master updating nginx's cached time, as its own loop does, so that
            // the line's timestamp is now rather than the start of the configuration.
            unsafe { ngx::ffi::ngx_time_update() };
            let message = format!("inwasm: compiled {done} of {} modules ({:.0?})", sources.len(), started.elapsed());
            log_error(NGX_LOG_NOTICE as ngx_uint_t, log, &message);
        }
    }
    for (child, _) in children {
        let mut status = 0;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
    }
    Ok(())
}

/// Forks a child that compiles `sources` into `cache`, writing a byte for each one done;
/// returns its pid and the read end of its pipe.
fn spawn_compiler(sources: &[&Source], cache: &CodeCache) -> Result<(libc::pid_t, std::fs::File), String> {
    child::spawn(|out| {
        for source in sources {
            if let Ok((bytes, digest)) = source.read() {
                let name = source.path.display().to_string();
                let _ = Module::with_digest(engine(), &name, &bytes, Some((cache, digest)));
            }
            let _ = out.write_all(b".");
        }
        0
    })
}

/// Forgets compiled modules the configuration just read does not use (an older one that
/// still runs keeps its own).
pub fn keep_only<'a>(in_use: impl Iterator<Item = &'a Arc<Module>>) {
    let in_use: HashSet<*const Module> = in_use.map(Arc::as_ptr).collect();
    if let Some(modules) = compiled().as_mut() {
        modules.retain(|_, module| in_use.contains(&Arc::as_ptr(module)));
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
