//! A filter's calls (`proxy_http_call`, `proxy_grpc_call`, `proxy_grpc_stream`) on nginx's
//! own machinery: the peer comes from the `upstream {}` block's balancer (health, weights,
//! backup servers, keepalive connections), a host name from the `http {}` block's
//! `resolver`, TLS from nginx's TLS layer (`tls`), on nginx's event loop. The exchange on the
//! connection is an http call's HTTP/1.1 (`http1`) or a gRPC call's HTTP/2 stream (`grpc`).
//! A peer that cannot be reached, or drops the connection before answering, is marked failed
//! and the call goes to the next one, as `proxy_pass` does (a non-idempotent request is not
//! sent twice).
//!
//! What a call brings back always reaches the filter later, from the event loop (a posted
//! event, never from inside a guest call): an http call's response, or a failure
//! ("connection failed", "timeout", ...) that arrives with no headers; a gRPC call's events as
//! they come. Unless the stream that made it ends first, which cancels it (connection closed,
//! memory freed at once). A worker has at most half its `worker_connections` in calls at once
//! (the rest are its clients'), and an http call's response at most [`MAX_RESPONSE`] bytes.

mod grpc;
mod grpc_keepalive;
mod http1;
mod peer;
pub mod tls;

pub use grpc::{send as grpc_send, start as grpc_start};

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::net::SocketAddr;
use std::ptr;
use std::rc::Rc;
use std::time::Duration;

use inwasm_host::grpc_client::GrpcEvent;
use inwasm_host::http1_client::request_bytes;
use inwasm_host::{HttpCallRequest, HttpCallResponse, Pairs};
use ngx::ffi::{
    ngx_add_timer, ngx_close_connection, ngx_connection_t, ngx_create_pool, ngx_del_timer, ngx_delete_posted_event,
    ngx_destroy_pool, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t, ngx_http_request_t, ngx_inet_set_port,
    ngx_log_t, ngx_msec_t, ngx_peer_connection_t, ngx_pool_t, ngx_post_event, ngx_posted_events, ngx_resolve_name,
    ngx_resolve_name_done, ngx_resolve_start, ngx_resolver_ctx_t, ngx_resolver_strerror, ngx_ssl_shutdown, ngx_str_t,
    sockaddr, NGX_AGAIN, NGX_BUSY, NGX_DECLINED, NGX_ERROR, NGX_OK, NGX_PEER_FAILED,
};

use crate::ffi::{guard, pool_str};
use crate::root_link::RootLink;
use crate::wasm_block::WasmConf;
use peer::Target;

/// A call without a timeout (0) still ends after this long.
pub const LONGEST_CALL: Duration = Duration::from_secs(60);
/// The largest response a call accepts.
pub const MAX_RESPONSE: usize = 4 << 20;
/// A call's pool: room for the request an upstream block's balancer takes and the
/// balancer's own data in one block.
const POOL_SIZE: usize = 8192;

thread_local! {
    /// The calls in flight in this worker, by their root's link and token.
    static CALLS: RefCell<HashMap<(*const RootLink, u32), *mut Call>> = RefCell::new(HashMap::new());
}

/// How many calls this worker may have in flight: half its connections.
pub fn worker_limit() -> usize {
    // SAFETY: the worker's current cycle.
    unsafe { (*ngx::ffi::ngx_cycle).connection_n / 2 }
}

/// How many calls this worker has in flight.
pub fn in_flight() -> usize {
    CALLS.with(|calls| calls.borrow().len())
}

/// Stops call `token` of the root behind `link`, if still in flight: its answer is not wanted.
pub fn cancel(link: &Rc<RootLink>, token: u32) {
    let Some(call) = CALLS.with(|calls| calls.borrow_mut().remove(&(Rc::as_ptr(link), token))) else { return };
    // SAFETY: a live call, just taken out of the registry (so nothing else frees it).
    unsafe { discard(call) };
}

/// The worker exits: the calls still in flight are closed. (Their events are cancelable, so
/// they do not hold up a reload; no connection may outlive its worker.)
pub fn close_all() {
    let calls: Vec<*mut Call> = CALLS.with(|calls| calls.borrow_mut().drain().map(|(_, call)| call).collect());
    for call in calls {
        // SAFETY: live calls, just taken out of the registry (so nothing else frees them).
        unsafe { discard(call) };
    }
}

/// The live call `token` of the root behind `link`.
fn find(link: &Rc<RootLink>, token: u32) -> Option<*mut Call> {
    CALLS.with(|calls| calls.borrow().get(&(Rc::as_ptr(link), token)).copied())
}

/// Whether `call` is still the live call under its key (a filter may cancel a call while it
/// handles one of its events).
fn is_live(key: (*const RootLink, u32), call: *mut Call) -> bool {
    CALLS.with(|calls| calls.borrow().get(&key) == Some(&call))
}

/// Where a call is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Resolving,
    Connecting,
    Handshaking,
    /// The exchange runs on the connection.
    Exchanging,
    Finished,
}

/// What goes over the call's connection. The call holds it in place: the common HTTP/1.1
/// exchange is not boxed, which would cost every call an allocation.
#[allow(clippy::large_enum_variant)]
enum Exchange {
    Http(http1::Http1),
    Grpc(Box<grpc::Grpc>),
}

impl Exchange {
    /// The protocol TLS negotiates for the exchange (ALPN): gRPC's HTTP/2; none for HTTP/1.1.
    fn protocol(&self) -> Option<&'static [u8]> {
        matches!(self, Exchange::Grpc(_)).then_some(tls::HTTP2)
    }

    /// What the filter gets when the call fails for `reason` before its answer is complete.
    fn failed(&mut self, reason: &str, deadline: bool) -> Vec<Outcome> {
        match self {
            Exchange::Http(_) => vec![Outcome::Http(Err(reason.into()))],
            Exchange::Grpc(grpc) => grpc.failed(reason, deadline),
        }
    }

    /// Whether the request may go to another peer after this one failed.
    fn may_retry(&mut self) -> bool {
        match self {
            Exchange::Http(http) => http.may_retry(),
            Exchange::Grpc(grpc) => grpc.may_retry(),
        }
    }
}

/// What the filter is told, in order.
enum Outcome {
    Http(Result<HttpCallResponse, String>),
    Grpc(GrpcEvent),
}

struct Call {
    link: Rc<RootLink>,
    token: u32,
    pool: *mut ngx_pool_t,
    /// `own_log`: nginx's messages about the call's connection name the call and its peer.
    log: *mut ngx_log_t,
    own_log: ngx_log_t,
    stage: Stage,
    /// The request an upstream block's balancer keeps its state in (null for an address or
    /// a host name).
    balancer: *mut ngx_http_request_t,
    /// The peer being called: the balancer request's upstream's, or `own_peer`.
    peer: *mut ngx_peer_connection_t,
    own_peer: ngx_peer_connection_t,
    /// The address of an `address:port` or resolved target.
    address: libc::sockaddr_storage,
    /// The target as the filter named it (the peer's name in nginx's messages).
    name: ngx_str_t,
    port: u16,
    resolving: *mut ngx_resolver_ctx_t,
    /// The `:authority`'s host, which TLS asks for and verifies (empty without TLS).
    host: String,
    tls: bool,
    exchange: Exchange,
    /// The call's deadline, from the dispatch (resolving, connecting and retries included).
    timer: ngx_event_t,
    /// What is still to be told to the filter.
    outcomes: Vec<Outcome>,
    /// Posted to tell the filter from the event loop.
    done: ngx_event_t,
}

/// The host of the `:authority` in `headers` (no brackets around an IPv6 address), which a
/// TLS call names and verifies; empty if it has none.
fn tls_host(headers: &Pairs) -> String {
    let authority = std::str::from_utf8(headers.exact_value(b":authority").unwrap_or_default()).unwrap_or_default();
    let host = authority.parse::<http::uri::Authority>().map(|a| a.host().trim_matches(['[', ']']).to_string());
    host.unwrap_or_default()
}

/// Starts an http call for the root behind `link`; its outcome arrives through the link.
/// `Err` (the reason) when it cannot be made at all: the request is malformed (a header or
/// pseudo-header that is not valid HTTP: nothing is sent), or the upstream is neither an
/// `upstream {}` block nor `host:port` (as Envoy refuses an unknown cluster).
pub fn start(link: &Rc<RootLink>, token: u32, request: HttpCallRequest) -> Result<(), String> {
    let bytes = request_bytes(&request).map_err(|malformed| malformed.0)?;
    let target = Target::of(&request.upstream)?;
    let method = request.headers.exact_value(b":method").unwrap_or_default();
    let timeout = request.timeout.unwrap_or(LONGEST_CALL).min(LONGEST_CALL);
    let exchange = Exchange::Http(http1::Http1::new(bytes, method));
    let tls = request.headers.exact_value(b":scheme") == Some(b"https");
    open(link, token, &request.upstream, target, &request.headers, tls, Some(timeout), exchange)
}

/// Makes the call of `headers` (pseudo-headers included) and starts it towards `target`.
#[allow(clippy::too_many_arguments)]
fn open(
    link: &Rc<RootLink>,
    token: u32,
    upstream: &str,
    target: Target,
    headers: &Pairs,
    tls: bool,
    timeout: Option<Duration>,
    exchange: Exchange,
) -> Result<(), String> {
    let host = if tls { tls_host(headers) } else { String::new() };
    let log = link.log();
    // SAFETY: the link's log is the cycle's.
    let pool = unsafe { ngx::ffi::ngx_create_pool(POOL_SIZE, log) };
    if pool.is_null() {
        return Err("out of memory".into());
    }
    let call = Box::into_raw(Box::new(Call {
        link: link.clone(),
        token,
        pool,
        log,
        // SAFETY: a copy of a live log, with the call's context added below.
        own_log: unsafe { *log },
        stage: Stage::Connecting,
        balancer: ptr::null_mut(),
        peer: ptr::null_mut(),
        // SAFETY: all-zero nginx peers, socket addresses and events are empty ones.
        own_peer: unsafe { std::mem::zeroed() },
        // SAFETY: as above.
        address: unsafe { std::mem::zeroed() },
        // SAFETY: the pool just made.
        name: unsafe { pool_str(pool, upstream.as_bytes()) }.unwrap_or(ngx_str_t { len: 0, data: ptr::null_mut() }),
        port: 0,
        resolving: ptr::null_mut(),
        host,
        tls,
        exchange,
        // SAFETY: as above.
        timer: unsafe { std::mem::zeroed() },
        outcomes: Vec::new(),
        // SAFETY: as above.
        done: unsafe { std::mem::zeroed() },
    }));
    // SAFETY: the call is boxed until it is delivered or discarded; its pool is live.
    unsafe {
        let c = &mut *call;
        c.own_log.handler = Some(log_context);
        c.own_log.data = call as *mut c_void;
        c.own_log.action = ptr::null_mut();
        c.log = &mut c.own_log;
        let log = c.log;
        c.peer = &mut c.own_peer;
        c.done.handler = Some(deliver);
        c.done.data = call as *mut c_void;
        c.done.log = log;
        c.timer.handler = Some(on_timeout);
        c.timer.data = call as *mut c_void;
        c.timer.log = log;
        c.timer.set_cancelable(1);
        if let Some(timeout) = timeout {
            ngx_add_timer(&mut c.timer, timeout.as_millis().max(1) as ngx_msec_t);
        }
        CALLS.with(|calls| calls.borrow_mut().insert((Rc::as_ptr(link), token), call));
        match target {
            Target::Block(block) => match peer::balancer_request(pool, log, headers) {
                Some(r) if peer::init_balancer(r, block) => {
                    c.balancer = r;
                    c.peer = &mut (*(*r).upstream).peer;
                    connect(call);
                }
                _ => fail(call, "upstream block unavailable", 0),
            },
            Target::Address(address) => {
                set_address(c, address);
                connect(call);
            }
            Target::Name { host, port, resolver } => resolve(call, &host, port, resolver),
        }
    }
    Ok(())
}

/// What nginx's messages about a call's connection end with: the call's target and peer.
unsafe extern "C" fn log_context(log: *mut ngx_log_t, buf: *mut u8, len: usize) -> *mut u8 {
    // SAFETY: the call's own log carries the live call; nginx hands a buffer of `len` bytes.
    unsafe {
        let c = &*((*log).data as *const Call);
        let kind = if matches!(c.exchange, Exchange::Grpc(_)) { "gRPC" } else { "http" };
        let mut text = format!(", {kind} call to \"{}\"", String::from_utf8_lossy(crate::ffi::bytes(&c.name)));
        if !(*c.peer).name.is_null() && !(*c.peer).sockaddr.is_null() {
            text.push_str(&format!(", peer: {}", String::from_utf8_lossy(crate::ffi::bytes(&*(*c.peer).name))));
        }
        let n = text.len().min(len);
        ptr::copy_nonoverlapping(text.as_ptr(), buf, n);
        buf.add(n)
    }
}

/// Makes `address` the call's one peer.
fn set_address(c: &mut Call, address: SocketAddr) {
    let storage = ptr::addr_of_mut!(c.address) as *mut u8;
    let len = match address {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: a sockaddr_in fits in a sockaddr_storage.
            unsafe { ptr::write(storage as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: a sockaddr_in6 fits in a sockaddr_storage.
            unsafe { ptr::write(storage as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    own_peer_at(c, len);
}

/// Makes `c.address` (`len` bytes) the call's one peer.
fn own_peer_at(c: &mut Call, len: usize) {
    c.own_peer.sockaddr = ptr::addr_of_mut!(c.address) as *mut sockaddr;
    c.own_peer.socklen = len as _;
    c.own_peer.name = &mut c.name;
    c.own_peer.get = Some(ngx_event_get_peer);
    c.own_peer.tries = 1;
    c.own_peer.log = c.log;
}

/// Looks `host` up with `resolver`, then connects to one of its addresses.
///
/// # Safety
/// `call` must be a live boxed call.
unsafe fn resolve(call: *mut Call, host: &str, port: u16, (resolver, timeout): peer::Resolver) {
    // SAFETY: the live call (the caller's contract); nginx's resolver context is the call's
    // until `ngx_resolve_name_done`, and its handler may run before `ngx_resolve_name`
    // returns (an answer it holds).
    unsafe {
        let c = &mut *call;
        let ctx = ngx_resolve_start(resolver, ptr::null_mut());
        if ctx.is_null() || ctx as isize == -1 {
            return fail(call, "no resolver", 0);
        }
        let Some(name) = pool_str(c.pool, host.as_bytes()) else { return fail(call, "out of memory", 0) };
        (*ctx).name = name;
        (*ctx).handler = Some(on_resolved);
        (*ctx).data = call as *mut c_void;
        (*ctx).timeout = timeout;
        c.port = port;
        c.stage = Stage::Resolving;
        c.resolving = ctx;
        if ngx_resolve_name(ctx) != NGX_OK as isize {
            c.resolving = ptr::null_mut(); // freed by the resolver
            fail(call, &format!("{host} could not be resolved"), 0);
        }
    }
}

unsafe extern "C" fn on_resolved(ctx: *mut ngx_resolver_ctx_t) {
    // SAFETY: the resolver calls back with the context `resolve` started, whose data is the
    // live call (a call that ends first ends its resolution).
    unsafe {
        let call = (*ctx).data as *mut Call;
        guard((*call).log, (), || {
            let c = &mut *call;
            c.resolving = ptr::null_mut();
            let host = String::from_utf8_lossy(crate::ffi::bytes(&(*ctx).name)).into_owned();
            if (*ctx).state != 0 || (*ctx).naddrs == 0 {
                let reason = CStr::from_ptr(ngx_resolver_strerror((*ctx).state) as *const _).to_string_lossy();
                ngx_resolve_name_done(ctx);
                return fail(call, &format!("{host} could not be resolved ({reason})"), 0);
            }
            let chosen = &*(*ctx).addrs.add(rand_index((*ctx).naddrs));
            let len = (chosen.socklen as usize).min(size_of::<libc::sockaddr_storage>());
            ptr::copy_nonoverlapping(chosen.sockaddr as *const u8, ptr::addr_of_mut!(c.address) as *mut u8, len);
            ngx_resolve_name_done(ctx);
            own_peer_at(c, len);
            ngx_inet_set_port(c.own_peer.sockaddr, c.port);
            connect(call);
        })
    }
}

/// One of `n` addresses, spread over calls.
fn rand_index(n: usize) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) % n.max(1)
}

/// Connects to the next peer (a kept connection, if the balancer has one).
///
/// # Safety
/// `call` must be a live boxed call.
unsafe fn connect(call: *mut Call) {
    // SAFETY: the live call; its peer is the balancer's or its own.
    unsafe {
        (*call).stage = Stage::Connecting;
        let rc = ngx_event_connect_peer((*call).peer);
        attach(call, rc);
    }
}

/// A kept connection that does not suit the call (TLS for another host, plain for a TLS
/// call, HTTP/1.1 for a gRPC call or HTTP/2 for an http call) is closed, and a new one
/// opened to the same peer.
///
/// # Safety
/// `call` must be a live boxed call with a connection.
unsafe fn reconnect(call: *mut Call) {
    // SAFETY: the live call and its peer; `ngx_event_get_peer` keeps the address the
    // balancer chose, so the balancer's own accounting of the peer stays as it is.
    unsafe {
        let pc = (*call).peer;
        close_connection((*pc).connection);
        (*pc).connection = ptr::null_mut();
        (*pc).set_cached(0);
        let get = (*pc).get.replace(ngx_event_get_peer);
        let rc = ngx_event_connect_peer(pc);
        (*pc).get = get;
        attach(call, rc);
    }
}

/// Takes the outcome `rc` of `ngx_event_connect_peer`: the call's connection, under way
/// (`NGX_AGAIN`) or up, else the next peer or the end.
///
/// # Safety
/// `call` must be a live boxed call.
unsafe fn attach(call: *mut Call, rc: isize) {
    // SAFETY: the live call; nginx made or kept the peer's connection when it says so.
    unsafe {
        let c = &mut *call;
        if rc == NGX_BUSY as isize {
            return fail(call, "no live upstreams", 0);
        }
        if rc == NGX_DECLINED as isize {
            return next_peer(call, "connection failed");
        }
        let connection = (*c.peer).connection;
        if rc == NGX_ERROR as isize || connection.is_null() {
            return fail(call, "connection failed", NGX_PEER_FAILED);
        }
        (*connection).data = call as *mut c_void;
        (*connection).log = c.log;
        (*connection).requests += 1;
        if (*connection).pool.is_null() {
            (*connection).pool = ngx_create_pool(128, c.log);
            if (*connection).pool.is_null() {
                return fail(call, "out of memory", 0);
            }
        }
        for event in [(*connection).read, (*connection).write] {
            (*event).log = c.log;
            (*event).set_cancelable(1);
        }
        (*(*connection).read).handler = Some(on_read);
        (*(*connection).write).handler = Some(on_write);
        if rc != NGX_AGAIN as isize {
            connected(call);
        }
    }
}

/// The connection is up: TLS first if the call wants it, then the exchange.
///
/// # Safety
/// `call` must be a live boxed call with a connection.
unsafe fn connected(call: *mut Call) {
    // SAFETY: the live call and its connection.
    unsafe {
        let c = &mut *call;
        let connection = (*c.peer).connection;
        let secure = !(*connection).ssl.is_null();
        if (*c.peer).cached() != 0 {
            let grpc = matches!(c.exchange, Exchange::Grpc(_));
            let unsuitable = grpc != grpc_keepalive::holds(connection)
                || c.tls != secure
                || (secure && !tls::serves(connection, &c.host));
            if unsuitable {
                return reconnect(call);
            }
        }
        if secure || !c.tls {
            return exchange(call);
        }
        let Some(client) = WasmConf::of_cycle(ngx::ffi::ngx_cycle).and_then(|conf| conf.tls.as_ref()) else {
            return fail(call, "TLS is not configured", 0);
        };
        c.stage = Stage::Handshaking;
        match client.handshake(c.peer, connection, &c.host, c.exchange.protocol(), on_handshake) {
            Ok(true) => on_handshake(connection),
            Ok(false) => {}
            Err(reason) => next_peer(call, &reason),
        }
    }
}

unsafe extern "C" fn on_handshake(connection: *mut ngx_connection_t) {
    // SAFETY: nginx's TLS layer calls back with the call's connection, while the call lives.
    unsafe {
        let call = (*connection).data as *mut Call;
        guard((*call).log, (), || {
            let c = &mut *call;
            let client = WasmConf::of_cycle(ngx::ffi::ngx_cycle).and_then(|conf| conf.tls.as_ref());
            let outcome = client.map_or(Err("TLS is not configured".into()), |client| {
                client.established(c.peer, connection, &c.host, c.exchange.protocol())
            });
            if let Err(reason) = outcome {
                return next_peer(call, &reason);
            }
            (*(*connection).read).handler = Some(on_read);
            (*(*connection).write).handler = Some(on_write);
            exchange(call);
        })
    }
}

/// Starts the exchange on the call's connection.
///
/// # Safety
/// `call` must be a live boxed call with a connection.
unsafe fn exchange(call: *mut Call) {
    // SAFETY: the live call.
    unsafe {
        (*call).stage = Stage::Exchanging;
        match &(*call).exchange {
            Exchange::Http(_) => http1::send(call),
            Exchange::Grpc(_) => grpc::begin(call),
        }
    }
}

/// # Safety
/// `event` must be a call connection's event.
unsafe fn call_of(event: *mut ngx_event_t) -> *mut Call {
    // SAFETY: a call's connection events carry the connection, whose data is the call.
    unsafe { (*((*event).data as *mut ngx_connection_t)).data as *mut Call }
}

unsafe extern "C" fn on_write(event: *mut ngx_event_t) {
    // SAFETY: nginx runs the connection's write handler with its event, while the call is live.
    unsafe {
        let call = call_of(event);
        guard((*call).log, (), || match ((*call).stage, &(*call).exchange) {
            (Stage::Connecting, _) => connected(call),
            (Stage::Exchanging, Exchange::Http(_)) => http1::send(call),
            (Stage::Exchanging, Exchange::Grpc(_)) => grpc::drive(call),
            _ => {}
        })
    }
}

unsafe extern "C" fn on_read(event: *mut ngx_event_t) {
    // SAFETY: nginx runs the connection's read handler with its event, while the call is live.
    unsafe {
        let call = call_of(event);
        guard((*call).log, (), || match ((*call).stage, &(*call).exchange) {
            (Stage::Exchanging, Exchange::Http(_)) => http1::receive(call),
            (Stage::Exchanging, Exchange::Grpc(_)) => grpc::drive(call),
            _ => {}
        })
    }
}

/// The peer failed before answering: it is marked failed, and the call goes to the next
/// peer of its upstream block if there is one and the request may be sent again.
///
/// # Safety
/// `call` must be a live boxed call.
unsafe fn next_peer(call: *mut Call, reason: &str) {
    // SAFETY: the live call; its peer is the balancer's or its own.
    unsafe {
        let c = &mut *call;
        release_peer(c, NGX_PEER_FAILED);
        if (*c.peer).free.is_some() && (*c.peer).tries > 0 && c.exchange.may_retry() {
            connect(call);
        } else {
            fail(call, reason, 0);
        }
    }
}

/// Gives the peer back to its balancer with `state` (which keeps its connection if the
/// response allows it), then closes the connection if still open.
///
/// # Safety
/// `c` must be a live call.
unsafe fn release_peer(c: &mut Call, state: u32) {
    // SAFETY: the live call's peer; a balancer's `free` runs once per `get` (when it set the
    // peer's address), and takes the connection if it keeps it.
    unsafe {
        let pc = c.peer;
        if let Some(free) = (*pc).free.filter(|_| !(*pc).sockaddr.is_null()) {
            free(pc, (*pc).data, state as usize);
            (*pc).sockaddr = ptr::null_mut();
        }
        if !(*pc).connection.is_null() {
            close_connection((*pc).connection);
            (*pc).connection = ptr::null_mut();
        }
    }
}

/// Closes a call's connection (TLS shut down without waiting) and frees its pool.
///
/// # Safety
/// `connection` must be a live connection no longer used.
unsafe fn close_connection(connection: *mut ngx_connection_t) {
    // SAFETY: per the caller.
    unsafe {
        if !(*connection).ssl.is_null() {
            (*(*connection).ssl).set_no_wait_shutdown(1);
            ngx_ssl_shutdown(connection);
        }
        let pool = (*connection).pool;
        ngx_close_connection(connection);
        if !pool.is_null() {
            ngx_destroy_pool(pool);
        }
    }
}

/// Stops everything the call has under way: its timer, its resolution, its exchange and its
/// peer.
///
/// # Safety
/// `c` must be a live call.
unsafe fn stop(c: &mut Call, state: u32) {
    // SAFETY: the live call's own timer and resolver context.
    unsafe {
        if c.timer.timer_set() != 0 {
            ngx_del_timer(&mut c.timer);
        }
        if !c.resolving.is_null() {
            ngx_resolve_name_done(c.resolving);
            c.resolving = ptr::null_mut();
        }
        if let Exchange::Grpc(grpc) = &mut c.exchange {
            grpc.shut(); // before its connection goes
        }
        release_peer(c, state);
        c.stage = Stage::Finished;
    }
}

unsafe extern "C" fn on_timeout(event: *mut ngx_event_t) {
    // SAFETY: the call's timer carries the live call.
    unsafe {
        let call = (*event).data as *mut Call;
        guard((*call).log, (), || {
            let outcomes = (*call).exchange.failed("timeout", true);
            finish(call, outcomes, NGX_PEER_FAILED, Some("timeout"))
        })
    }
}

/// Ends the call with a failure (`reason`), its peer given back with `state`.
///
/// # Safety
/// `call` must be a live boxed call.
unsafe fn fail(call: *mut Call, reason: &str, state: u32) {
    // SAFETY: the live call.
    unsafe {
        let outcomes = (*call).exchange.failed(reason, false);
        finish(call, outcomes, state, Some(reason));
    }
}

/// Ends the exchange (the peer given back with `state`) and posts the last `outcomes`; a
/// failure's `reason` goes to the error log.
///
/// # Safety
/// `call` must be a live boxed call.
unsafe fn finish(call: *mut Call, outcomes: Vec<Outcome>, state: u32, reason: Option<&str>) {
    // SAFETY: the live call.
    unsafe {
        let c = &mut *call;
        if c.stage == Stage::Finished {
            return;
        }
        stop(c, state);
        if let Some(reason) = reason {
            crate::ffi::log_error(ngx::ffi::NGX_LOG_ERR as usize, c.log, &format!("inwasm: call failed: {reason}"));
        }
        tell(call, outcomes);
    }
}

/// Queues `outcomes` for the filter, told from the event loop.
///
/// # Safety
/// `call` must be a live boxed call.
unsafe fn tell(call: *mut Call, outcomes: Vec<Outcome>) {
    // SAFETY: the live call; its delivery event is its own.
    unsafe {
        let c = &mut *call;
        c.outcomes.extend(outcomes);
        if c.done.posted() == 0 {
            ngx_post_event(&mut c.done, ptr::addr_of_mut!(ngx_posted_events));
        }
    }
}

/// Ends a call whose answer is not wanted and frees it.
///
/// # Safety
/// `call` must be a live boxed call no longer in the registry.
unsafe fn discard(call: *mut Call) {
    // SAFETY: per the caller, the box is ours to free.
    unsafe {
        let mut call = Box::from_raw(call);
        stop(&mut call, 0);
        if call.done.posted() != 0 {
            ngx_delete_posted_event(&mut call.done);
        }
        ngx_destroy_pool(call.pool);
    }
}

/// Tells the filter what its call brought, then frees the call if it has ended. The filter
/// may cancel the call, or act on it, while it is told.
unsafe extern "C" fn deliver(event: *mut ngx_event_t) {
    // SAFETY: the posted event carries the live call; it is freed here once it has ended
    // and is still registered (a cancel meanwhile frees it itself).
    unsafe {
        let call = (*event).data as *mut Call;
        let (link, token) = ((*call).link.clone(), (*call).token);
        let key = (Rc::as_ptr(&link), token);
        let outcomes = std::mem::take(&mut (*call).outcomes);
        let ended = (*call).stage == Stage::Finished;
        for outcome in outcomes {
            if !is_live(key, call) {
                return;
            }
            guard(link.log(), (), || {
                link.deliver(|vm, plugin| match outcome {
                    Outcome::Http(outcome) => vm.on_http_call_response(plugin, token, outcome),
                    Outcome::Grpc(event) => vm.on_grpc_event(plugin, token, event),
                })
            });
        }
        if ended && is_live(key, call) {
            CALLS.with(|calls| calls.borrow_mut().remove(&key));
            let call = Box::from_raw(call);
            ngx_destroy_pool(call.pool);
        }
    }
}
