//! Where a call goes, in nginx's own terms: an `upstream {}` block's peers as nginx's balancer
//! for that block picks them (weights, `backup`, `down`, `max_fails`, `keepalive`, ...), an
//! address, or a host name for the `http {}` block's `resolver`.

use std::ffi::c_void;
use std::net::SocketAddr;
use std::ptr;

use inwasm_host::Pairs;
use ngx::ffi::{
    ngx_connection_t, ngx_cycle, ngx_http_conf_ctx_t, ngx_http_core_loc_conf_t, ngx_http_core_main_conf_t,
    ngx_http_core_module, ngx_http_max_module, ngx_http_module, ngx_http_request_t, ngx_http_upstream_main_conf_t,
    ngx_http_upstream_module, ngx_http_upstream_srv_conf_t, ngx_http_upstream_t, ngx_http_variable_value_t,
    ngx_list_init, ngx_log_t, ngx_pcalloc, ngx_pool_t, ngx_resolver_t, ngx_table_elt_t, ngx_timeofday, sockaddr,
    socklen_t, NGX_HTTP_UPSTREAM_CREATE, NGX_OK,
};

use ngx::http::HttpModuleConfExt;

use crate::ffi::bytes;
use crate::headers::{self, Side};
use crate::{request_line, shortcuts};

/// What a call's `upstream` names.
pub enum Target {
    /// An `upstream {}` block of the configuration.
    Block(*mut ngx_http_upstream_srv_conf_t),
    /// `address:port`.
    Address(SocketAddr),
    /// `name:port`, for the `http {}` block's resolver (with its timeout).
    Name { host: String, port: u16, resolver: Resolver },
}

impl Target {
    /// Reads `upstream` against the current configuration; `Err` says why it names nothing
    /// a call can go to.
    pub fn of(upstream: &str) -> Result<Target, String> {
        // SAFETY: runs in a worker, whose current cycle's configuration is complete.
        if let Some(block) = unsafe { upstream_block(upstream) } {
            return Ok(Target::Block(block));
        }
        if let Ok(address) = upstream.parse::<SocketAddr>() {
            return Ok(Target::Address(address));
        }
        let (host, port) = upstream.rsplit_once(':').unwrap_or((upstream, ""));
        let port = port.parse::<u16>().ok().filter(|p| *p > 0);
        let valid_host = !host.is_empty() && http::uri::Authority::try_from(host).is_ok() && !host.contains('@');
        match (valid_host, port, resolver()) {
            (true, Some(port), Some(resolver)) => Ok(Target::Name { host: host.to_string(), port, resolver }),
            (true, Some(_), None) => Err(format!(
                "no resolver defined to resolve \"{host}\": add a resolver to the http block, or name an upstream block"
            )),
            _ => Err(format!("\"{upstream}\" is neither an upstream block nor host:port")),
        }
    }
}

/// The explicit `upstream {}` block called `name`.
///
/// # Safety
/// Must run in a worker (the current cycle configured).
unsafe fn upstream_block(name: &str) -> Option<*mut ngx_http_upstream_srv_conf_t> {
    // SAFETY: the current cycle's upstream main configuration and its blocks live as long as
    // the cycle.
    unsafe {
        let umcf: *mut ngx_http_upstream_main_conf_t =
            (*ngx_cycle).http_main_conf_unchecked(&*ptr::addr_of!(ngx_http_upstream_module))?.as_ptr();
        let blocks = (*umcf).upstreams.as_slice::<*mut ngx_http_upstream_srv_conf_t>();
        blocks
            .iter()
            .copied()
            .find(|b| (**b).flags & NGX_HTTP_UPSTREAM_CREATE as usize != 0 && bytes(&(**b).host) == name.as_bytes())
    }
}

/// The `http {}` block's configurations (its own level: what a root context, which has no
/// location, is configured by).
fn http_block() -> Option<&'static ngx_http_conf_ctx_t> {
    // SAFETY: the current cycle's http configuration context lives as long as the cycle.
    unsafe {
        let slots = (*ngx_cycle).conf_ctx as *mut *mut *mut c_void;
        let ctx = *slots.add(ngx_http_module.index) as *const ngx_http_conf_ctx_t;
        ctx.as_ref()
    }
}

/// A resolver and its `resolver_timeout`.
pub type Resolver = (*mut ngx_resolver_t, ngx::ffi::ngx_msec_t);

/// The `http {}` block's resolver and its `resolver_timeout`, when a resolver is defined.
fn resolver() -> Option<Resolver> {
    /// nginx's default `resolver_timeout`, which the `http {}` level itself keeps unset.
    const DEFAULT_TIMEOUT: ngx::ffi::ngx_msec_t = 30_000;
    let http = http_block()?;
    // SAFETY: the http block's core location configuration, by the core module's index.
    unsafe {
        let clcf = *http.loc_conf.add(ngx_http_core_module.ctx_index) as *const ngx_http_core_loc_conf_t;
        let resolver = (*clcf).resolver;
        let timeout = match (*clcf).resolver_timeout {
            unset if unset == ngx::ffi::ngx_msec_t::MAX => DEFAULT_TIMEOUT,
            timeout => timeout,
        };
        (!resolver.is_null() && (*resolver).connections.nelts > 0).then_some((resolver, timeout))
    }
}

/// The request nginx's balancers take, made for a call: the call itself, as nginx would
/// have read it from a client (`headers`, pseudo-headers included, give its method, URI,
/// arguments, `Host` and headers, so `hash $request_uri` or `hash $http_x_tenant` spread
/// calls as they spread requests), on a connection with no client address (`ip_hash` then
/// sends every call to one server, as nginx does for clients on a UNIX socket). It has the
/// call's pool and log, the `http {}` block's configuration, an empty module context and
/// variables, and an upstream whose `peer` the balancer fills in. What nginx could not make
/// of a header (a path it would refuse) the balancer does not see; the call still goes out.
///
/// # Safety
/// `pool` and `log` must be live and outlive every use of the request; runs in a worker.
pub unsafe fn balancer_request(
    pool: *mut ngx_pool_t,
    log: *mut ngx_log_t,
    headers: &Pairs,
) -> Option<*mut ngx_http_request_t> {
    let http = http_block()?;
    // SAFETY: zeroed nginx structures are their empty values; everything is allocated from
    // `pool`, which outlives the request (the caller's contract). Once its pool,
    // configuration and header list are set, the request is one nginx's URI parser and our
    // header functions work on, as on a client's.
    unsafe {
        let r = ngx_pcalloc(pool, size_of::<ngx_http_request_t>()) as *mut ngx_http_request_t;
        let u = ngx_pcalloc(pool, size_of::<ngx_http_upstream_t>()) as *mut ngx_http_upstream_t;
        let c = ngx_pcalloc(pool, size_of::<ngx_connection_t>()) as *mut ngx_connection_t;
        // An address of no family: what `ip_hash`, `$remote_port` or `$server_addr` read.
        let nowhere = ngx_pcalloc(pool, size_of::<sockaddr>()) as *mut sockaddr;
        let cmcf = *http.main_conf.add(ngx_http_core_module.ctx_index) as *const ngx_http_core_main_conf_t;
        let variables = (*cmcf).variables.nelts.max(1);
        let values = ngx_pcalloc(pool, variables * size_of::<ngx_http_variable_value_t>());
        let contexts = ngx_pcalloc(pool, ngx_http_max_module * size_of::<*mut c_void>());
        if r.is_null() || u.is_null() || c.is_null() || nowhere.is_null() || values.is_null() || contexts.is_null() {
            return None;
        }
        let connection = &mut *c;
        connection.fd = -1;
        connection.log = log;
        connection.pool = pool;
        connection.sockaddr = nowhere;
        connection.socklen = size_of::<sockaddr>() as socklen_t;
        connection.local_sockaddr = nowhere;
        connection.local_socklen = size_of::<sockaddr>() as socklen_t;
        (*u).peer.log = log;
        let request = &mut *r;
        request.pool = pool;
        request.connection = c;
        request.main = r;
        request.main_conf = http.main_conf;
        request.srv_conf = http.srv_conf;
        request.loc_conf = http.loc_conf;
        request.ctx = contexts as *mut *mut c_void;
        request.variables = values as *mut ngx_http_variable_value_t;
        request.upstream = u;
        let now = ngx_timeofday();
        (request.start_sec, request.start_msec) = (now.sec, now.msec);
        let list = ptr::addr_of_mut!((*r).headers_in.headers);
        if ngx_list_init(list, pool, headers.len().max(1), size_of::<ngx_table_elt_t>()) != NGX_OK as isize {
            return None;
        }
        // Best effort: a part nginx would refuse is one the balancer does not see.
        for (name, value) in headers {
            let _ = match name {
                b":path" | b":method" => request_line::set(r, name, value),
                b":authority" => headers::push(&mut *list, pool, Side::Request, b"host", value),
                pseudo if pseudo.starts_with(b":") => Ok(()),
                _ => headers::push(&mut *list, pool, Side::Request, name, value),
            };
        }
        // Once all are in: the shortcuts (`Host`, `User-Agent`, ...) and `$host`.
        shortcuts::refresh_request(r)?;
        Some(r)
    }
}

/// Lets `block`'s balancer set up the peer of `r`'s upstream for one call (its `get`,
/// `free`, `tries`, ...).
///
/// # Safety
/// `r` must come from [`balancer_request`]; `block` be a block of the current configuration.
pub unsafe fn init_balancer(r: *mut ngx_http_request_t, block: *mut ngx_http_upstream_srv_conf_t) -> bool {
    // SAFETY: the block's `peer.init` is set when the configuration's upstreams are
    // initialised, and takes a request with an upstream, as `r` is.
    unsafe { (*block).peer.init.is_some_and(|init| init(r, block) == NGX_OK as isize) }
}
