//! The client side of the gRPC calls and streams a filter makes (`proxy_grpc_call`,
//! `proxy_grpc_stream`), for a proxy that carries each as an HTTP/2 request: the request's
//! headers and message frames, and the response read back into the events the filter gets.
//!
//! The outcomes are those of Envoy's gRPC client, which Envoy's Wasm filter uses: an answer
//! other than HTTP 200 without a `grpc-status` is CANCELLED, a bad frame or a reset stream
//! INTERNAL, a response that ends without trailers UNKNOWN, a unary call that ends well but
//! with no message INTERNAL. A unary call ends with its message or its failure, nothing else.

use std::time::Duration;

use prost::Message;

use crate::grpc::status;
use crate::types::{HostResult, Status};
use crate::Pairs;

/// gRPC status OK.
pub const OK: u32 = 0;
/// gRPC status CANCELLED.
pub const CANCELLED: u32 = 1;
/// gRPC status RESOURCE_EXHAUSTED.
pub const RESOURCE_EXHAUSTED: u32 = 8;

/// The largest message a call receives (gRPC's usual default); a larger one ends the call
/// with RESOURCE_EXHAUSTED, so a response never makes the host hold more than this.
pub const MAX_MESSAGE: usize = 4 << 20;

/// `envoy.config.core.v3.GrpcService`, the fields a call uses.
#[derive(Clone, PartialEq, Message)]
struct GrpcService {
    #[prost(message, optional, tag = "1")]
    envoy_grpc: Option<EnvoyGrpc>,
    #[prost(message, repeated, tag = "5")]
    initial_metadata: Vec<HeaderValue>,
}

#[derive(Clone, PartialEq, Message)]
struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    cluster_name: String,
    #[prost(string, tag = "2")]
    authority: String,
}

#[derive(Clone, PartialEq, Message)]
struct HeaderValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// Where a call goes, as the filter named it.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// The upstream (an Envoy cluster, an nginx upstream block, ...).
    pub cluster: Vec<u8>,
    pub authority: Vec<u8>,
    /// Initial metadata the target adds to every call.
    pub metadata: Pairs,
    /// Named by a bare name (not a `GrpcService`): a proxy that does not know it answers
    /// `PARSE_FAILURE`, as Envoy does.
    pub by_name: bool,
}

/// The call's target, from what the filter gave as its upstream, as Envoy's Wasm filter
/// takes it: a serialized `GrpcService` (its `envoy_grpc` cluster, authority and initial
/// metadata), or else a name. A `GrpcService` for the Google gRPC library instead of Envoy's
/// own client is refused (`BAD_ARGUMENT`).
pub fn target(upstream: &[u8]) -> HostResult<Target> {
    let Ok(service) = GrpcService::decode(upstream) else {
        let name = upstream.to_vec();
        return Ok(Target { cluster: name.clone(), authority: name, metadata: Pairs::new(), by_name: true });
    };
    let envoy = service.envoy_grpc.filter(|e| !e.cluster_name.is_empty()).ok_or(Status::BadArgument)?;
    let authority = if envoy.authority.is_empty() { &envoy.cluster_name } else { &envoy.authority };
    Ok(Target {
        cluster: envoy.cluster_name.clone().into_bytes(),
        authority: authority.clone().into_bytes(),
        metadata: service.initial_metadata.into_iter().map(|h| (h.key, h.value)).collect(),
        by_name: false,
    })
}

/// A status message as Envoy's gRPC client gives it: `MESSAGE{DETAILS}`, or the details
/// alone, where `details` says how the answer came (`via_upstream`: from the server;
/// `response_timeout`: the proxy's own answer at the deadline).
pub fn with_details(message: &mut String, details: Option<&str>) {
    match details {
        Some(details) if message.is_empty() => *message = details.to_string(),
        Some(details) => *message = format!("{message}{{{details}}}"),
        None => {}
    }
}

/// The status message of a call the proxy ended at its deadline (Envoy's router's answer).
pub const DEADLINE_MESSAGE: &str = "upstream request timeout";

/// The request headers of a call to `/service/method` at `authority`, as Envoy's gRPC client
/// makes them, then the filter's initial metadata.
pub fn request_headers(
    authority: &[u8],
    service: &str,
    method: &str,
    timeout: Option<Duration>,
    metadata: &Pairs,
) -> Pairs {
    let mut headers = Pairs::new();
    headers.push(b":method", b"POST");
    headers.push(b":path", format!("/{service}/{method}"));
    headers.push(b":authority", authority);
    if let Some(timeout) = timeout {
        headers.push(b"grpc-timeout", grpc_timeout(timeout));
    }
    headers.push(b"content-type", b"application/grpc");
    headers.push(b"te", b"trailers");
    headers.extend(metadata);
    headers
}

/// A `grpc-timeout` value: at most 8 digits, in the finest unit that fits.
fn grpc_timeout(timeout: Duration) -> String {
    let millis = timeout.as_millis();
    let units = [(1, 'm'), (1_000, 'S'), (60_000, 'M'), (3_600_000, 'H')];
    let (value, unit) = units
        .iter()
        .map(|&(size, unit)| (millis / size, unit))
        .find(|&(value, _)| value < 100_000_000)
        .unwrap_or((99_999_999, 'H'));
    format!("{value}{unit}")
}

/// `message` as one uncompressed gRPC frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// What a call's response gives the filter, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcEvent {
    InitialMetadata(Pairs),
    /// A message; for a unary call, its answer, which ends it.
    Message(Vec<u8>),
    TrailingMetadata(Pairs),
    /// The end, with the gRPC status and message.
    Close(u32, String),
}

/// Reads one call's response, HTTP/2 event by event.
pub struct ResponseReader {
    unary: bool,
    buffered: Vec<u8>,
    /// A unary call's answer, held until the call ends well.
    answer: Option<Vec<u8>>,
    closed: bool,
}

impl ResponseReader {
    pub fn new(unary: bool) -> ResponseReader {
        ResponseReader { unary, buffered: Vec::new(), answer: None, closed: false }
    }

    /// The call has ended: nothing more comes of it (the proxy should end the HTTP stream).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn on_headers(&mut self, headers: Pairs, end_stream: bool) -> Vec<GrpcEvent> {
        if self.closed {
            return Vec::new();
        }
        let ok = headers.first_value(b":status") == Some(&b"200"[..]);
        let has_grpc_status = headers.first_value(b"grpc-status").is_some();
        let mut events = Vec::new();
        if end_stream {
            self.push(&mut events, GrpcEvent::InitialMetadata(Pairs::new()));
            // Trailers-only: the headers are the trailers (whatever the HTTP status, given a
            // gRPC status).
            if ok || has_grpc_status {
                events.extend(self.on_trailers(headers));
                return events;
            }
        } else {
            self.push(&mut events, GrpcEvent::InitialMetadata(headers));
        }
        if !ok {
            events.extend(self.fail(CANCELLED, String::new()));
        }
        events
    }

    pub fn on_data(&mut self, data: &[u8], end_stream: bool) -> Vec<GrpcEvent> {
        if self.closed {
            return Vec::new();
        }
        self.buffered.extend_from_slice(data);
        let mut events = Vec::new();
        while self.buffered.len() >= 5 {
            let flags = self.buffered[0];
            let length = u32::from_be_bytes([self.buffered[1], self.buffered[2], self.buffered[3], self.buffered[4]]);
            let length = length as usize;
            if length > MAX_MESSAGE {
                let message = format!("a message of {length} bytes is larger than {MAX_MESSAGE}");
                events.extend(self.fail(RESOURCE_EXHAUSTED, message));
                return events;
            }
            // Compressed messages are not decoded (none was asked for).
            if flags != 0 && (length > 0 || flags & !1 != 0) {
                events.extend(self.fail(status::INTERNAL, String::new()));
                return events;
            }
            if self.buffered.len() < 5 + length {
                break;
            }
            let message = self.buffered[5..5 + length].to_vec();
            self.buffered.drain(..5 + length);
            if self.unary {
                self.answer = Some(message);
            } else {
                events.push(GrpcEvent::Message(message));
            }
        }
        if end_stream {
            events.extend(self.fail(status::UNKNOWN, String::new()));
        }
        events
    }

    pub fn on_trailers(&mut self, trailers: Pairs) -> Vec<GrpcEvent> {
        if self.closed {
            return Vec::new();
        }
        let code = trailers
            .first_value(b"grpc-status")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(status::UNKNOWN);
        let message = trailers.first_value(b"grpc-message").map(|v| String::from_utf8_lossy(v).into_owned());
        let mut events = Vec::new();
        self.push(&mut events, GrpcEvent::TrailingMetadata(trailers));
        events.extend(self.close(code, message.unwrap_or_default()));
        events
    }

    /// The HTTP stream was reset (or the proxy gave up on it).
    pub fn on_reset(&mut self) -> Vec<GrpcEvent> {
        if self.closed {
            return Vec::new();
        }
        self.fail(status::INTERNAL, String::new())
    }

    /// Ends the call with `code` after an empty set of trailing metadata.
    fn fail(&mut self, code: u32, message: String) -> Vec<GrpcEvent> {
        let mut events = Vec::new();
        self.push(&mut events, GrpcEvent::TrailingMetadata(Pairs::new()));
        events.extend(self.close(code, message));
        events
    }

    fn close(&mut self, code: u32, message: String) -> Vec<GrpcEvent> {
        self.closed = true;
        self.buffered = Vec::new();
        let event = match (self.unary, code, self.answer.take()) {
            (true, OK, Some(answer)) => GrpcEvent::Message(answer),
            (true, OK, None) => GrpcEvent::Close(status::INTERNAL, String::new()),
            _ => GrpcEvent::Close(code, message),
        };
        vec![event]
    }

    /// Metadata events are for streams only.
    fn push(&self, events: &mut Vec<GrpcEvent>, event: GrpcEvent) {
        if !self.unary {
            events.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Pairs {
        list.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn a_request_has_envoys_headers_then_the_metadata() {
        let headers =
            request_headers(b"grpcbin", "pkg.Echo", "Say", Some(Duration::from_secs(2)), &pairs(&[("x-a", "1")]));
        let expected = pairs(&[
            (":method", "POST"),
            (":path", "/pkg.Echo/Say"),
            (":authority", "grpcbin"),
            ("grpc-timeout", "2000m"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("x-a", "1"),
        ]);
        assert_eq!(headers, expected);
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn a_target_is_a_name_or_a_grpc_service_for_envoys_client() {
        let by_name = target(b"grpc_upstream").unwrap();
        assert!(by_name.by_name && by_name.cluster == b"grpc_upstream" && by_name.authority == b"grpc_upstream");
        let service = GrpcService {
            envoy_grpc: Some(EnvoyGrpc { cluster_name: "c".into(), authority: "a.test".into() }),
            initial_metadata: vec![HeaderValue { key: "k".into(), value: "v".into() }],
        };
        let expected = Target {
            cluster: b"c".to_vec(),
            authority: b"a.test".to_vec(),
            metadata: pairs(&[("k", "v")]),
            by_name: false,
        };
        assert_eq!(target(&service.encode_to_vec()).unwrap(), expected);
        let for_google_grpc = GrpcService { envoy_grpc: None, initial_metadata: vec![] };
        assert_eq!(target(&for_google_grpc.encode_to_vec()), Err(Status::BadArgument));
        let mut message = "denied".to_string();
        with_details(&mut message, Some("via_upstream"));
        assert_eq!(message, "denied{via_upstream}");
    }

    #[test]
    fn a_unary_answer_comes_whole_and_alone() {
        let mut reader = ResponseReader::new(true);
        assert!(reader.on_headers(pairs(&[(":status", "200")]), false).is_empty());
        let framed = frame(b"hello");
        assert!(reader.on_data(&framed[..3], false).is_empty());
        assert!(reader.on_data(&framed[3..], false).is_empty());
        let events = reader.on_trailers(pairs(&[("grpc-status", "0")]));
        assert_eq!(events, vec![GrpcEvent::Message(b"hello".to_vec())]);
        assert!(reader.is_closed());
    }

    #[test]
    fn a_unary_failure_closes_with_its_status_and_message() {
        let mut reader = ResponseReader::new(true);
        let trailers_only = pairs(&[(":status", "200"), ("grpc-status", "7"), ("grpc-message", "denied")]);
        assert_eq!(reader.on_headers(trailers_only, true), vec![GrpcEvent::Close(7, "denied".into())]);
        let mut empty = ResponseReader::new(true);
        empty.on_headers(pairs(&[(":status", "200")]), false);
        assert_eq!(empty.on_trailers(pairs(&[("grpc-status", "0")])), vec![GrpcEvent::Close(13, String::new())]);
    }

    #[test]
    fn a_stream_gets_metadata_messages_then_its_close() {
        let mut reader = ResponseReader::new(false);
        let head = pairs(&[(":status", "200"), ("x-m", "1")]);
        assert_eq!(reader.on_headers(head.clone(), false), vec![GrpcEvent::InitialMetadata(head)]);
        let mut both = frame(b"a");
        both.extend(frame(b"bc"));
        let messages = vec![GrpcEvent::Message(b"a".to_vec()), GrpcEvent::Message(b"bc".to_vec())];
        assert_eq!(reader.on_data(&both, false), messages);
        let trailers = pairs(&[("grpc-status", "0")]);
        let end = vec![GrpcEvent::TrailingMetadata(trailers.clone()), GrpcEvent::Close(0, String::new())];
        assert_eq!(reader.on_trailers(trailers), end);
        assert!(reader.on_reset().is_empty());
    }

    #[test]
    fn broken_responses_end_as_envoys_client_ends_them() {
        let cancelled = ResponseReader::new(false).on_headers(pairs(&[(":status", "503")]), false);
        assert_eq!(cancelled.last(), Some(&GrpcEvent::Close(CANCELLED, String::new())));
        let mut reader = ResponseReader::new(false);
        reader.on_headers(pairs(&[(":status", "200")]), false);
        assert_eq!(reader.on_data(&frame(b"x"), true).last(), Some(&GrpcEvent::Close(2, String::new())));
        let mut reader = ResponseReader::new(false);
        let huge = [0, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(reader.on_data(&huge, false).last(), Some(GrpcEvent::Close(RESOURCE_EXHAUSTED, _))));
        let mut reader = ResponseReader::new(true);
        assert_eq!(reader.on_reset(), vec![GrpcEvent::Close(13, String::new())]);
    }
}
