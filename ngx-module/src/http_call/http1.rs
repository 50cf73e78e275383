//! An http call's exchange: its HTTP/1.1 request (made and checked by
//! `inwasm_host::http1_client`) sent on the call's connection, the response read as it
//! arrives; the connection goes back to the upstream block's keepalive cache when the
//! response lets it.

use std::mem::MaybeUninit;

use inwasm_host::http1_client::{Progress, ResponseReader};
use ngx::ffi::{ngx_handle_read_event, ngx_handle_write_event, NGX_AGAIN, NGX_OK, NGX_PEER_FAILED};

use super::{finish, next_peer, Call, Exchange, Outcome, MAX_RESPONSE};

pub struct Http1 {
    request: Vec<u8>,
    sent: usize,
    reader: ResponseReader,
    received: bool,
    /// A HEAD request, whose response has no body.
    head: bool,
    /// A request that may be sent to a second peer after reaching a first (not POST, PATCH
    /// or LOCK, as nginx's `proxy_next_upstream` holds).
    idempotent: bool,
}

impl Http1 {
    pub fn new(request: Vec<u8>, method: &[u8]) -> Http1 {
        let head = method == b"HEAD";
        Http1 {
            request,
            sent: 0,
            reader: ResponseReader::new(head, MAX_RESPONSE),
            received: false,
            head,
            idempotent: !matches!(method, b"POST" | b"PATCH" | b"LOCK"),
        }
    }

    /// Whether the request may go to another peer, which then gets it from the start.
    pub fn may_retry(&mut self) -> bool {
        let again = self.idempotent || self.sent == 0;
        if again {
            self.sent = 0;
            self.received = false;
            self.reader = ResponseReader::new(self.head, MAX_RESPONSE);
        }
        again
    }
}

/// The call's exchange, which is an http call's.
///
/// # Safety
/// `call` must be a live boxed http call.
unsafe fn http1<'a>(call: *mut Call) -> &'a mut Http1 {
    // SAFETY: per the caller.
    match unsafe { &mut (*call).exchange } {
        Exchange::Http(http) => http,
        Exchange::Grpc(_) => unreachable!("an http call"),
    }
}

/// Sends what is left of the request, then reads.
///
/// # Safety
/// `call` must be a live boxed http call with a connection.
pub unsafe fn send(call: *mut Call) {
    // SAFETY: the live call and its connection.
    unsafe {
        let connection = (*(*call).peer).connection;
        let http = http1(call);
        while http.sent < http.request.len() {
            let rest = &http.request[http.sent..];
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
            http.sent += n as usize;
        }
        let balancer = (*call).balancer;
        if !balancer.is_null() {
            (*(*balancer).upstream).set_request_body_sent(1);
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
/// `call` must be a live boxed http call with a connection.
pub unsafe fn receive(call: *mut Call) {
    // SAFETY: the live call and its connection.
    unsafe {
        let connection = (*(*call).peer).connection;
        let http = http1(call);
        // Not zeroed first: recv writes the `n` bytes that are then read.
        let mut chunk = [MaybeUninit::<u8>::uninit(); 16384];
        loop {
            let n = (*connection).recv.expect("recv")(connection, chunk.as_mut_ptr() as *mut u8, chunk.len());
            let progress = match n {
                n if n == NGX_AGAIN as isize => break,
                n if n < 0 && !http.received => return next_peer(call, "connection failed"),
                n if n < 0 => return failed(call, "connection failed"),
                // A kept connection the server closed meanwhile, say: the next peer.
                0 if !http.received => return next_peer(call, "upstream closed the connection before answering"),
                0 => http.reader.closed(),
                n => {
                    http.received = true;
                    http.reader.read(std::slice::from_raw_parts(chunk.as_ptr() as *const u8, n as usize))
                }
            };
            match progress {
                Ok(Progress::Complete) => {
                    let reader = std::mem::replace(&mut http.reader, ResponseReader::new(false, 0));
                    let (response, persistent) = reader.take();
                    let balancer = (*call).balancer;
                    if !balancer.is_null() {
                        (*(*balancer).upstream).set_keepalive(persistent as u32);
                    }
                    return finish(call, vec![Outcome::Http(Ok(response))], 0, None);
                }
                Ok(Progress::Reading) => {}
                Err(reason) => return failed(call, reason),
            }
        }
        if ngx_handle_read_event((*connection).read, 0) != NGX_OK as isize {
            failed(call, "connection failed");
        }
    }
}

/// The peer answered badly: the call fails and the peer is marked failed.
///
/// # Safety
/// `call` must be a live boxed http call.
unsafe fn failed(call: *mut Call, reason: &str) {
    // SAFETY: per the caller.
    unsafe { finish(call, vec![Outcome::Http(Err(reason.into()))], NGX_PEER_FAILED, Some(reason)) }
}
