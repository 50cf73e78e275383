//! `inwasm check` and `inwasm compile`: a module vetted as `nginx -t` and Envoy vet it (with
//! the host's own messages), optionally started, or compiled into the code cache.

use std::path::Path;
use std::sync::Arc;

use inwasm_host::testing::{MemoryEmbedding, Node};
use inwasm_host::{CacheOutcome, CodeCache, InstanceLimit, LoadError, Module, Vm};
use serde_json::json;

use crate::args::{inline_or_file, Arg, Parser, Usage};
use crate::defaults::{engine, filter_configs};

pub const CHECK_USAGE: &str = "\
usage: inwasm check FILTER.wasm [--json] [--config TEXT] [--vm-config TEXT]

Vets FILTER.wasm as `nginx -t` and Envoy do: it must be WebAssembly, export a proxy-wasm ABI
version and an allocator, import nothing the host lacks, and fit the instance limits. With
--config or --vm-config the filter is also started (on_vm_start, on_configure) with them,
under the start-up budget nginx gives it (10 s).

options:
  --json             print one JSON object: module, ok, then abi or error (and the instance
                     limit it does not fit, if that is why)
  --config TEXT      the filter's configuration (@FILE: read it from FILE)
  --vm-config TEXT   the VM's configuration (@FILE: read it from FILE)

Exit status: 0 when the filter passes, 1 when it does not, 2 for a usage error.
";

pub const COMPILE_USAGE: &str = "\
usage: inwasm compile FILTER.wasm --cache-dir DIR

Vets FILTER.wasm (as `inwasm check`) and compiles it into DIR, the compiled-code cache that
nginx (`cache_dir`) and Envoy (`cache_dir` in the module's configuration) read: started with
it, they map the compiled code instead of compiling, so an air-gapped fleet can ship filters
precompiled. Entries are keyed by the module's content and the engine's settings (those
nginx and Envoy use); one already there is checked and kept.

options:
  --cache-dir DIR   the cache directory (created if missing)

Exit status: 0 when the module is in the cache, 1 when it was refused, 2 for a usage error.
";

/// `inwasm check`.
pub fn check(mut parser: Parser) -> Result<bool, Usage> {
    let (mut filter, mut json, mut config, mut vm_config) = (None, false, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Arg::Option(name) if name == "help" => return usage(CHECK_USAGE),
            Arg::Option(name) if name == "json" => json = true,
            Arg::Option(name) if name == "config" => config = Some(inline_or_file(&parser.value(&name)?)?),
            Arg::Option(name) if name == "vm-config" => vm_config = Some(inline_or_file(&parser.value(&name)?)?),
            Arg::Positional(path) if filter.is_none() => filter = Some(path),
            other => return Err(other.unexpected()),
        }
    }
    let filter = filter.ok_or_else(|| Usage::new("check needs a FILTER.wasm (see --help)"))?;
    let engine = engine()?;
    let started = config.is_some() || vm_config.is_some();
    let outcome = Module::from_file(&engine, Path::new(&filter), None).map_err(Refusal::from).and_then(|module| {
        if started {
            start(&module, &filter, config.unwrap_or_default(), vm_config.unwrap_or_default())?;
        }
        Ok(module)
    });
    if json {
        let report = match &outcome {
            Ok(module) => json!({"module": filter, "ok": true, "abi": module.abi_version().to_string()}),
            Err(refusal) => json!({
                "module": filter, "ok": false, "error": refusal.message, "limit": refusal.limit, "log": refusal.log,
            }),
        };
        println!("{report}");
    } else {
        match &outcome {
            Ok(module) => {
                let what = if started { "started" } else { "vetted" };
                println!("{filter}: ok, proxy-wasm ABI {} ({what})", module.abi_version());
            }
            Err(refusal) => {
                refusal.log.iter().for_each(|line| eprintln!("log: {line}"));
                eprintln!("inwasm: {}", refusal.message);
            }
        }
    }
    Ok(outcome.is_ok())
}

/// `inwasm compile`.
pub fn compile(mut parser: Parser) -> Result<bool, Usage> {
    let (mut filter, mut cache_dir) = (None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Arg::Option(name) if name == "help" => return usage(COMPILE_USAGE),
            Arg::Option(name) if name == "cache-dir" => cache_dir = Some(parser.value(&name)?),
            Arg::Positional(path) if filter.is_none() => filter = Some(path),
            other => return Err(other.unexpected()),
        }
    }
    let filter = filter.ok_or_else(|| Usage::new("compile needs a FILTER.wasm (see --help)"))?;
    let dir = cache_dir.ok_or_else(|| Usage::new("compile needs --cache-dir DIR (see --help)"))?;
    std::fs::create_dir_all(&dir).map_err(|e| Usage::new(format!("cannot create {dir}: {e}")))?;
    let engine = engine()?;
    match Module::from_file(&engine, Path::new(&filter), Some(&CodeCache::new(&dir))) {
        Ok(module) => {
            let what = match module.cache_outcome() {
                CacheOutcome::Hit => "already compiled in".to_string(),
                CacheOutcome::Replaced(reason) => format!("compiled again ({reason}) into"),
                CacheOutcome::Miss | CacheOutcome::Disabled => "compiled into".to_string(),
            };
            println!("{filter}: {what} {dir}");
            Ok(true)
        }
        Err(error) => {
            eprintln!("inwasm: {error}");
            Ok(false)
        }
    }
}

fn usage(text: &str) -> Result<bool, Usage> {
    print!("{text}");
    Ok(true)
}

/// Why a filter did not pass.
struct Refusal {
    message: String,
    /// The instance limit the module does not fit in, when that is why.
    limit: Option<&'static str>,
    /// What the filter logged while it started.
    log: Vec<String>,
}

impl From<LoadError> for Refusal {
    fn from(error: LoadError) -> Refusal {
        let limit = error.limit.map(|limit| match limit {
            InstanceLimit::TableElements => "table_elements",
            InstanceLimit::Tables => "tables",
            InstanceLimit::Memory => "memory",
        });
        Refusal { message: error.to_string(), limit, log: Vec::new() }
    }
}

/// Starts the filter once on a fresh instance, as `nginx -t` does.
fn start(module: &Arc<Module>, path: &str, config: Vec<u8>, vm_config: Vec<u8>) -> Result<(), Refusal> {
    let node = Node::default();
    let refusal = |error: inwasm_host::FilterError| Refusal {
        message: error.to_string(),
        limit: None,
        log: node.borrow().log_lines(),
    };
    let (vm_config, plugin) = filter_configs(path, config, vm_config, None);
    let mut vm = Vm::new(module.clone(), vm_config).map_err(refusal)?;
    vm.add_plugin(plugin, MemoryEmbedding::root(&node)).map(drop).map_err(refusal)
}
