//! A gRPC call's exchange: one HTTP/2 stream (the `h2` crate, driven by nginx's events on the
//! call's own connection: cleartext HTTP/2 with prior knowledge as nginx's `grpc_pass
//! grpc://`, or over TLS negotiating `h2` as `grpc_pass grpcs://`), its request and framing
//! as Envoy's gRPC client makes them and its response read into the filter's events
//! (`inwasm_host::grpc_client`), with Envoy's status rules.
//!
//! `h2` is polled, never awaited: each time nginx says the connection can be read or
//! written, and after each message the filter sends, every part (the connection, the
//! response, its body) is polled until none makes progress. Waiting is nginx's (its read
//! and write events); the waker does nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::client::{Connection, ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use inwasm_host::grpc::status;
use inwasm_host::grpc_client::{self, with_details, GrpcEvent, ResponseReader, DEADLINE_MESSAGE};
use inwasm_host::{GrpcCallRequest, Pairs, Status};
use ngx::ffi::{ngx_connection_t, ngx_handle_read_event, ngx_handle_write_event, NGX_AGAIN, NGX_OK};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::grpc_keepalive::{self, Kept};
use super::peer::Target;
use super::{find, finish, open, tell, Call, Exchange, Outcome, Stage};
use crate::root_link::RootLink;

/// An nginx connection as `h2` reads and writes it: non-blocking, and when it would block,
/// nginx's event for it armed.
pub struct NgxIo(*mut ngx_connection_t);

impl AsyncRead for NgxIo {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let c = self.0;
        // SAFETY: the call's live connection (the exchange is shut before it closes); recv
        // writes at most the unfilled part's length.
        unsafe {
            let unfilled = buf.unfilled_mut();
            let n = (*c).recv.expect("recv")(c, unfilled.as_mut_ptr() as *mut u8, unfilled.len());
            if n == NGX_AGAIN as isize {
                return wait(ngx_handle_read_event((*c).read, 0));
            }
            if n < 0 {
                return Poll::Ready(Err(io::Error::other("recv failed")));
            }
            buf.assume_init(n as usize);
            buf.advance(n as usize);
            Poll::Ready(Ok(()))
        }
    }
}

impl AsyncWrite for NgxIo {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let c = self.0;
        // SAFETY: as in `poll_read`; send reads `data`.
        unsafe {
            let n = (*c).send.expect("send")(c, data.as_ptr() as *mut u8, data.len());
            if n == NGX_AGAIN as isize {
                return wait(ngx_handle_write_event((*c).write, 0));
            }
            if n < 0 {
                return Poll::Ready(Err(io::Error::other("send failed")));
            }
            Poll::Ready(Ok(n as usize))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The connection would block: the poll waits for nginx's event (`armed`: arming it went
/// well).
fn wait<T>(armed: isize) -> Poll<io::Result<T>> {
    if armed == NGX_OK as isize {
        Poll::Pending
    } else {
        Poll::Ready(Err(io::Error::other("cannot wait for the connection")))
    }
}

type Handshake = Pin<Box<dyn Future<Output = Result<(SendRequest<Bytes>, Connection<NgxIo, Bytes>), h2::Error>>>>;

/// Where the HTTP/2 stream is.
enum Phase {
    /// Before the connection is up.
    Waiting,
    Handshake(Handshake),
    /// HTTP/2 is up (just now, or kept from an earlier call); the stream opens once the
    /// connection may take one more.
    Ready(SendRequest<Bytes>),
    /// The request is sent; waiting for the response headers.
    Response(ResponseFuture),
    /// Reading the response body (then its trailers).
    Body(RecvStream),
    Done,
}

pub struct Grpc {
    request: Option<http::Request<()>>,
    /// What the filter has sent that the stream has not taken yet: a unary call's message,
    /// a stream's messages before it opened (`true`: end of stream after it).
    queued: Vec<(Bytes, bool)>,
    phase: Phase,
    connection: Option<Connection<NgxIo, Bytes>>,
    /// The connection's request sender once the stream is open: it goes with the connection
    /// to the keepalive cache when the call ends cleanly (`keep_connection`).
    sender: Option<SendRequest<Bytes>>,
    sending: Option<SendStream<Bytes>>,
    reader: ResponseReader,
    /// The server has answered (its status messages are the upstream's).
    answered: bool,
}

impl Grpc {
    /// What the filter gets when the call fails for `reason`: the answer Envoy gives itself
    /// (UNAVAILABLE; at the deadline, Envoy's router's message), read as any answer.
    pub fn failed(&mut self, reason: &str, deadline: bool) -> Vec<Outcome> {
        let mut message = if deadline { DEADLINE_MESSAGE.to_string() } else { reason.to_string() };
        if deadline {
            with_details(&mut message, Some("response_timeout"));
        }
        let code = status::UNAVAILABLE.to_string();
        let answer: Pairs = [(":status", "200"), ("grpc-status", code.as_str()), ("grpc-message", message.as_str())]
            .into_iter()
            .collect();
        self.reader.on_headers(answer, true).into_iter().map(Outcome::Grpc).collect()
    }

    /// A call is sent to another peer only if its stream never opened.
    pub fn may_retry(&mut self) -> bool {
        let again = matches!(self.phase, Phase::Waiting | Phase::Handshake(_) | Phase::Ready(_));
        if again {
            self.phase = Phase::Waiting;
            self.connection = None;
        }
        again
    }

    /// Drops the HTTP/2 state (before its connection closes).
    pub fn shut(&mut self) {
        self.phase = Phase::Done;
        self.sending = None;
        self.sender = None;
        self.connection = None;
    }
}

/// Starts gRPC call `token` (a unary call when the request has a message, else a stream) for
/// the root behind `link`. The target is an `upstream {}` block or `host:port` named by the
/// filter's upstream (or a `GrpcService`'s cluster), cleartext unless written
/// `grpcs://NAME` (as `grpc_pass` takes it): an unknown name is refused with
/// `PARSE_FAILURE`, as Envoy refuses an unknown cluster.
pub fn start(link: &Rc<RootLink>, token: u32, request: GrpcCallRequest) -> Result<(), (Status, String)> {
    let target = grpc_client::target(&request.upstream).map_err(|status| (status, "invalid GrpcService".into()))?;
    let named = String::from_utf8_lossy(&target.cluster).into_owned();
    let (tls, upstream) = scheme(&named);
    let peer = Target::of(upstream).map_err(|reason| (Status::ParseFailure, reason))?;
    // An authority that is the cluster's name (a call by name, or a `GrpcService` without
    // one) is the upstream's name, without the scheme.
    let authority = match target.authority == target.cluster {
        true => upstream.to_string(),
        false => String::from_utf8_lossy(&target.authority).into_owned(),
    };
    let mut metadata = target.metadata;
    metadata.extend(&request.initial_metadata);
    let headers = grpc_client::request_headers(
        authority.as_bytes(),
        &request.service,
        &request.method,
        request.timeout,
        &metadata,
    );
    let http_request = http_request(&authority, &headers).map_err(|reason| (Status::BadArgument, reason))?;
    let unary = request.message.is_some();
    let queued = request.message.map(|m| (Bytes::from(grpc_client::frame(&m)), true)).into_iter().collect();
    let grpc = Grpc {
        request: Some(http_request),
        queued,
        phase: Phase::Waiting,
        connection: None,
        sender: None,
        sending: None,
        reader: ResponseReader::new(unary),
        answered: false,
    };
    // A unary call's deadline is the filter's; a stream has none (as in Envoy's Wasm filter).
    let timeout = request.timeout.filter(|_| unary);
    let exchange = Exchange::Grpc(Box::new(grpc));
    open(link, token, upstream, peer, &headers, tls, timeout, exchange).map_err(|r| (Status::InternalFailure, r))
}

/// Whether a call's upstream asks for TLS (`grpcs://NAME`), and the name without the scheme
/// (`grpc://NAME` is cleartext, as is a bare name).
fn scheme(upstream: &str) -> (bool, &str) {
    match (upstream.strip_prefix("grpcs://"), upstream.strip_prefix("grpc://")) {
        (Some(name), _) => (true, name),
        (None, Some(name)) => (false, name),
        (None, None) => (false, upstream),
    }
}

/// The HTTP/2 request of `headers` (pseudo-headers first, as `grpc_client` makes them).
fn http_request(authority: &str, headers: &Pairs) -> Result<http::Request<()>, String> {
    let path = headers.exact_value(b":path").map(|v| String::from_utf8_lossy(v).into_owned());
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri(format!("http://{authority}{}", path.unwrap_or_default()));
    for (name, value) in headers.iter().filter(|(k, _)| !k.starts_with(b":")) {
        builder = builder.header(name, value);
    }
    builder.body(()).map_err(|e| format!("invalid gRPC request: {e}"))
}

/// Sends `message` on stream `token` (`end_of_stream`: half-close after it; an empty message
/// with it only half-closes).
pub fn send(link: &Rc<RootLink>, token: u32, message: &[u8], end_of_stream: bool) -> Result<(), Status> {
    let call = find(link, token).ok_or(Status::NotFound)?;
    // SAFETY: a registered call is live.
    unsafe {
        let Exchange::Grpc(grpc) = &mut (*call).exchange else { return Err(Status::BadArgument) };
        if (*call).stage == Stage::Finished || grpc.queued.last().is_some_and(|(_, end)| *end) {
            return Err(Status::NotFound);
        }
        let data = if message.is_empty() { Bytes::new() } else { Bytes::from(grpc_client::frame(message)) };
        grpc.queued.push((data, end_of_stream));
        if (*call).stage == Stage::Exchanging {
            drive(call);
        }
    }
    Ok(())
}

/// The gRPC exchange of the call.
///
/// # Safety
/// `call` must be a live boxed gRPC call.
unsafe fn grpc<'a>(call: *mut Call) -> &'a mut Grpc {
    // SAFETY: per the caller.
    match unsafe { &mut (*call).exchange } {
        Exchange::Grpc(grpc) => grpc,
        Exchange::Http(_) => unreachable!("a gRPC call"),
    }
}

/// The connection is up: the HTTP/2 handshake starts, or on a kept connection the stream
/// opens at once.
///
/// # Safety
/// `call` must be a live boxed gRPC call with a connection.
pub unsafe fn begin(call: *mut Call) {
    // SAFETY: the live call and its connection, which outlives the exchange (`shut`).
    unsafe {
        let connection = (*(*call).peer).connection;
        let grpc = grpc(call);
        match grpc_keepalive::take(connection) {
            Some(kept) => {
                grpc.connection = Some(kept.connection);
                grpc.phase = Phase::Ready(kept.sender);
            }
            None => grpc.phase = Phase::Handshake(Box::pin(h2::client::handshake(NgxIo(connection)))),
        }
        drive(call);
    }
}

/// The call ended cleanly: its connection's HTTP/2 state goes with the connection to the
/// upstream block's keepalive cache (if it has one, and the connection is still good).
///
/// # Safety
/// `call` must be a live boxed gRPC call with a connection.
unsafe fn keep_connection(call: *mut Call) {
    // SAFETY: the live call, its balancer request (when it has one) and its connection.
    unsafe {
        let balancer = (*call).balancer;
        let grpc = grpc(call);
        if balancer.is_null() || !matches!(grpc.phase, Phase::Done) {
            return;
        }
        grpc.sending = None;
        let (Some(sender), Some(mut connection)) = (grpc.sender.take(), grpc.connection.take()) else { return };
        // What the stream's end leaves to send goes out; a connection ending is not kept.
        if Pin::new(&mut connection).poll(&mut Context::from_waker(Waker::noop())).is_ready() {
            return;
        }
        if grpc_keepalive::keep((*(*call).peer).connection, Kept { sender, connection }) {
            let upstream = (*balancer).upstream;
            (*upstream).set_keepalive(1);
            (*upstream).set_request_body_sent(1);
        }
    }
}

/// Polls every part of the exchange until none makes progress, tells the filter what came,
/// and ends the call when the stream has ended.
///
/// # Safety
/// `call` must be a live boxed gRPC call with a connection.
pub unsafe fn drive(call: *mut Call) {
    // SAFETY: the live call; nothing here calls into the filter (outcomes are posted).
    unsafe {
        let grpc = grpc(call);
        let mut cx = Context::from_waker(Waker::noop());
        let mut events = Vec::new();
        let failure = loop {
            match grpc.step(&mut cx, &mut events) {
                Ok(true) => continue,
                Ok(false) => break None,
                Err(reason) => break Some(reason),
            }
        };
        if grpc.answered {
            for event in &mut events {
                if let GrpcEvent::Close(_, message) = event {
                    with_details(message, Some("via_upstream"));
                }
            }
        }
        let outcomes: Vec<Outcome> = events.into_iter().map(Outcome::Grpc).collect();
        let closed = grpc.reader.is_closed();
        let clean = failure.is_none();
        if let Some(reason) = failure.filter(|_| !closed) {
            if !grpc.answered {
                // Never answered (so nothing to tell yet): the peer failed, as a connection
                // that fails does.
                return super::next_peer(call, &reason);
            }
            let mut all = outcomes;
            all.extend(grpc.reader.on_reset().into_iter().map(Outcome::Grpc));
            return finish(call, all, 0, Some(&reason));
        }
        if closed {
            if clean {
                keep_connection(call);
            }
            finish(call, outcomes, 0, None);
        } else if !outcomes.is_empty() {
            tell(call, outcomes);
        }
    }
}

impl Grpc {
    /// Polls each part once; `Ok(true)` when one made progress.
    fn step(&mut self, cx: &mut Context<'_>, events: &mut Vec<GrpcEvent>) -> Result<bool, String> {
        let mut progress = false;
        if let Some(connection) = &mut self.connection {
            match Pin::new(connection).poll(cx) {
                Poll::Ready(Ok(())) => {
                    self.connection = None;
                    if !self.reader.is_closed() && !matches!(self.phase, Phase::Done) {
                        return Err("the server closed the connection".into());
                    }
                }
                Poll::Ready(Err(e)) => return Err(format!("HTTP/2: {e}")),
                Poll::Pending => {}
            }
        }
        match &mut self.phase {
            Phase::Waiting | Phase::Done => {}
            Phase::Handshake(handshake) => match handshake.as_mut().poll(cx) {
                Poll::Ready(Ok((sender, connection))) => {
                    self.connection = Some(connection);
                    self.phase = Phase::Ready(sender);
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(format!("HTTP/2 handshake: {e}")),
                Poll::Pending => {}
            },
            Phase::Ready(sender) => match sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let mut sender = sender.clone();
                    let request = self.request.take().expect("the request, sent once");
                    let (response, sending) =
                        sender.send_request(request, false).map_err(|e| format!("HTTP/2: {e}"))?;
                    self.sender = Some(sender);
                    self.sending = Some(sending);
                    self.phase = Phase::Response(response);
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(format!("HTTP/2: {e}")),
                Poll::Pending => {}
            },
            Phase::Response(response) => match Pin::new(response).poll(cx) {
                Poll::Ready(Ok(answer)) => {
                    self.answered = true;
                    let (parts, body) = answer.into_parts();
                    let mut headers = Pairs::new();
                    headers.push(b":status", parts.status.as_str());
                    headers.extend(parts.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
                    events.extend(self.reader.on_headers(headers, body.is_end_stream()));
                    self.phase = if body.is_end_stream() { Phase::Done } else { Phase::Body(body) };
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(format!("HTTP/2 stream: {e}")),
                Poll::Pending => {}
            },
            Phase::Body(body) => match body.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    events.extend(self.reader.on_data(&data, false));
                    progress = true;
                }
                Poll::Ready(Some(Err(e))) => return Err(format!("HTTP/2 stream: {e}")),
                Poll::Ready(None) => match body.poll_trailers(cx) {
                    Poll::Ready(Ok(Some(trailers))) => {
                        let pairs = trailers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
                        events.extend(self.reader.on_trailers(pairs.collect()));
                        self.phase = Phase::Done;
                        progress = true;
                    }
                    Poll::Ready(Ok(None)) => {
                        events.extend(self.reader.on_data(&[], true));
                        self.phase = Phase::Done;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Err(format!("HTTP/2 stream: {e}")),
                    Poll::Pending => {}
                },
                Poll::Pending => {}
            },
        }
        if let Some(sending) = &mut self.sending {
            for (data, end) in self.queued.drain(..) {
                sending.send_data(data, end).map_err(|e| format!("HTTP/2 send: {e}"))?;
                progress = true;
            }
        }
        Ok(progress)
    }
}
