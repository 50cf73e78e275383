//! The `wasm {}` block (a core module): declares modules, compiled here at configuration time
//! in the master, so `nginx -t` reports bad wasm and workers inherit compiled code.
//!
//! ```nginx
//! wasm {
//!     module NAME PATH [vm_config];           # .wasm or .wat
//!     memory_limit SIZE;                      # default cap of each instance's linear memory
//!     module_memory_limit NAME SIZE;          # that module's own cap
//!     module_env NAME VAR[=VALUE] ...;        # environment the module sees (default: none)
//!     shm_kv NAME|* SIZE [eviction=lru|none] [namespace=module|shared];
//!                                             # shared data zone (default: `*`, 1m, lru, module)
//!     shm_queue NAME|* SIZE;                  # shared queue zone (default: `*`, 1m)
//!     cache_dir PATH|off;                     # compiled-code cache (before the modules)
//!     background_timeout TIME;                # budget of a root's own callbacks (20ms)
//!     start_timeout TIME;                     # budget of each start-up step (10s)
//!     max_table_elements N; max_tables N; max_instance_size SIZE;
//!                                             # instance limits (set at nginx's start)
//!     tls_trusted_certificate PATH;           # CAs http calls over TLS trust (default: the system's)
//!     tls_verify on|off;                      # check their servers' certificates (on)
//! }
//! ```

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use inwasm_host::{
    CodeCache, Engine, EngineConfig, EpochTicker, InstanceLimit, Module, PluginConfig, PoolingConfig, VmConfig,
    DEFAULT_BACKGROUND_TIMEOUT, DEFAULT_MEMORY_LIMIT, DEFAULT_START_TIMEOUT, DEFAULT_TIMEOUT,
};
use ngx::core::Pool;
use ngx::ffi::{
    ngx_command_t, ngx_conf_parse, ngx_conf_t, ngx_core_module_t, ngx_cycle_t, ngx_module_t, ngx_parse_size, ngx_str_t,
    ngx_uint_t, NGX_CONF_BLOCK, NGX_CONF_NOARGS, NGX_CORE_MODULE, NGX_DIRECT_CONF, NGX_ERROR, NGX_MAIN_CONF,
};
use ngx::ngx_string;

use crate::ffi::{args, bytes, directive, parse_time};
use crate::http_call::tls::{self, TlsClient};
use crate::metrics::{self, MetricZone};
use crate::modules;
use crate::shared_data::{self, KvOptions, KvZone};
use crate::shared_queues::{self, QueueZone};
use crate::worker;

/// A module declared with `module NAME PATH`.
pub struct ModuleDecl {
    pub name: String,
    /// Compiled when the `wasm {}` block ends (all its modules together).
    module: Option<Arc<Module>>,
    pub vm_config: VmConfig,
    /// Set by `module_memory_limit`; otherwise the block's `memory_limit` applies.
    memory_limit: Option<usize>,
}

impl ModuleDecl {
    /// The compiled module (a configuration whose modules did not all compile is refused).
    pub fn module(&self) -> &Arc<Module> {
        self.module.as_ref().expect("modules are compiled when the wasm block ends")
    }
}

/// A filter: one `proxy_wasm NAME [config]` directive, i.e. one root context.
pub struct FilterDecl {
    pub module: usize,
    pub plugin: PluginConfig,
    /// The directive's place in the configuration, for messages.
    pub position: String,
    /// It does work of its own from the start, or starts slowly (see `validation`), so each
    /// worker starts it at once rather than at its first request, and keeps it.
    pub background: bool,
}

/// Everything the `wasm {}` block and the `proxy_wasm` directives declared in one
/// configuration (one nginx cycle).
#[derive(Default)]
pub struct WasmConf {
    pub modules: Vec<ModuleDecl>,
    /// Each module's index in `modules` by name (configurations declare thousands).
    module_names: HashMap<String, usize>,
    pub filters: Vec<FilterDecl>,
    pub kv_zones: Vec<KvZone>,
    /// Boxed: nginx's shared memory zones point at them.
    #[allow(clippy::vec_box)]
    pub queue_zones: Vec<Box<QueueZone>>,
    pub metric_zone: Option<Box<MetricZone>>,
    memory_limit: Option<usize>,
    background_timeout: Option<Duration>,
    start_timeout: Option<Duration>,
    /// Where compiled code is kept between runs (`cache_dir`); chosen at the first module.
    cache: Option<Option<CodeCache>>,
    /// The files of `modules`, in order, compiled when the block ends.
    sources: Vec<modules::Source>,
    /// The shortest `proxy_wasm_timeout` configured, which sets the deadlines' precision.
    shortest_timeout: Option<Duration>,
    /// `tls_trusted_certificate` and `tls_verify`, and the TLS client they make when the
    /// block ends.
    tls_trusted_certificate: Option<Vec<u8>>,
    tls_verify: Option<bool>,
    pub tls: Option<TlsClient>,
}

impl WasmConf {
    /// Notes a callback budget configured somewhere (`proxy_wasm_timeout`).
    pub fn note_timeout(&mut self, timeout: Duration) {
        self.shortest_timeout = Some(self.shortest_timeout.map_or(timeout, |t| t.min(timeout)));
    }

    /// How often the epoch must tick for every configured budget (the default one included).
    pub fn tick_period(&self) -> Duration {
        EpochTicker::period_for(self.shortest_timeout.map_or(DEFAULT_TIMEOUT, |t| t.min(DEFAULT_TIMEOUT)))
    }

    pub fn module_index(&self, name: &str) -> Option<usize> {
        self.module_names.get(name).copied()
    }

    /// The configuration of `cycle`.
    ///
    /// # Safety
    /// `cycle` must be a cycle whose configuration was created (after `create_conf`).
    pub unsafe fn of_cycle<'a>(cycle: *const ngx_cycle_t) -> Option<&'a mut WasmConf> {
        // SAFETY: a cycle's `conf_ctx` is its modules' configurations by module index (once
        // created); ours is the `WasmConf` `create_conf` made, in the cycle's pool.
        unsafe {
            let slots = (*cycle).conf_ctx as *mut *mut c_void;
            if slots.is_null() {
                return None;
            }
            let conf = *slots.add(ngx_inwasm_module.index);
            (conf as *mut WasmConf).as_mut()
        }
    }
}

static ENGINE: OnceLock<Engine> = OnceLock::new();

/// The instance limits the engine is made with (`max_table_elements`, `max_tables`,
/// `max_instance_size`), while it is not made yet (it is made when the first `wasm {}` block
/// ends, once its modules are all declared).
static POOL: Mutex<Option<PoolingConfig>> = Mutex::new(None);

/// The process-wide engine, created on first use (in the master, before any fork; it starts
/// no thread). Reloads reuse it, so compiled code stays compatible across cycles.
pub fn engine() -> &'static Engine {
    ENGINE.get_or_init(|| {
        let pooling = POOL.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
        // Modules are compiled in short-lived children (the master forgets what it compiled).
        let config = EngineConfig { pooling: Some(pooling), share_compiled_functions: true, ..EngineConfig::default() };
        Engine::new(config).expect("wasmtime engine configuration is valid")
    })
}

/// Sets an instance limit of the engine to come; refused once the engine runs with another.
fn set_pool_limit(
    directive: &str,
    set: impl FnOnce(&mut PoolingConfig),
    current: impl Fn(&PoolingConfig) -> usize,
) -> Result<(), String> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let mut wanted = pool.clone().unwrap_or_default();
    set(&mut wanted);
    if let Some(engine) = ENGINE.get() {
        let running = engine.config().pooling.as_ref().map(&current).unwrap_or_default();
        if running != current(&wanted) {
            return Err(format!("{directive} cannot change while nginx runs ({running} now): restart nginx"));
        }
        return Ok(());
    }
    *pool = Some(wanted);
    Ok(())
}

/// The directive that raises an instance limit.
pub fn limit_directive(limit: InstanceLimit) -> &'static str {
    match limit {
        InstanceLimit::TableElements => "max_table_elements",
        InstanceLimit::Tables => "max_tables",
        InstanceLimit::Memory => "memory_limit",
    }
}

static mut COMMANDS: [ngx_command_t; 2] = [
    ngx_command_t {
        name: ngx_string!("wasm"),
        type_: (NGX_MAIN_CONF | NGX_DIRECT_CONF | NGX_CONF_BLOCK | NGX_CONF_NOARGS) as ngx_uint_t,
        set: Some(wasm_block),
        conf: 0,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

static mut CONTEXT: ngx_core_module_t =
    ngx_core_module_t { name: ngx_string!("inwasm"), create_conf: Some(create_conf), init_conf: None };

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_inwasm_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of_mut!(CONTEXT) as *mut c_void,
    commands: ptr::addr_of_mut!(COMMANDS) as *mut ngx_command_t,
    type_: NGX_CORE_MODULE as ngx_uint_t,
    init_process: Some(worker::init_process),
    exit_process: Some(worker::exit_process),
    ..ngx_module_t::default()
};

unsafe extern "C" fn create_conf(cycle: *mut ngx_cycle_t) -> *mut c_void {
    // SAFETY: nginx calls it with the cycle being configured; its pool outlives the cycle's
    // configuration, and the pool runs the configuration's drop.
    unsafe { Pool::from_ngx_pool((*cycle).pool).allocate(WasmConf::default()) as *mut c_void }
}

unsafe extern "C" fn wasm_block(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with the configuration being parsed; this one's
    // `conf` is the cycle's `WasmConf` (from `create_conf`). The block's directives are parsed
    // with `cf` pointing at this handler, then `cf` is restored.
    unsafe {
        let saved = *cf;
        (*cf).handler = Some(block_directive);
        (*cf).handler_conf = conf;
        let result = ngx_conf_parse(cf, ptr::null_mut());
        *cf = saved;
        if !result.is_null() {
            return result;
        }
        directive(cf, || {
            let conf = &mut *(conf as *mut WasmConf);
            // The block's memory_limit applies to every module it declares, wherever it stands.
            let default = conf.memory_limit.unwrap_or(DEFAULT_MEMORY_LIMIT);
            conf.modules.iter_mut().for_each(|m| m.vm_config.memory_limit = m.memory_limit.unwrap_or(default));
            let background = conf.background_timeout.unwrap_or(DEFAULT_BACKGROUND_TIMEOUT);
            let start = conf.start_timeout.unwrap_or(DEFAULT_START_TIMEOUT);
            for module in conf.modules.iter_mut() {
                module.vm_config.background_timeout = Some(background);
                module.vm_config.start_timeout = Some(start);
            }
            if let Some(m) = conf.modules.iter().find(|m| m.vm_config.memory_limit > DEFAULT_MEMORY_LIMIT) {
                return Err(format!(
                    "memory limit of module \"{}\" ({} bytes) is above what an instance can have ({} bytes)",
                    m.name, m.vm_config.memory_limit, DEFAULT_MEMORY_LIMIT
                ));
            }
            let cache = conf.cache.clone().flatten();
            let compiled = modules::load_all(&conf.sources, cache.as_ref(), (*cf).log)?;
            conf.modules.iter_mut().zip(compiled).for_each(|(decl, module)| decl.module = Some(module));
            conf.sources.clear();
            modules::keep_only(conf.modules.iter().map(ModuleDecl::module));
            declare_default_zones(cf, conf)?;
            let verify = conf.tls_verify.unwrap_or(true);
            conf.tls = Some(tls::client(cf, conf.tls_trusted_certificate.as_deref(), verify)?);
            // Each module gets an equal share of each shared zone by default.
            conf.kv_zones.iter().for_each(|zone| zone.set_tenants(conf.modules.len()));
            conf.queue_zones.iter().for_each(|zone| zone.set_tenants(conf.modules.len()));
            Ok(())
        })
    }
}

/// Handles one directive inside `wasm {}`.
unsafe extern "C" fn block_directive(
    cf: *mut ngx_conf_t,
    _dummy: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls the block's handler with the configuration being parsed and the
    // `WasmConf` `wasm_block` gave it.
    unsafe { directive(cf, || block_directive_in(cf, &mut *(conf as *mut WasmConf))) }
}

/// One directive of the `wasm {}` block into `conf`.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
unsafe fn block_directive_in(cf: *mut ngx_conf_t, conf: &mut WasmConf) -> Result<(), String> {
    // SAFETY: per the caller.
    let args = unsafe { args(cf) };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    // SAFETY: the calls below take the configuration being parsed (the caller's contract).
    unsafe {
        match (args[0], args.len()) {
            (b"module", 3 | 4) => declare_module(cf, conf, &text(args[1]), &text(args[2]), args.get(3).copied()),
            (b"max_table_elements", 2) => {
                let elements =
                    parse_size(args[1]).ok_or_else(|| format!("invalid max_table_elements \"{}\"", text(args[1])))?;
                set_pool_limit("max_table_elements", |p| p.max_table_elements = elements, |p| p.max_table_elements)
            }
            (b"max_tables", 2) => {
                let tables = parse_size(args[1]).ok_or_else(|| format!("invalid max_tables \"{}\"", text(args[1])))?;
                set_pool_limit("max_tables", |p| p.max_tables = tables as u32, |p| p.max_tables as usize)
            }
            (b"max_instance_size", 2) => {
                let size =
                    parse_size(args[1]).ok_or_else(|| format!("invalid max_instance_size \"{}\"", text(args[1])))?;
                set_pool_limit("max_instance_size", |p| p.max_instance_size = size, |p| p.max_instance_size)
            }
            (b"background_timeout", 2) => {
                conf.background_timeout = Some(block_time(args[0], args[1])?);
                Ok(())
            }
            (b"start_timeout", 2) => {
                conf.start_timeout = Some(block_time(args[0], args[1])?);
                Ok(())
            }
            (b"memory_limit", 2) => {
                let limit = parse_size(args[1]).ok_or_else(|| format!("invalid memory_limit \"{}\"", text(args[1])))?;
                conf.memory_limit = Some(limit);
                Ok(())
            }
            (b"module_memory_limit", 3) => declared(conf, args[1]).and_then(|module| {
                let limit =
                    parse_size(args[2]).ok_or_else(|| format!("invalid module_memory_limit \"{}\"", text(args[2])))?;
                module.memory_limit = Some(limit);
                Ok(())
            }),
            (b"module_env", 3..) => declared(conf, args[1]).and_then(|module| {
                for entry in &args[2..] {
                    module.vm_config.environment.push(environment_entry(entry)?);
                }
                Ok(())
            }),
            (b"shm_kv", 3..=6) => declare_kv_zone(cf, conf, &args),
            (b"cache_dir", 2) if conf.cache.is_some() => {
                Err("cache_dir must come before the first module (which is compiled where it stands)".to_string())
            }
            (b"cache_dir", 2) => match args[1] {
                b"off" => {
                    conf.cache = Some(None);
                    Ok(())
                }
                dir => modules::cache_in(resolve_path(cf, &text(dir))).map(|cache| conf.cache = Some(Some(cache))),
            },
            (b"tls_trusted_certificate", 2) => {
                conf.tls_trusted_certificate = Some(args[1].to_vec());
                Ok(())
            }
            (b"tls_verify", 2) => match args[1] {
                b"on" | b"off" => {
                    conf.tls_verify = Some(args[1] == b"on");
                    Ok(())
                }
                other => Err(format!("invalid tls_verify \"{}\": on or off", text(other))),
            },
            (b"shm_queue", 3) => {
                let size =
                    parse_size(args[2]).ok_or_else(|| format!("invalid shm_queue size \"{}\"", text(args[2])))?;
                shared_queues::declare(cf, &text(args[1]), size).map(|zone| conf.queue_zones.push(zone))
            }
            (
                b"module"
                | b"memory_limit"
                | b"background_timeout"
                | b"max_table_elements"
                | b"max_tables"
                | b"max_instance_size"
                | b"start_timeout"
                | b"module_memory_limit"
                | b"module_env"
                | b"shm_kv"
                | b"shm_queue"
                | b"cache_dir"
                | b"tls_trusted_certificate"
                | b"tls_verify",
                _,
            ) => Err(format!("invalid number of arguments in \"{}\" directive", text(args[0]))),
            (other, _) => Err(format!("unknown directive \"{}\" in wasm block", text(other))),
        }
    }
}

/// # Safety
/// `cf` must be nginx's configuration being parsed.
unsafe fn declare_module(
    cf: *mut ngx_conf_t,
    conf: &mut WasmConf,
    name: &str,
    path: &str,
    vm_config: Option<&[u8]>,
) -> Result<(), String> {
    if conf.module_index(name).is_some() {
        return Err(format!("duplicate wasm module \"{name}\""));
    }
    // SAFETY: per the caller.
    let path = unsafe { resolve_path(cf, path) };
    // SAFETY: per the caller.
    conf.cache.get_or_insert_with(|| unsafe { default_cache(cf) });
    conf.sources.push(modules::Source::check(path)?);
    let vm_config = VmConfig {
        vm_id: name.to_string(),
        configuration: vm_config.unwrap_or_default().to_vec(),
        ..VmConfig::default()
    };
    conf.module_names.insert(name.to_string(), conf.modules.len());
    conf.modules.push(ModuleDecl { name: name.to_string(), module: None, vm_config, memory_limit: None });
    Ok(())
}

/// The compiled-code cache when `cache_dir` does not say: `wasm_cache` beside nginx's
/// default client body temp directory (`/var/lib/nginx/wasm_cache` for Debian's nginx), if
/// that can be written; else none, with a notice.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
unsafe fn default_cache(cf: *mut ngx_conf_t) -> Option<CodeCache> {
    let body_temp = ngx::ffi::NGX_HTTP_CLIENT_TEMP_PATH.to_string_lossy();
    let parent = Path::new(body_temp.as_ref()).parent().map(|p| p.display().to_string()).unwrap_or_default();
    // SAFETY: per the caller.
    let dir = unsafe { resolve_path(cf, &parent) }.join("wasm_cache");
    match modules::cache_in(dir) {
        Ok(cache) => Some(cache),
        Err(reason) => {
            let message = format!("inwasm: no compiled-code cache ({reason}); set one with cache_dir");
            // SAFETY: a configuration being parsed has a log.
            crate::ffi::log_error(ngx::ffi::NGX_LOG_NOTICE as ngx_uint_t, unsafe { (*cf).log }, &message);
            None
        }
    }
}

/// Relative paths are relative to nginx's prefix, like other nginx file paths.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
unsafe fn resolve_path(cf: *mut ngx_conf_t, path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        return path;
    }
    // SAFETY: a configuration's cycle and its prefix live while it is parsed.
    let prefix = String::from_utf8_lossy(unsafe { bytes(&(*(*cf).cycle).prefix) }).into_owned();
    PathBuf::from(prefix).join(path)
}

fn parse_size(value: &[u8]) -> Option<usize> {
    let mut s = ngx_str_t { len: value.len(), data: value.as_ptr() as *mut u8 };
    // SAFETY: nginx's parser reads the `len` bytes of a live string.
    let size = unsafe { ngx_parse_size(&mut s) };
    (size != NGX_ERROR as isize && size > 0).then_some(size as usize)
}

/// A `wasm {}` directive's time, at most 10 minutes.
fn block_time(directive: &[u8], value: &[u8]) -> Result<Duration, String> {
    parse_time(value).filter(|time| *time <= Duration::from_secs(600)).ok_or_else(|| {
        let (directive, value) = (String::from_utf8_lossy(directive), String::from_utf8_lossy(value));
        format!("invalid {directive} \"{value}\": a time such as 20ms or 10s, at most 10m")
    })
}

/// A module declared earlier in the block (module-scoped directives follow `module`).
fn declared<'a>(conf: &'a mut WasmConf, name: &[u8]) -> Result<&'a mut ModuleDecl, String> {
    let name = String::from_utf8_lossy(name);
    let index = conf.module_index(&name).ok_or_else(|| format!("no module \"{name}\" is declared before this line"))?;
    Ok(&mut conf.modules[index])
}

/// `VAR=VALUE` passes that value; a bare `VAR` passes nginx's own value of VAR (if any).
fn environment_entry(entry: &[u8]) -> Result<(String, String), String> {
    let entry = std::str::from_utf8(entry).map_err(|_| "module_env entries must be UTF-8".to_string())?;
    Ok(match entry.split_once('=') {
        Some((name, value)) => (name.to_string(), value.to_string()),
        None => (entry.to_string(), std::env::var(entry).unwrap_or_default()),
    })
}

/// # Safety
/// `cf` must be nginx's configuration being parsed.
unsafe fn declare_kv_zone(cf: *mut ngx_conf_t, conf: &mut WasmConf, args: &[&[u8]]) -> Result<(), String> {
    let name = String::from_utf8_lossy(args[1]).into_owned();
    let size =
        parse_size(args[2]).ok_or_else(|| format!("invalid shm_kv size \"{}\"", String::from_utf8_lossy(args[2])))?;
    let mut options = KvOptions::default();
    for option in &args[3..] {
        match *option {
            b"eviction=lru" => options.evict = true,
            b"eviction=none" => options.evict = false,
            b"namespace=module" => options.per_module = true,
            b"namespace=shared" => options.per_module = false,
            other if other.starts_with(b"quota=") => {
                let quota = parse_size(&other[6..]);
                let invalid = || format!("invalid shm_kv {}", String::from_utf8_lossy(other));
                options.quota = quota.ok_or_else(invalid)?;
            }
            other => {
                return Err(format!(
                    "invalid shm_kv option \"{}\": use eviction=lru|none, namespace=module|shared or quota=SIZE",
                    String::from_utf8_lossy(other)
                ))
            }
        }
    }
    // SAFETY: per the caller.
    conf.kv_zones.push(unsafe { shared_data::declare(cf, &name, size, options) }?);
    Ok(())
}

/// The default shared data and queue zones (unless the block declared its own) and the
/// metrics zone.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
unsafe fn declare_default_zones(cf: *mut ngx_conf_t, conf: &mut WasmConf) -> Result<(), String> {
    // SAFETY: per the caller.
    unsafe {
        if !conf.kv_zones.iter().any(|z| z.name() == "*") {
            conf.kv_zones.push(shared_data::declare(cf, "*", shared_data::DEFAULT_ZONE_SIZE, KvOptions::default())?);
        }
        if !conf.queue_zones.iter().any(|z| z.name == "*") {
            conf.queue_zones.push(shared_queues::declare(cf, "*", shared_queues::DEFAULT_ZONE_SIZE)?);
        }
        conf.metric_zone = Some(metrics::declare(cf)?);
    }
    Ok(())
}

impl WasmConf {
    /// The current configuration's metrics zone (in a worker).
    pub fn metrics() -> Option<&'static MetricZone> {
        // SAFETY: the current cycle's configuration, in a worker.
        unsafe { WasmConf::of_cycle(ngx::ffi::ngx_cycle) }?.metric_zone.as_deref()
    }
}
