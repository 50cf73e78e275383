//! `proxy_http_call` on nginx's own machinery: the peer comes from the `upstream {}` block's
//! balancer (health, weights, backup servers, keepalive connections), a host name from the
//! `http {}` block's `resolver`, TLS from nginx's TLS layer (`tls`), and the exchange is
//! HTTP/1.1 on nginx's event loop, checked and parsed by the host's client
//! (`inwasm_host::http1_client`). A peer that cannot be reached, or drops the connection
//! before answering, is marked failed and the call goes to the next one, as `proxy_pass`
//! does (a non-idempotent request is not sent twice).
//!
//! Once started, the outcome always reaches the filter later, from the event loop: a
//! response, or a failure ("connection failed", "timeout", ...) that arrives with no
//! headers; unless the stream that made it ends first, which cancels it (connection closed,
//! memory freed at once). A worker has at most half its `worker_connections` in calls at once
//! (the rest are its clients'), and a call's response at most [`MAX_RESPONSE`] bytes.

mod peer;
pub mod tls;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::net::SocketAddr;
use std::ptr;
use std::rc::Rc;
use std::time::Duration;

use inwasm_host::http1_client::{request_bytes, Progress, ResponseReader};
use inwasm_host::{HttpCallRequest, HttpCallResponse};
use ngx::ffi::{
    ngx_add_timer, ngx_close_connection, ngx_connection_t, ngx_create_pool, ngx_del_timer, ngx_delete_posted_event,
    ngx_destroy_pool, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t, ngx_handle_read_event,
    ngx_handle_write_event, ngx_http_request_t, ngx_inet_set_port, ngx_log_t, ngx_msec_t, ngx_peer_connection_t,
    ngx_pool_t, ngx_post_event, ngx_posted_events, ngx_resolve_name, ngx_resolve_name_done, ngx_resolve_start,
    ngx_resolver_ctx_t, ngx_resolver_strerror, ngx_ssl_shutdown, ngx_str_t, sockaddr, NGX_AGAIN, NGX_BUSY,
    NGX_DECLINED, NGX_ERROR, NGX_OK, NGX_PEER_FAILED,
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

/// Where a call is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Resolving,
    Connecting,
    Handshaking,
    Sending,
    Reading,
    Finished,
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
    /// The `:authority`'s host, which TLS asks for and verifies.
    host: String,
    tls: bool,
    /// A HEAD request, whose response has no body.
    head: bool,
    /// A request that may be sent to a second peer after reaching a first (not POST, PATCH
    /// or LOCK, as nginx's `proxy_next_upstream` holds).
    idempotent: bool,
    request: Vec<u8>,
    sent: usize,
    reader: ResponseReader,
    received: bool,
    /// The call's whole time, from the dispatch (resolving, connecting and retries included).
    timer: ngx_event_t,
    outcome: Option<Result<HttpCallResponse, String>>,
    /// Posted to deliver the outcome from the event loop.
    done: ngx_event_t,
}

/// Starts a call for the root behind `link`; its outcome arrives through the link. `Err` (the
/// reason) when it cannot be made at all: the request is malformed (a header or
/// pseudo-header that is not valid HTTP: nothing is sent), or the upstream is neither an
/// `upstream {}` block nor `host:port` (as Envoy refuses an unknown cluster).
pub fn start(link: &Rc<RootLink>, token: u32, request: HttpCallRequest) -> Result<(), String> {
    let bytes = request_bytes(&request).map_err(|malformed| malformed.0)?;
    let target = Target::of(&request.upstream)?;
    let header = |name: &[u8]| request.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice());
    let authority = std::str::from_utf8(header(b":authority").unwrap_or_default()).unwrap_or_default();
    let host = authority.parse::<http::uri::Authority>().map(|a| a.host().trim_matches(['[', ']']).to_string());
    let method = header(b":method").unwrap_or_default();
    let log = link.log();
    // SAFETY: the link's log is the cycle's.
    let pool = unsafe { ngx::ffi::ngx_create_pool(POOL_SIZE, log) };
    // SAFETY: a copy of a live log, with the call's context added below.
    let own_log = unsafe { *log };
    if pool.is_null() {
        return Err("out of memory".into());
    }
    let timeout = request.timeout.unwrap_or(LONGEST_CALL).min(LONGEST_CALL).as_millis().max(1) as ngx_msec_t;
    let call = Box::into_raw(Box::new(Call {
        link: link.clone(),
        token,
        pool,
        log,
        own_log,
        stage: Stage::Connecting,
        balancer: ptr::null_mut(),
        peer: ptr::null_mut(),
        // SAFETY: all-zero nginx peers, socket addresses and events are empty ones.
        own_peer: unsafe { std::mem::zeroed() },
        // SAFETY: as above.
        address: unsafe { std::mem::zeroed() },
        // SAFETY: the pool just made.
        name: unsafe { pool_str(pool, request.upstream.as_bytes()) }
            .unwrap_or(ngx_str_t { len: 0, data: ptr::null_mut() }),
        port: 0,
        resolving: ptr::null_mut(),
        host: host.unwrap_or_default(),
        tls: header(b":scheme") == Some(b"https"),
        head: method == b"HEAD",
        idempotent: !matches!(method, b"POST" | b"PATCH" | b"LOCK"),
        request: bytes,
        sent: 0,
        reader: ResponseReader::new(method == b"HEAD", MAX_RESPONSE),
        received: false,
        // SAFETY: as above.
        timer: unsafe { std::mem::zeroed() },
        outcome: None,
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
        ngx_add_timer(&mut c.timer, timeout);
        CALLS.with(|calls| calls.borrow_mut().insert((Rc::as_ptr(link), token), call));
        match target {
            Target::Block(block) => match peer::balancer_request(pool, log) {
                Some(r) if peer::init_balancer(r, block) => {
                    c.balancer = r;
                    c.peer = &mut (*(*r).upstream).peer;
                    connect(call);
                }
                _ => finish(call, Err("upstream block unavailable".into()), 0),
            },
            Target::Address(address) => {
                set_address(c, address);
                connect(call);
            }
            Target::Name { host, port } => resolve(call, &host, port),
        }
    }
    Ok(())
}

/// What nginx's messages about a call's connection end with: the call's target and peer.
unsafe extern "C" fn log_context(log: *mut ngx_log_t, buf: *mut u8, len: usize) -> *mut u8 {
    // SAFETY: the call's own log carries the live call; nginx hands a buffer of `len` bytes.
    unsafe {
        let c = &*((*log).data as *const Call);
        let mut text = format!(", http call to \"{}\"", String::from_utf8_lossy(crate::ffi::bytes(&c.name)));
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
    c.own_peer.sockaddr = storage as *mut sockaddr;
    c.own_peer.socklen = len as _;
    c.own_peer.name = &mut c.name;
    c.own_peer.get = Some(ngx_event_get_peer);
    c.own_peer.tries = 1;
    c.own_peer.log = c.log;
}

/// Looks `host` up with the `http {}` block's resolver, then connects to its first address.
///
/// # Safety
/// `call` must be a live boxed call.
unsafe fn resolve(call: *mut Call, host: &str, port: u16) {
    // SAFETY: the live call (the caller's contract); nginx's resolver context is the call's
    // until `ngx_resolve_name_done`, and its handler may run before `ngx_resolve_name`
    // returns (an answer it holds).
    unsafe {
        let c = &mut *call;
        let Some((resolver, timeout)) = peer::resolver() else {
            return finish(call, Err("no resolver".into()), 0);
        };
        let ctx = ngx_resolve_start(resolver, ptr::null_mut());
        if ctx.is_null() || ctx as isize == -1 {
            return finish(call, Err("no resolver".into()), 0);
        }
        let Some(name) = pool_str(c.pool, host.as_bytes()) else { return finish(call, Err("out of memory".into()), 0) };
        (*ctx).name = name;
        (*ctx).handler = Some(on_resolved);
        (*ctx).data = call as *mut c_void;
        (*ctx).timeout = timeout;
        c.port = port;
        c.stage = Stage::Resolving;
        c.resolving = ctx;
        if ngx_resolve_name(ctx) != NGX_OK as isize {
            c.resolving = ptr::null_mut(); // freed by the resolver
            finish(call, Err(format!("{host} could not be resolved")), 0);
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
                return finish(call, Err(format!("{host} could not be resolved ({reason})")), 0);
            }
            let chosen = &*(*ctx).addrs.add(rand_index((*ctx).naddrs));
            let len = (chosen.socklen as usize).min(size_of::<libc::sockaddr_storage>());
            ptr::copy_nonoverlapping(chosen.sockaddr as *const u8, ptr::addr_of_mut!(c.address) as *mut u8, len);
            ngx_resolve_name_done(ctx);
            c.own_peer.sockaddr = ptr::addr_of_mut!(c.address) as *mut sockaddr;
            c.own_peer.socklen = len as _;
            ngx_inet_set_port(c.own_peer.sockaddr, c.port);
            c.own_peer.name = &mut c.name;
            c.own_peer.get = Some(ngx_event_get_peer);
            c.own_peer.tries = 1;
            c.own_peer.log = c.log;
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
        let c = &mut *call;
        c.stage = Stage::Connecting;
        c.sent = 0;
        c.received = false;
        c.reader = ResponseReader::new(c.head, MAX_RESPONSE);
        let rc = ngx_event_connect_peer(c.peer);
        attach(call, rc);
    }
}

/// A kept connection that does not suit the call (TLS for another host, or plain for a TLS
/// call) is closed, and a new one opened to the same peer.
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
            return finish(call, Err("no live upstreams".into()), 0);
        }
        if rc == NGX_DECLINED as isize {
            return next_peer(call, "connection failed");
        }
        let connection = (*c.peer).connection;
        if rc == NGX_ERROR as isize || connection.is_null() {
            return finish(call, Err("connection failed".into()), NGX_PEER_FAILED);
        }
        (*connection).data = call as *mut c_void;
        (*connection).log = c.log;
        (*connection).requests += 1;
        if (*connection).pool.is_null() {
            (*connection).pool = ngx_create_pool(128, c.log);
            if (*connection).pool.is_null() {
                return finish(call, Err("out of memory".into()), 0);
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

/// The connection is up: TLS first if the call wants it, then the request.
///
/// # Safety
/// `call` must be a live boxed call with a connection.
unsafe fn connected(call: *mut Call) {
    // SAFETY: the live call and its connection.
    unsafe {
        let c = &mut *call;
        let connection = (*c.peer).connection;
        let secure = !(*connection).ssl.is_null();
        if (*c.peer).cached() != 0 && (c.tls != secure || (secure && !tls::serves(connection, &c.host))) {
            return reconnect(call);
        }
        if secure || !c.tls {
            c.stage = Stage::Sending;
            return send(call);
        }
        let Some(client) = WasmConf::of_cycle(ngx::ffi::ngx_cycle).and_then(|conf| conf.tls.as_ref()) else {
            return finish(call, Err("TLS is not configured".into()), 0);
        };
        c.stage = Stage::Handshaking;
        match client.handshake(c.peer, connection, &c.host, on_handshake) {
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
            let outcome = client
                .map_or(Err("TLS is not configured".into()), |client| client.established(c.peer, connection, &c.host));
            if let Err(reason) = outcome {
                return next_peer(call, &reason);
            }
            (*(*connection).read).handler = Some(on_read);
            (*(*connection).write).handler = Some(on_write);
            c.stage = Stage::Sending;
            send(call);
        })
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
        guard((*call).log, (), || match (*call).stage {
            Stage::Connecting => connected(call),
            Stage::Sending => send(call),
            _ => {}
        })
    }
}

unsafe extern "C" fn on_read(event: *mut ngx_event_t) {
    // SAFETY: nginx runs the connection's read handler with its event, while the call is live.
    unsafe {
        let call = call_of(event);
        guard((*call).log, (), || {
            if matches!((*call).stage, Stage::Sending | Stage::Reading) {
                receive(call)
            }
        })
    }
}

/// Sends what is left of the request, then reads.
///
/// # Safety
/// `call` must be a live boxed call with a connection.
unsafe fn send(call: *mut Call) {
    // SAFETY: the live call and its connection.
    unsafe {
        let c = &mut *call;
        let connection = (*c.peer).connection;
        while c.sent < c.request.len() {
            let rest = &c.request[c.sent..];
            let n = (*connection).send.expect("send")(connection, rest.as_ptr() as *mut u8, rest.len());
            if n == NGX_AGAIN as isize {
                if ngx_handle_write_event((*connection).write, 0) != NGX_OK as isize {
                    next_peer(call, "connection failed");
                }
                return;
            }
            if n <= 0 {
                return next_peer(call, "connection failed");
            }
            c.sent += n as usize;
        }
        c.stage = Stage::Reading;
        if !c.balancer.is_null() {
            (*(*c.balancer).upstream).set_request_body_sent(1);
        }
        if ngx_handle_read_event((*connection).read, 0) != NGX_OK as isize {
            return next_peer(call, "connection failed");
        }
        if (*(*connection).read).ready() != 0 {
            receive(call);
        }
    }
}

/// Reads what has arrived of the response.
///
/// # Safety
/// `call` must be a live boxed call with a connection.
unsafe fn receive(call: *mut Call) {
    // SAFETY: the live call and its connection.
    unsafe {
        let c = &mut *call;
        let connection = (*c.peer).connection;
        // Not zeroed first: recv writes the `n` bytes that are then read.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 16384];
        loop {
            let n = (*connection).recv.expect("recv")(connection, chunk.as_mut_ptr() as *mut u8, chunk.len());
            let progress = match n {
                n if n == NGX_AGAIN as isize => break,
                n if n < 0 && !c.received => return next_peer(call, "connection failed"),
                n if n < 0 => return finish(call, Err("connection failed".into()), NGX_PEER_FAILED),
                // A kept connection the server closed meanwhile, say: the next peer.
                0 if !c.received => return next_peer(call, "upstream closed the connection before answering"),
                0 => c.reader.closed(),
                n => {
                    c.received = true;
                    c.reader.read(std::slice::from_raw_parts(chunk.as_ptr() as *const u8, n as usize))
                }
            };
            match progress {
                Ok(Progress::Complete) => {
                    let reader = std::mem::replace(&mut c.reader, ResponseReader::new(false, 0));
                    let (response, persistent) = reader.take();
                    if !c.balancer.is_null() {
                        (*(*c.balancer).upstream).set_keepalive(persistent as u32);
                    }
                    return finish(call, Ok(response), 0);
                }
                Ok(Progress::Reading) => {}
                Err(reason) => return finish(call, Err(reason.into()), NGX_PEER_FAILED),
            }
        }
        if ngx_handle_read_event((*connection).read, 0) != NGX_OK as isize {
            finish(call, Err("connection failed".into()), NGX_PEER_FAILED);
        }
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
        let again = (*c.peer).free.is_some() && (*c.peer).tries > 0 && (c.idempotent || c.sent == 0);
        if again {
            connect(call);
        } else {
            finish(call, Err(reason.into()), 0);
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

/// Stops everything the call has under way: its timer, its resolution, its peer.
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
        release_peer(c, state);
        c.stage = Stage::Finished;
    }
}

unsafe extern "C" fn on_timeout(event: *mut ngx_event_t) {
    // SAFETY: the call's timer carries the live call.
    unsafe {
        let call = (*event).data as *mut Call;
        guard((*call).log, (), || finish(call, Err("timeout".into()), NGX_PEER_FAILED))
    }
}

/// Ends the exchange (the peer given back with `state`) and posts the outcome's delivery.
///
/// # Safety
/// `call` must be a live boxed call.
unsafe fn finish(call: *mut Call, outcome: Result<HttpCallResponse, String>, state: u32) {
    // SAFETY: the live call; its delivery event is its own.
    unsafe {
        let c = &mut *call;
        if c.stage == Stage::Finished {
            return;
        }
        stop(c, state);
        if let Err(reason) = &outcome {
            crate::ffi::log_error(
                ngx::ffi::NGX_LOG_ERR as usize,
                c.log,
                &format!("inwasm: http call failed: {reason}"),
            );
        }
        c.outcome = Some(outcome);
        ngx_post_event(&mut c.done, ptr::addr_of_mut!(ngx_posted_events));
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

unsafe extern "C" fn deliver(event: *mut ngx_event_t) {
    // SAFETY: the posted event carries the boxed call, taken back here once.
    unsafe {
        let mut call = Box::from_raw((*event).data as *mut Call);
        CALLS.with(|calls| calls.borrow_mut().remove(&(Rc::as_ptr(&call.link), call.token)));
        let outcome = call.outcome.take().unwrap_or_else(|| Err("lost".into()));
        guard(call.link.log(), (), || {
            call.link.deliver(|vm, plugin| vm.on_http_call_response(plugin, call.token, outcome));
        });
        ngx_destroy_pool(call.pool);
    }
}
