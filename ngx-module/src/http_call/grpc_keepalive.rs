//! gRPC calls reuse an `upstream {}` block's `keepalive` connections, one call after another
//! (as `grpc_pass` does): when a call ends cleanly, its connection's HTTP/2 state (`h2`'s
//! connection and request sender) goes into a cleanup of the connection's pool, and the
//! block's keepalive cache takes the connection. The next gRPC call the cache hands that
//! connection to takes the state back and opens its stream at once, without a new TCP, TLS
//! or HTTP/2 handshake. The cache closes idle connections by destroying their pool, which
//! drops the state with them; an http call never gets a connection that holds it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use ngx::ffi::{ngx_connection_t, ngx_pool_cleanup_add, ngx_pool_cleanup_t};

use super::grpc::NgxIo;

/// A connection's HTTP/2 state between calls.
pub struct Kept {
    pub sender: SendRequest<Bytes>,
    pub connection: Connection<NgxIo, Bytes>,
}

thread_local! {
    /// The pool cleanups holding HTTP/2 state, by their connection (its address and its
    /// number, unique to each connection a worker makes).
    static HOLDERS: RefCell<HashMap<Key, *mut ngx_pool_cleanup_t>> = RefCell::new(HashMap::new());
}

type Key = (usize, usize);

/// # Safety
/// `c` must be a live connection.
unsafe fn key(c: *mut ngx_connection_t) -> Key {
    // SAFETY: per the caller.
    (c as usize, unsafe { (*c).number } as usize)
}

/// What a pool cleanup holds: the state, and the connection it is registered under.
struct Holder {
    key: Key,
    kept: Kept,
}

/// Drops the state a pool cleanup holds (`data` is the boxed holder), as its pool goes.
unsafe extern "C" fn drop_kept(data: *mut c_void) {
    // SAFETY: `keep` boxed the holder for this cleanup, which runs once (never after `take`,
    // which clears it).
    let holder = unsafe { Box::from_raw(data as *mut Holder) };
    HOLDERS.with(|holders| holders.borrow_mut().remove(&holder.key));
}

/// Puts `state` in `c`'s pool until a call takes it back or the pool goes. `false` when
/// the pool is out of memory (the state is dropped).
///
/// # Safety
/// `c` must be a live connection with a pool.
pub unsafe fn keep(c: *mut ngx_connection_t, kept: Kept) -> bool {
    // SAFETY: a live connection and pool (the caller's contract); the cleanup owns the
    // boxed holder.
    unsafe {
        let cleanup = ngx_pool_cleanup_add((*c).pool, 0);
        if cleanup.is_null() {
            return false;
        }
        let key = key(c);
        (*cleanup).handler = Some(drop_kept);
        (*cleanup).data = Box::into_raw(Box::new(Holder { key, kept })) as *mut c_void;
        HOLDERS.with(|holders| holders.borrow_mut().insert(key, cleanup));
        true
    }
}

/// Whether `c` holds HTTP/2 state (a connection kept after a gRPC call).
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn holds(c: *mut ngx_connection_t) -> bool {
    // SAFETY: per the caller.
    let key = unsafe { key(c) };
    HOLDERS.with(|holders| holders.borrow().contains_key(&key))
}

/// Takes back the HTTP/2 state `c` holds, if any.
///
/// # Safety
/// `c` must be a live connection.
pub unsafe fn take(c: *mut ngx_connection_t) -> Option<Kept> {
    // SAFETY: a registered cleanup is live (its pool's destruction unregisters it) and holds
    // a boxed holder; clearing its handler leaves the box to us alone.
    unsafe {
        let key = key(c);
        let cleanup = HOLDERS.with(|holders| holders.borrow_mut().remove(&key))?;
        (*cleanup).handler = None;
        let holder = Box::from_raw((*cleanup).data as *mut Holder);
        (*cleanup).data = ptr::null_mut();
        Some(holder.kept)
    }
}
