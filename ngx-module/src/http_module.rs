//! The HTTP module: `proxy_wasm` chains and isolation per location, and the hooks that run
//! them (rewrite phase, header and body filters, log phase).
//!
//! ```nginx
//! location / {
//!     proxy_wasm NAME ['plugin config'];       # repeatable: a chain, run in order
//!     proxy_wasm_isolation none|stream|filter; # default none
//!     proxy_wasm_timeout 100ms;                # budget of each filter callback
//!     proxy_wasm_fail_open off;                # on: a failed filter is skipped, not a 500
//! }
//! ```

use std::ffi::{c_char, c_void};
use std::ptr;

use std::time::Duration;

use inwasm_host::{default_request_budget, Pairs, PluginConfig, StreamLimits, DEFAULT_TIMEOUT};

/// The longest budget a callback may be given (`proxy_wasm_timeout`).
const LONGEST_CALLBACK: Duration = Duration::from_secs(60);
/// The longest a filter may be allowed to keep a request waiting (`proxy_wasm_pause_timeout`).
const LONGEST_PAUSE: Duration = Duration::from_secs(3600);
use ngx::core::Status;
use ngx::ffi::{
    ngx_array_push, ngx_command_t, ngx_conf_t, ngx_http_handler_pt, ngx_http_module_t,
    ngx_http_phases_NGX_HTTP_LOG_PHASE, ngx_http_phases_NGX_HTTP_REWRITE_PHASE, ngx_http_top_body_filter,
    ngx_http_top_header_filter, ngx_http_top_request_body_filter, ngx_int_t, ngx_module_t, ngx_str_t, ngx_uint_t,
    NGX_CONF_TAKE1, NGX_CONF_TAKE123, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MODULE,
    NGX_HTTP_SRV_CONF, NGX_LOG_EMERG,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError, NgxHttpCoreModule};
use ngx::ngx_string;

use crate::ffi::{args, bytes, directive, guard_status, log_error, parse_time};
use crate::http_call::LONGEST_CALL;
use crate::wasm_block::{FilterDecl, WasmConf};
use crate::{metrics, request, response, validation};
use ngx::ffi::{ngx_http_discard_request_body, ngx_http_request_t, NGX_CONF_NOARGS, NGX_OK};

/// How instances are shared (Kong's `proxy_wasm_isolation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// One instance per module per worker, shared by every request.
    None,
    /// A fresh instance per request (shared by the request's filters of one module).
    Stream,
    /// A fresh instance per filter per request.
    Filter,
}

#[derive(Clone, Debug, Default)]
pub struct LocConf {
    /// Indices into `WasmConf::filters`, in order. `None`: inherit the enclosing block's chain.
    pub chain: Option<Vec<usize>>,
    pub isolation: Option<Isolation>,
    pub timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub pause_timeout: Option<Duration>,
    pub fail_open: Option<bool>,
}

impl LocConf {
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// What each filter of a request may spend: `proxy_wasm_timeout` a callback, and
    /// `proxy_wasm_request_timeout` (by default five callbacks' worth) all its callbacks.
    pub fn stream_limits(&self) -> StreamLimits {
        let request_budget = self.request_timeout.unwrap_or(default_request_budget(self.timeout()));
        StreamLimits { timeout: Some(self.timeout()), request_budget: Some(request_budget) }
    }

    /// How long a filter may keep a request waiting: by default, the longest an http call
    /// may take plus the callback that handles its answer.
    pub fn pause_timeout(&self) -> Duration {
        self.pause_timeout.unwrap_or(LONGEST_CALL + self.timeout())
    }

    pub fn fail_open(&self) -> bool {
        self.fail_open.unwrap_or(false)
    }
}

impl Merge for LocConf {
    fn merge(&mut self, prev: &LocConf) -> Result<(), MergeConfigError> {
        if self.chain.is_none() {
            self.chain = prev.chain.clone();
        }
        self.isolation = self.isolation.or(prev.isolation);
        self.timeout = self.timeout.or(prev.timeout);
        self.request_timeout = self.request_timeout.or(prev.request_timeout);
        self.pause_timeout = self.pause_timeout.or(prev.pause_timeout);
        self.fail_open = self.fail_open.or(prev.fail_open);
        Ok(())
    }
}

pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: a static nginx writes only while it loads modules, before any of this runs.
        unsafe { &*ptr::addr_of!(ngx_http_inwasm_module) }
    }

    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: nginx calls it with the configuration it has just read.
        let log = unsafe { (*cf).log };
        // SAFETY: as above; the filter chains and phase arrays it edits are nginx's, and
        // nginx runs no request while configuring.
        guard_status(log, || unsafe {
            if !start_filters(cf) {
                return Status::NGX_ERROR.into();
            }
            let Some(core) = NgxHttpCoreModule::main_conf_mut(&*cf) else {
                return Status::NGX_ERROR.into();
            };
            let phases: [(usize, ngx_http_handler_pt); 2] = [
                (ngx_http_phases_NGX_HTTP_REWRITE_PHASE as usize, Some(request::rewrite_handler)),
                (ngx_http_phases_NGX_HTTP_LOG_PHASE as usize, Some(request::log_handler)),
            ];
            for (phase, handler) in phases {
                let slot = ngx_array_push(&mut core.phases[phase].handlers) as *mut ngx_http_handler_pt;
                if slot.is_null() {
                    return Status::NGX_ERROR.into();
                }
                *slot = handler;
            }
            response::NEXT_HEADER_FILTER = ngx_http_top_header_filter;
            ngx_http_top_header_filter = Some(response::header_filter as unsafe extern "C" fn(_) -> _);
            request::NEXT_REQUEST_BODY_FILTER = ngx_http_top_request_body_filter;
            ngx_http_top_request_body_filter = Some(request::request_body_filter as unsafe extern "C" fn(_, _) -> _);
            response::NEXT_BODY_FILTER = ngx_http_top_body_filter;
            ngx_http_top_body_filter = Some(response::body_filter as unsafe extern "C" fn(_, _) -> _);
            Status::NGX_OK.into()
        })
    }
}

// SAFETY: the module's location configuration is a `LocConf` (its create_loc_conf makes one).
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

// SAFETY: the module has no main configuration of its own (no create_main_conf).
unsafe impl HttpModuleMainConf for Module {
    type MainConf = ();
}

static CONTEXT: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: Some(Module::postconfiguration),
    create_main_conf: None,
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(Module::merge_loc_conf),
};

const ANY_HTTP_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

/// A directive allowed in http, server and location blocks, with `args` (NGX_CONF_TAKE*).
const fn command(name: ngx_str_t, args: u32, set: DirectiveHandler) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: (ANY_HTTP_LEVEL | args) as ngx_uint_t,
        set: Some(set),
        conf: NGX_HTTP_LOC_CONF_OFFSET as ngx_uint_t,
        offset: 0,
        post: ptr::null_mut(),
    }
}

type DirectiveHandler = unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

static mut COMMANDS: [ngx_command_t; 8] = [
    command(ngx_string!("proxy_wasm"), NGX_CONF_TAKE123, proxy_wasm),
    command(ngx_string!("proxy_wasm_isolation"), NGX_CONF_TAKE1, proxy_wasm_isolation),
    command(ngx_string!("proxy_wasm_timeout"), NGX_CONF_TAKE1, proxy_wasm_timeout),
    command(ngx_string!("proxy_wasm_request_timeout"), NGX_CONF_TAKE1, proxy_wasm_request_timeout),
    command(ngx_string!("proxy_wasm_pause_timeout"), NGX_CONF_TAKE1, proxy_wasm_pause_timeout),
    command(ngx_string!("proxy_wasm_fail_open"), NGX_CONF_TAKE1, proxy_wasm_fail_open),
    ngx_command_t {
        name: ngx_string!("proxy_wasm_metrics"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS) as ngx_uint_t,
        set: Some(proxy_wasm_metrics),
        conf: NGX_HTTP_LOC_CONF_OFFSET as ngx_uint_t,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_inwasm_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(CONTEXT) as *mut c_void,
    commands: ptr::addr_of_mut!(COMMANDS) as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    ..ngx_module_t::default()
};

/// A directive handler's location configuration.
///
/// # Safety
/// `conf` must be the `LocConf` nginx passes to a handler of this module's directives.
unsafe fn loc_conf<'a>(conf: *mut c_void) -> &'a mut LocConf {
    // SAFETY: per the caller; nginx hands each handler the block's own configuration.
    unsafe { &mut *(conf as *mut LocConf) }
}

/// `proxy_wasm NAME [CONFIG] [root_id=ID]`: CONFIG is the plugin configuration (Kong's
/// syntax); `root_id=ID` names the root context, for filters that register theirs under an
/// id (AssemblyScript's proxy-runtime). A second argument that starts with `root_id=` and no
/// third is the root id.
unsafe extern "C" fn proxy_wasm(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with the configuration being parsed and the
    // block's configuration of this module.
    unsafe {
        directive(cf, || {
            let loc = loc_conf(conf);
            let args = args(cf);
            let name = String::from_utf8_lossy(args[1]).into_owned();
            let wasm = WasmConf::of_cycle((*cf).cycle).ok_or("proxy_wasm: no wasm {} block")?;
            let module = wasm
                .module_index(&name)
                .ok_or_else(|| format!("proxy_wasm: no module \"{name}\" is declared in the wasm {{}} block"))?;
            let (configuration, root_id) = match &args[2..] {
                [] => (&b""[..], None),
                [only] => match only.strip_prefix(b"root_id=") {
                    Some(root_id) => (&b""[..], Some(root_id)),
                    None => (*only, None),
                },
                [configuration, root_id, ..] => match root_id.strip_prefix(b"root_id=") {
                    Some(root_id) => (*configuration, Some(root_id)),
                    None => {
                        let root_id = String::from_utf8_lossy(root_id);
                        return Err(format!("proxy_wasm: \"{root_id}\": the third argument is root_id=ID"));
                    }
                },
            };
            let plugin = PluginConfig {
                name: name.clone(),
                root_id: String::from_utf8_lossy(root_id.unwrap_or_default()).into_owned(),
                configuration: configuration.to_vec(),
                timeout: None,
            };
            // Started (and so checked) with every other filter once the http block is read.
            wasm.filters.push(FilterDecl { module, plugin, position: position(cf), background: true });
            loc.chain.get_or_insert_with(Vec::new).push(wasm.filters.len() - 1);
            Ok(())
        })
    }
}

/// Where the directive being parsed stands, as nginx names places: `/path/nginx.conf:12`.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
unsafe fn position(cf: *mut ngx_conf_t) -> String {
    // SAFETY: a configuration being parsed is in a file of its own.
    let file = unsafe { &*(*cf).conf_file };
    // SAFETY: as above; the file's name lives as long as the configuration.
    format!("{}:{}", String::from_utf8_lossy(unsafe { bytes(&file.file.name) }), file.line)
}

/// Starts every declared filter once (in a child process): each one that fails is reported
/// with its directive's place, and fails the configuration.
///
/// # Safety
/// `cf` must be nginx's configuration, read whole.
unsafe fn start_filters(cf: *mut ngx_conf_t) -> bool {
    // SAFETY: the configuration's cycle holds the wasm configuration, if any.
    let Some(wasm) = (unsafe { WasmConf::of_cycle((*cf).cycle) }) else { return true };
    // SAFETY: a configuration has a log.
    let log = unsafe { (*cf).log };
    let filters: Vec<_> = wasm.filters.iter().map(|f| (&wasm.modules[f.module], &f.plugin)).collect();
    // Each filter (by name) gets an equal share of the metrics zone.
    if let Some(zone) = &wasm.metric_zone {
        let names: std::collections::HashSet<_> = wasm.filters.iter().map(|f| &f.plugin.name).collect();
        zone.set_tenants(names.len());
    }
    let outcomes = validation::start_all(&filters, log);
    let mut all_started = true;
    for (filter, outcome) in wasm.filters.iter_mut().zip(outcomes) {
        match outcome {
            Ok(background) => filter.background = background,
            Err(message) => {
                all_started = false;
                let line = format!("proxy_wasm \"{}\": {message} in {}", filter.plugin.name, filter.position);
                log_error(NGX_LOG_EMERG as ngx_uint_t, log, &line);
            }
        }
    }
    all_started
}

/// A directive's one word, as one of `choices` (`(word, value)`).
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
unsafe fn choice<T: Copy>(cf: *mut ngx_conf_t, choices: &[(&[u8], T)]) -> Result<T, String> {
    // SAFETY: per the caller.
    let args = unsafe { args(cf) };
    choices.iter().find(|(word, _)| *word == args[1]).map(|(_, value)| *value).ok_or_else(|| {
        let words: Vec<_> = choices.iter().map(|(word, _)| String::from_utf8_lossy(word)).collect();
        let (directive, value) = (String::from_utf8_lossy(args[0]), String::from_utf8_lossy(args[1]));
        format!("invalid {directive} \"{value}\": use {}", words.join(" or "))
    })
}

unsafe extern "C" fn proxy_wasm_isolation(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let choices: [(&[u8], _); 3] =
        [(b"none", Isolation::None), (b"stream", Isolation::Stream), (b"filter", Isolation::Filter)];
    // SAFETY: nginx calls directive handlers with the configuration being parsed and the
    // block's configuration of this module.
    unsafe {
        directive(cf, || {
            loc_conf(conf).isolation = Some(choice(cf, &choices)?);
            Ok(())
        })
    }
}

/// A directive's time argument (nginx's syntax: `50ms`, `2s`, `1m`), at most `longest`.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
unsafe fn time_arg(cf: *mut ngx_conf_t, longest: Duration) -> Result<Duration, String> {
    // SAFETY: per the caller.
    let args = unsafe { args(cf) };
    let (directive, value) = (String::from_utf8_lossy(args[0]), String::from_utf8_lossy(args[1]));
    let time =
        parse_time(args[1]).ok_or_else(|| format!("invalid {directive} \"{value}\": use a time such as 50ms or 1s"))?;
    if time > longest {
        return Err(format!("invalid {directive} \"{value}\": at most {}s", longest.as_secs()));
    }
    Ok(time)
}

unsafe extern "C" fn proxy_wasm_timeout(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with the configuration being parsed and the
    // block's configuration of this module.
    unsafe {
        directive(cf, || {
            let timeout = time_arg(cf, LONGEST_CALLBACK)?;
            loc_conf(conf).timeout = Some(timeout);
            if let Some(wasm) = WasmConf::of_cycle((*cf).cycle) {
                wasm.note_timeout(timeout);
            }
            Ok(())
        })
    }
}

unsafe extern "C" fn proxy_wasm_request_timeout(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as `proxy_wasm_timeout`.
    unsafe {
        directive(cf, || {
            loc_conf(conf).request_timeout = Some(time_arg(cf, LONGEST_PAUSE)?);
            Ok(())
        })
    }
}

unsafe extern "C" fn proxy_wasm_pause_timeout(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as `proxy_wasm_timeout`.
    unsafe {
        directive(cf, || {
            loc_conf(conf).pause_timeout = Some(time_arg(cf, LONGEST_PAUSE)?);
            Ok(())
        })
    }
}

unsafe extern "C" fn proxy_wasm_fail_open(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let choices: [(&[u8], _); 2] = [(b"on", true), (b"off", false)];
    // SAFETY: as `proxy_wasm_timeout`.
    unsafe {
        directive(cf, || {
            loc_conf(conf).fail_open = Some(choice(cf, &choices)?);
            Ok(())
        })
    }
}

/// `proxy_wasm_metrics;` makes the location answer with every metric in Prometheus format.
unsafe extern "C" fn proxy_wasm_metrics(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with the configuration being parsed, whose
    // location configuration of the core module is the location's.
    unsafe {
        directive(cf, || {
            let core = NgxHttpCoreModule::location_conf_mut(&*cf).ok_or("proxy_wasm_metrics: no location")?;
            core.handler = Some(metrics_handler);
            Ok(())
        })
    }
}

unsafe extern "C" fn metrics_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let log = unsafe { (*(*r).connection).log };
    guard_status(log, || {
        // SAFETY: a live request.
        let rc = unsafe { ngx_http_discard_request_body(r) };
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        let text = WasmConf::metrics().and_then(|zone| metrics::prometheus(zone).ok()).unwrap_or_default();
        let length = text.len().to_string();
        let pairs: Pairs =
            [(":status", "200"), ("content-type", "text/plain; version=0.0.4"), ("content-length", length.as_str())]
                .into_iter()
                .collect();
        // SAFETY: a live request, answered here.
        unsafe { response::send_response(r, &pairs, text.as_bytes()) }
    })
}
