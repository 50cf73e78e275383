//! A gRPC server for tests, on tonic: service `inwasm.test.Echo`, whose messages are raw
//! bytes (no protobuf: a test filter sends what it likes), on a free port of 127.0.0.1.
//!
//! - `Unary` answers `echo:<message>` with initial metadata `x-echo-meta` (the request's
//!   `x-meta`, or `none`). The message `deny` is refused (PERMISSION_DENIED, `denied`).
//! - `Stream` answers each message with `echo:<message>` (same metadata), and ends OK when
//!   the client half-closes.
//!
//! Anything else is UNIMPLEMENTED.
//!
//! Beside it, `silent_port` accepts connections and never answers (for deadlines: a server
//! that answered late would race the caller's deadline with its own `grpc-timeout`).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use bytes::{Buf, BufMut};
use tokio::sync::oneshot;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::{Grpc, NamedService, StreamingService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// A running server; stopped when dropped.
pub struct GrpcUpstream {
    pub port: u16,
    pub silent_port: u16,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Accepts connections on a free port and holds them, unanswered, for the process's life.
fn silent() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().flatten().collect();
        drop(held);
    });
    port
}

impl GrpcUpstream {
    pub fn start() -> GrpcUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let server = tonic::transport::Server::builder().add_service(Echo);
                let stopped = async {
                    let _ = stopped.await;
                };
                server.serve_with_incoming_shutdown(TcpIncoming::from(listener), stopped).await.expect("serving");
            });
        });
        GrpcUpstream { port, silent_port: silent(), stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Messages as they are on the wire.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut message = vec![0; src.remaining()];
        src.copy_to_slice(&mut message);
        Ok(Some(message))
    }
}

fn echo(message: &[u8]) -> Vec<u8> {
    [b"echo:".as_slice(), message].concat()
}

/// The request's `x-meta` as the response's `x-echo-meta`.
fn with_meta<T, R>(request: &Request<R>, body: T) -> Response<T> {
    let meta = request.metadata().get("x-meta").cloned().unwrap_or_else(|| "none".parse().expect("ascii"));
    let mut response = Response::new(body);
    response.metadata_mut().insert("x-echo-meta", meta);
    response
}

#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "inwasm.test.Echo";
}

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec);
            Ok(match request.uri().path() {
                "/inwasm.test.Echo/Unary" => grpc.unary(UnaryEcho, request).await,
                "/inwasm.test.Echo/Stream" => grpc.streaming(StreamEcho, request).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

struct UnaryEcho;

impl UnaryService<Vec<u8>> for UnaryEcho {
    type Response = Vec<u8>;
    type Future = BoxFuture<Response<Vec<u8>>, Status>;

    fn call(&mut self, request: Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move {
            if request.get_ref() == b"deny" {
                return Err(Status::permission_denied("denied"));
            }
            let answer = echo(request.get_ref());
            Ok(with_meta(&request, answer))
        })
    }
}

type Echoes = Pin<Box<dyn Stream<Item = Result<Vec<u8>, Status>> + Send>>;

struct StreamEcho;

impl StreamingService<Vec<u8>> for StreamEcho {
    type Response = Vec<u8>;
    type ResponseStream = Echoes;
    type Future = BoxFuture<Response<Echoes>, Status>;

    fn call(&mut self, request: Request<Streaming<Vec<u8>>>) -> Self::Future {
        Box::pin(async move {
            let response = with_meta(&request, ());
            let echoes: Echoes = Box::pin(request.into_inner().map(|message| message.map(|m| echo(&m))));
            let (metadata, _, _) = response.into_parts();
            Ok(Response::from_parts(metadata, echoes, Default::default()))
        })
    }
}
