//! `proxy_http_call` through nginx's event loop: a non-blocking HTTP/1.1 exchange with an
//! `upstream {}` block's server (round robin) or a `host:port`. Once started, the outcome
//! always reaches the filter later, from the event loop: a response, or a failure
//! ("connection failed", "timeout", ...) that arrives with no headers; unless the stream
//! that made it ends first, which cancels it (connection closed, memory freed at once).
//!
//! A worker has at most half its `worker_connections` in calls at once (the rest are its
//! clients'), and a call's response at most [`MAX_RESPONSE`] bytes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inwasm_host::{HostResult, HttpCallRequest, HttpCallResponse, Status};
use ngx::ffi::{
    ngx_add_timer, ngx_addr_t, ngx_close_connection, ngx_connection_t, ngx_create_pool, ngx_destroy_pool,
    ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t, ngx_handle_read_event, ngx_handle_write_event,
    ngx_http_upstream_main_conf_t, ngx_http_upstream_module, ngx_http_upstream_server_t, ngx_http_upstream_srv_conf_t,
    ngx_log_t, ngx_msec_t, ngx_parse_url, ngx_peer_connection_t, ngx_pool_t, ngx_post_event, ngx_posted_events,
    ngx_str_t, ngx_url_t, NGX_AGAIN, NGX_OK,
};
use ngx::http::HttpModuleConfExt;

use crate::ffi::{bytes, guard};
use crate::http_wire::{parse_response, request_bytes, Parsed};
use crate::root_link::RootLink;

/// A call without a timeout (0) still ends after this long.
pub const LONGEST_CALL: Duration = Duration::from_secs(60);
/// The largest response a call accepts.
pub const MAX_RESPONSE: usize = 4 << 20;

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
    unsafe { close(call) };
}

/// The worker exits: the calls still in flight are closed. (Their events are cancelable, so
/// they do not hold up a reload; no connection may outlive its worker.)
pub fn close_all() {
    let calls: Vec<*mut Call> = CALLS.with(|calls| calls.borrow_mut().drain().map(|(_, call)| call).collect());
    for call in calls {
        // SAFETY: live calls, just taken out of the registry (so nothing else frees them).
        unsafe { close(call) };
    }
}

/// Closes a call's connection (and with it the connection's timers), unposts its delivery
/// and frees it.
///
/// # Safety
/// `call` must be a live boxed call no longer in the registry.
unsafe fn close(call: *mut Call) {
    // SAFETY: per the caller, the box is ours to free; its connection and pool are live.
    unsafe {
        let mut call = Box::from_raw(call);
        if !call.peer.connection.is_null() {
            ngx_close_connection(call.peer.connection);
        }
        if call.done.posted() != 0 {
            ngx::ffi::ngx_delete_posted_event(&mut call.done);
        }
        ngx_destroy_pool(call.pool);
    }
}

struct Call {
    link: Rc<RootLink>,
    token: u32,
    pool: *mut ngx_pool_t,
    peer: ngx_peer_connection_t,
    name: ngx_str_t,
    request: Vec<u8>,
    sent: usize,
    received: Vec<u8>,
    timeout: ngx_msec_t,
    outcome: Option<Result<HttpCallResponse, String>>,
    /// Posted to deliver the outcome from the event loop.
    done: ngx_event_t,
}

/// Starts a call for the root behind `link`; its outcome arrives through the link. An
/// upstream that is neither an `upstream {}` block nor `host:port` is refused at once with
/// `BAD_ARGUMENT`, as Envoy refuses an unknown cluster.
pub fn start(link: &Rc<RootLink>, token: u32, request: HttpCallRequest) -> HostResult<()> {
    let log = link.log();
    // SAFETY: the link's log is the cycle's.
    let pool = unsafe { ngx_create_pool(4096, log) };
    if pool.is_null() {
        return Err(Status::InternalFailure);
    }
    // SAFETY: a new pool.
    let Some(address) = (unsafe { resolve(pool, &request.upstream) }) else {
        // SAFETY: the pool just made, used by nothing else.
        unsafe { ngx_destroy_pool(pool) };
        return Err(Status::BadArgument);
    };
    let timeout = request.timeout.unwrap_or(LONGEST_CALL).min(LONGEST_CALL).as_millis().max(1) as ngx_msec_t;
    let call = Box::into_raw(Box::new(Call {
        link: link.clone(),
        token,
        pool,
        // SAFETY: an all-zero peer connection is nginx's empty one.
        peer: unsafe { std::mem::zeroed() },
        name: ngx_str_t { len: 0, data: ptr::null_mut() },
        request: request_bytes(&request),
        sent: 0,
        received: Vec::new(),
        timeout,
        outcome: None,
        // SAFETY: an all-zero event is nginx's idle event.
        done: unsafe { std::mem::zeroed() },
    }));
    // SAFETY: the call is boxed until `deliver` takes it back; its pool is live.
    unsafe {
        (*call).done.handler = Some(deliver);
        (*call).done.data = call as *mut c_void;
        (*call).done.log = log;
        CALLS.with(|calls| calls.borrow_mut().insert((Rc::as_ptr(link), token), call));
        connect(call, address, &request.upstream, log);
    }
    Ok(())
}

/// An address for `upstream`: a server of the `upstream {}` block of that name (round
/// robin), else `upstream` itself as `host:port` (a host name is resolved by the system,
/// synchronously: prefer addresses or upstream blocks).
///
/// # Safety
/// `pool` must be a live pool.
unsafe fn resolve(pool: *mut ngx_pool_t, upstream: &str) -> Option<ngx_addr_t> {
    // SAFETY: a live pool (the caller's contract); nginx's URL parser allocates from it.
    unsafe {
        if let Some(address) = upstream_block_address(upstream) {
            return Some(address);
        }
        if !upstream.contains(':') {
            return None; // neither an upstream block nor host:port
        }
        let text = ngx_str_t { len: upstream.len(), data: ngx::ffi::ngx_pstrdup(pool, &mut str_of(upstream)) };
        let mut url: ngx_url_t = std::mem::zeroed();
        url.url = text;
        url.default_port = 80;
        if text.data.is_null() || ngx_parse_url(pool, &mut url) != NGX_OK as isize || url.naddrs == 0 {
            return None;
        }
        Some(*url.addrs)
    }
}

fn str_of(text: &str) -> ngx_str_t {
    ngx_str_t { len: text.len(), data: text.as_ptr() as *mut u8 }
}

/// # Safety
/// Must run in a worker (the current cycle configured).
unsafe fn upstream_block_address(name: &str) -> Option<ngx_addr_t> {
    // SAFETY: the current cycle's upstream main configuration and its blocks' servers live as long as
    // the cycle.
    unsafe {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let umcf: *mut ngx_http_upstream_main_conf_t =
            (*ngx::ffi::ngx_cycle).http_main_conf_unchecked(&*ptr::addr_of!(ngx_http_upstream_module))?.as_ptr();
        let blocks = (*umcf).upstreams.as_slice::<*mut ngx_http_upstream_srv_conf_t>();
        let block = blocks.iter().map(|b| &**b).find(|b| bytes(&b.host) == name.as_bytes() && !b.servers.is_null())?;
        let servers = (*block.servers).as_slice::<ngx_http_upstream_server_t>();
        let addresses: Vec<ngx_addr_t> =
            servers.iter().flat_map(|s| (0..s.naddrs).map(move |i| *s.addrs.add(i))).collect();
        (!addresses.is_empty()).then(|| addresses[NEXT.fetch_add(1, Ordering::Relaxed) % addresses.len()])
    }
}

/// # Safety
/// `call` must be a live boxed call.
unsafe fn connect(call: *mut Call, address: ngx_addr_t, upstream: &str, log: *mut ngx_log_t) {
    // SAFETY: `call` is the live boxed call (the caller's contract); its pool and peer are its own.
    unsafe {
        let c = &mut *call;
        c.name = ngx_str_t { len: upstream.len(), data: ngx::ffi::ngx_pstrdup(c.pool, &mut str_of(upstream)) };
        c.peer.sockaddr = address.sockaddr;
        c.peer.socklen = address.socklen;
        c.peer.name = &mut c.name;
        c.peer.get = Some(ngx_event_get_peer);
        c.peer.log = log;
        c.peer.set_log_error(1); // NGX_ERROR_ERR
        let rc = ngx_event_connect_peer(&mut c.peer);
        let connection = c.peer.connection;
        if connection.is_null() || !(rc == NGX_OK as isize || rc == NGX_AGAIN as isize) {
            return finish(call, Err("connection failed".into()));
        }
        (*connection).data = call as *mut c_void;
        (*connection).log = log;
        for event in [(*connection).read, (*connection).write] {
            (*event).log = log;
            (*event).set_cancelable(1);
        }
        (*(*connection).read).handler = Some(on_read);
        (*(*connection).write).handler = Some(on_write);
        ngx_add_timer((*connection).write, c.timeout);
        ngx_add_timer((*connection).read, c.timeout);
        if rc == NGX_OK as isize {
            on_write((*connection).write);
        }
    }
}

/// # Safety
/// `event` must be a call connection's event.
unsafe fn call_of(event: *mut ngx_event_t) -> (*mut ngx_connection_t, *mut Call) {
    // SAFETY: a call's connection events carry the connection, whose data is the call.
    unsafe {
        let connection = (*event).data as *mut ngx_connection_t;
        (connection, (*connection).data as *mut Call)
    }
}

unsafe extern "C" fn on_write(event: *mut ngx_event_t) {
    // SAFETY: nginx runs the connection's write handler with its event, while the call is live.
    unsafe {
        let (connection, call) = call_of(event);
        guard((*connection).log, (), || {
            if (*event).timedout() != 0 {
                return finish(call, Err("timeout".into()));
            }
            let c = &mut *call;
            while c.sent < c.request.len() {
                let rest = &c.request[c.sent..];
                let n = (*connection).send.expect("send")(connection, rest.as_ptr() as *mut u8, rest.len());
                if n == NGX_AGAIN as isize {
                    if ngx_handle_write_event(event, 0) != NGX_OK as isize {
                        finish(call, Err("connection failed".into()));
                    }
                    return;
                }
                if n <= 0 {
                    return finish(call, Err("connection failed".into()));
                }
                c.sent += n as usize;
            }
            if ngx_handle_read_event((*connection).read, 0) != NGX_OK as isize {
                return finish(call, Err("connection failed".into()));
            }
            if (*(*connection).read).ready() != 0 {
                on_read((*connection).read);
            }
        })
    }
}

unsafe extern "C" fn on_read(event: *mut ngx_event_t) {
    // SAFETY: nginx runs the connection's read handler with its event, while the call is live.
    unsafe {
        let (connection, call) = call_of(event);
        guard((*connection).log, (), || {
            if (*event).timedout() != 0 {
                return finish(call, Err("timeout".into()));
            }
            let c = &mut *call;
            let mut closed = false;
            loop {
                let mut chunk = [0u8; 16384];
                let n = (*connection).recv.expect("recv")(connection, chunk.as_mut_ptr(), chunk.len());
                if n == NGX_AGAIN as isize {
                    break;
                }
                if n < 0 {
                    return finish(call, Err("connection failed".into()));
                }
                if n == 0 {
                    closed = true;
                    break;
                }
                c.received.extend_from_slice(&chunk[..n as usize]);
                if c.received.len() > MAX_RESPONSE {
                    return finish(call, Err("response too large".into()));
                }
            }
            match parse_response(&c.received, closed) {
                Parsed::Complete(response) => finish(call, Ok(response)),
                Parsed::Invalid(reason) => finish(call, Err(reason.into())),
                Parsed::Incomplete => {
                    if ngx_handle_read_event(event, 0) != NGX_OK as isize {
                        finish(call, Err("connection failed".into()));
                    }
                }
            }
        })
    }
}

/// Ends the exchange and posts the outcome's delivery to the event loop.
///
/// # Safety
/// `call` must be a live boxed call.
unsafe fn finish(call: *mut Call, outcome: Result<HttpCallResponse, String>) {
    // SAFETY: `call` is the live boxed call; its connection, if any, is closed once.
    unsafe {
        let c = &mut *call;
        if !c.peer.connection.is_null() {
            ngx_close_connection(c.peer.connection);
            c.peer.connection = ptr::null_mut();
        }
        c.outcome = Some(outcome);
        ngx_post_event(&mut c.done, ptr::addr_of_mut!(ngx_posted_events));
    }
}

unsafe extern "C" fn deliver(event: *mut ngx_event_t) {
    // SAFETY: the posted event carries the boxed call, taken back here once.
    unsafe {
        let call = Box::from_raw((*event).data as *mut Call);
        CALLS.with(|calls| calls.borrow_mut().remove(&(Rc::as_ptr(&call.link), call.token)));
        guard(call.link.log(), (), || {
            let outcome = call.outcome.clone().unwrap_or_else(|| Err("lost".into()));
            call.link.deliver(|vm, plugin| vm.on_http_call_response(plugin, call.token, outcome));
        });
        if !call.pool.is_null() {
            ngx_destroy_pool(call.pool);
        }
    }
}
