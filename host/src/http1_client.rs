//! The client side of an http call (`proxy_http_call`) for a proxy that carries it as
//! HTTP/1.1 on a connection of its own: the request's bytes, checked so a filter cannot
//! inject anything into the exchange, and a reader that takes the response as it arrives
//! (each byte parsed once) and says whether the connection can be kept for another call.
//!
//! Responses are parsed by `httparse`; a request's target and authority are checked by
//! `http`, its method and header names as tokens and its values as RFC 9110 field values.

use std::io::Write;

use crate::embedding::{HttpCallRequest, HttpCallResponse};
use crate::Pairs;

/// The largest response head (status line and headers, or trailers) a call accepts.
pub const MAX_HEAD: usize = 64 << 10;
/// The most header lines a response head (or its trailers) may have (Envoy's default).
const MAX_HEADERS: usize = 100;

/// Headers that belong to one connection or to the message's framing: the host sets its own.
const HOP_BY_HOP: [&[u8]; 8] = [
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"keep-alive",
    b"upgrade",
    b"te",
    b"proxy-connection",
];

/// Why a request cannot be sent as it is.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

/// The request bytes: pseudo-headers give the request line and `host`, other headers follow
/// as given but for the ones that frame the message or manage the connection, then a
/// `content-length` for the body. Refused when the method is not a token, the path not an
/// origin-form target, the authority not `host[:port]`, or a header name or value is not
/// valid HTTP (CR, LF, NUL, ...). Trailers have no place in an HTTP/1.1 request with a length,
/// and are not sent.
pub fn request_bytes(request: &HttpCallRequest) -> Result<Vec<u8>, Malformed> {
    let pseudo = |name: &[u8]| request.headers.exact_value(name).unwrap_or_default();
    let (method, path, authority) = (pseudo(b":method"), pseudo(b":path"), pseudo(b":authority"));
    let shown = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if !is_token(method) {
        return Err(Malformed(format!("invalid :method \"{}\"", shown(method))));
    }
    let origin_form = path.starts_with(b"/") && http::uri::PathAndQuery::try_from(path).is_ok();
    if !origin_form && path != b"*" {
        return Err(Malformed(format!("invalid :path \"{}\"", shown(path))));
    }
    if http::uri::Authority::try_from(authority).is_err() {
        return Err(Malformed(format!("invalid :authority \"{}\"", shown(authority))));
    }
    let mut out = Vec::with_capacity(256 + request.body.len());
    for part in [method, b" ", path, b" HTTP/1.1\r\nhost: ", authority, b"\r\n"] {
        out.extend_from_slice(part);
    }
    for (key, value) in request.headers.iter().filter(|(k, _)| k.first() != Some(&b':')) {
        if !is_token(key) || !is_field_value(value) {
            return Err(Malformed(format!("invalid header \"{}: {}\"", shown(key), shown(value).escape_debug())));
        }
        if !HOP_BY_HOP.iter().any(|h| key.eq_ignore_ascii_case(h)) {
            for part in [key, b": ", value, b"\r\n"] {
                out.extend_from_slice(part);
            }
        }
    }
    // (Written in place: a request allocates only its bytes.)
    let _ = write!(out, "content-length: {}\r\n\r\n", request.body.len());
    out.extend_from_slice(&request.body);
    Ok(out)
}

/// Whether `name` is an HTTP token (RFC 9110 `tchar`s), as a method or a header name must be.
pub fn is_token(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&c| TCHAR[c as usize])
}

/// Which bytes are `tchar`s (a table: each header a filter adds is checked byte by byte).
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let byte = c as u8;
        table[c] = byte.is_ascii_alphanumeric()
            || matches!(
                byte,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        c += 1;
    }
    table
};

/// Whether `value` may be a header field's value (RFC 9110: visible characters, spaces and
/// tabs, and bytes from 0x80 up; no other control character, so no CR, LF or NUL).
fn is_field_value(value: &[u8]) -> bool {
    value.iter().all(|&c| c == b'\t' || (c >= 0x20 && c != 0x7f))
}

/// Where the reader is in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Head,
    /// A body with a length: this many bytes still to come.
    Length(usize),
    ChunkSize,
    /// Inside a chunk: this many bytes still to come.
    ChunkData(usize),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// A body without framing, which ends when the connection closes.
    UntilClose,
    Done,
}

/// What the bytes read so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    Reading,
    /// The whole response is in; `take` it.
    Complete,
}

/// Reads one response from the bytes of a connection, in the pieces they arrive in.
pub struct ResponseReader {
    /// The call was a HEAD request: the response has no body whatever its headers say.
    head_request: bool,
    /// The most body bytes accepted.
    max_body: usize,
    part: Part,
    /// Bytes received and not consumed yet (an unfinished head, chunk size line or trailers).
    pending: Vec<u8>,
    headers: Pairs,
    body: Vec<u8>,
    trailers: Pairs,
    /// The response lets the connection carry another request once it is complete.
    persistent: bool,
}

impl ResponseReader {
    pub fn new(head_request: bool, max_body: usize) -> ResponseReader {
        ResponseReader {
            head_request,
            max_body,
            part: Part::Head,
            pending: Vec::new(),
            headers: Pairs::new(),
            body: Vec::new(),
            trailers: Pairs::new(),
            persistent: false,
        }
    }

    /// Takes the next bytes from the connection.
    pub fn read(&mut self, bytes: &[u8]) -> Result<Progress, &'static str> {
        if self.pending.is_empty() {
            // Nothing left over: read the bytes where they are, keep what is not consumed.
            let mut at = 0;
            let progress = self.consume(bytes, &mut at);
            self.pending.extend_from_slice(&bytes[at..]);
            return progress;
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(bytes);
        let mut at = 0;
        let progress = self.consume(&pending, &mut at);
        pending.drain(..at);
        self.pending = pending;
        progress
    }

    /// The peer closed the connection: completes a response read to its close.
    pub fn closed(&mut self) -> Result<Progress, &'static str> {
        match self.part {
            Part::UntilClose | Part::Done => {
                self.part = Part::Done;
                self.persistent = false;
                Ok(Progress::Complete)
            }
            Part::Head => Err("connection closed before the response headers"),
            _ => Err("connection closed before the end of the response"),
        }
    }

    /// The complete response, and whether its connection may carry another request.
    pub fn take(self) -> (HttpCallResponse, bool) {
        let persistent = self.persistent && self.part == Part::Done && self.pending.is_empty();
        (HttpCallResponse { headers: self.headers, body: self.body, trailers: self.trailers }, persistent)
    }

    /// Consumes `bytes` from `at` on, part after part, as far as it goes.
    fn consume(&mut self, bytes: &[u8], at: &mut usize) -> Result<Progress, &'static str> {
        loop {
            let rest = &bytes[*at..];
            let consumed = match self.part {
                Part::Done => {
                    // Bytes past the response: this connection cannot carry another one.
                    self.persistent &= rest.is_empty();
                    return Ok(Progress::Complete);
                }
                _ if rest.is_empty() => return Ok(Progress::Reading),
                Part::Length(left) | Part::ChunkData(left) => {
                    let n = left.min(rest.len());
                    if self.body.len() + n > self.max_body {
                        return Err("response too large");
                    }
                    self.body.extend_from_slice(&rest[..n]);
                    self.part = match (self.part, left - n) {
                        (Part::Length(_), 0) => Part::Done,
                        (Part::Length(_), left) => Part::Length(left),
                        (_, 0) => Part::ChunkEnd,
                        (_, left) => Part::ChunkData(left),
                    };
                    Some(n)
                }
                Part::UntilClose => {
                    if self.body.len() + rest.len() > self.max_body {
                        return Err("response too large");
                    }
                    self.body.extend_from_slice(rest);
                    Some(rest.len())
                }
                Part::Head => self.parse_head(rest)?,
                Part::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, 0))) => {
                        self.part = Part::Trailers;
                        Some(n)
                    }
                    Ok(httparse::Status::Complete((n, size))) => {
                        self.part = Part::ChunkData(usize::try_from(size).map_err(|_| "chunk too large")?);
                        Some(n)
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(_) => return Err("malformed chunk size"),
                },
                Part::ChunkEnd => match rest.get(..2) {
                    Some(b"\r\n") => {
                        self.part = Part::ChunkSize;
                        Some(2)
                    }
                    Some(_) => return Err("malformed chunk end"),
                    None => None,
                },
                Part::Trailers => self.parse_trailers(rest)?,
            };
            match consumed {
                Some(n) => *at += n,
                None if bytes.len() - *at > MAX_HEAD => return Err("response head too large"),
                None => return Ok(Progress::Reading),
            }
        }
    }

    /// The status line and headers; decides how the body is framed.
    fn parse_head(&mut self, bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        let n = match response.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
            Err(_) => return Err("malformed response head"),
        };
        let status = response.code.ok_or("malformed status line")?;
        if (100..200).contains(&status) && status != 101 {
            return Ok(Some(n)); // an interim response: the real one follows
        }
        let mut headers = received_fields(response.headers);
        // httparse reads exactly three digits.
        headers.push(b":status", [status / 100, status / 10 % 10, status % 10].map(|d| b'0' + d as u8));
        let value = |name: &str| response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
        let closes = value("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
        self.persistent = response.version == Some(1) && !closes;
        let chunked = value("transfer-encoding").map(|v| v.eq_ignore_ascii_case(b"chunked"));
        self.part = if self.head_request || status == 204 || status == 304 {
            Part::Done
        } else if chunked == Some(true) {
            Part::ChunkSize
        } else if chunked == Some(false) {
            return Err("unsupported transfer-encoding");
        } else if let Some(length) = value("content-length") {
            let length = std::str::from_utf8(length).ok().and_then(|l| l.trim().parse::<usize>().ok());
            match length.ok_or("malformed content-length")? {
                0 => Part::Done,
                length if length > self.max_body => return Err("response too large"),
                length => Part::Length(length),
            }
        } else {
            self.persistent = false;
            Part::UntilClose
        };
        self.headers = headers;
        Ok(Some(n))
    }

    fn parse_trailers(&mut self, bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(bytes, &mut slots) {
            Ok(httparse::Status::Complete((n, trailers))) => {
                self.trailers = received_fields(trailers);
                self.part = Part::Done;
                Ok(Some(n))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err("malformed trailers"),
        }
    }
}

/// Header fields as received, their names in lower case.
fn received_fields(fields: &[httparse::Header<'_>]) -> Pairs {
    let bytes: usize = fields.iter().map(|h| h.name.len() + h.value.len()).sum();
    let mut pairs = Pairs::with_capacity(fields.len() + 1, bytes + 8);
    pairs.extend(fields.iter().map(|h| (h.name, h.value)));
    pairs.lowercase_names();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(headers: &[(&str, &str)], body: &[u8]) -> HttpCallRequest {
        HttpCallRequest {
            upstream: "up".into(),
            headers: headers.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            body: body.to_vec(),
            trailers: Pairs::new(),
            timeout: None,
        }
    }

    const BASE: [(&str, &str); 3] = [(":method", "POST"), (":path", "/check?a=1"), (":authority", "auth:8080")];

    #[test]
    fn request_has_its_line_host_headers_and_length_and_drops_framing() {
        let mut headers = BASE.to_vec();
        headers.extend([("x-token", "t"), ("transfer-encoding", "chunked"), ("connection", "close")]);
        let bytes = request_bytes(&call(&headers, b"hello")).unwrap();
        let expected = "POST /check?a=1 HTTP/1.1\r\nhost: auth:8080\r\nx-token: t\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    }

    #[test]
    fn tokens_are_letters_digits_and_rfc_9110_s_fifteen_marks() {
        let tchars: Vec<u8> = (0..=255u8).filter(|&c| is_token(&[c])).collect();
        let expected: Vec<u8> =
            (0..=255u8).filter(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c)).collect();
        assert_eq!(tchars, expected);
        assert!(is_token(b"x-wasm") && !is_token(b"") && !is_token(b"x wasm") && !is_token(b"x:y"));
    }

    #[test]
    fn injections_are_refused() {
        let with = |name: &str, value: &str| {
            let mut headers = BASE.to_vec();
            headers.retain(|(k, _)| *k != name);
            headers.push((name, value));
            request_bytes(&call(&headers, b""))
        };
        for (name, value) in [
            (":method", "GET /x HTTP/1.1\r\nx: y\r\n\r\nGET"),
            (":method", ""),
            (":path", "/a b"),
            (":path", "/a\r\nx-injected: 1"),
            (":path", "relative"),
            (":authority", "auth\r\nx-injected: 1"),
            (":authority", "a/b"),
            ("x-token", "t\r\nx-injected: 1"),
            ("x-token", "t\0"),
            ("bad name", "v"),
            ("x-a\r\nx-b", "v"),
        ] {
            assert!(with(name, value).is_err(), "{name}: {value:?}");
        }
        assert!(with(":path", "*").is_ok());
    }

    /// Reads `response` in pieces of `step` bytes.
    fn read_in_steps(response: &[u8], step: usize, head_request: bool) -> Result<(HttpCallResponse, bool), String> {
        let mut reader = ResponseReader::new(head_request, 1 << 20);
        let mut progress = Progress::Reading;
        for piece in response.chunks(step) {
            progress = reader.read(piece).map_err(str::to_string)?;
        }
        if progress == Progress::Reading {
            reader.closed().map_err(str::to_string)?;
        }
        Ok(reader.take())
    }

    fn text(pairs: &Pairs) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (String::from_utf8_lossy(k).into(), String::from_utf8_lossy(v).into())).collect()
    }

    #[test]
    fn every_framing_in_any_pieces() {
        let cases: [(&[u8], &[u8], bool); 5] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello", b"hello", true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nhe\r\n3\r\nllo\r\n0\r\nx-t: 1\r\n\r\n",
                b"hello",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello", b"hello", false),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", b"", true),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", false),
        ];
        for (response, body, persistent) in cases {
            for step in [1, 2, 7, response.len()] {
                let (got, keep) = read_in_steps(response, step, false).unwrap();
                assert_eq!((got.body.as_slice(), keep), (body, persistent), "{}", String::from_utf8_lossy(response));
                assert!(got.headers.exact_value(b":status").is_some());
            }
        }
        let (chunked, _) = read_in_steps(cases[1].0, 3, false).unwrap();
        assert_eq!(text(&chunked.trailers), [("x-t".into(), "1".into())]);
    }

    #[test]
    fn a_connection_that_says_close_or_carries_more_is_not_kept() {
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(!read_in_steps(close, 100, false).unwrap().1);
        let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab";
        assert!(!read_in_steps(extra, 100, false).unwrap().1);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let (response, persistent) = read_in_steps(head, 5, true).unwrap();
        assert!(response.body.is_empty() && persistent, "a HEAD response has no body");
    }

    #[test]
    fn malformed_and_oversized_responses_fail() {
        for response in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhexx",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
            b"HTTP/1.1 200 OK\r\n",
        ] {
            assert!(read_in_steps(response, 4, false).is_err(), "{}", String::from_utf8_lossy(response));
        }
        let mut reader = ResponseReader::new(false, 10);
        assert_eq!(reader.read(b"HTTP/1.1 200 OK\r\n\r\n0123456789"), Ok(Progress::Reading));
        assert_eq!(reader.read(b"x"), Err("response too large"));
        let mut reader = ResponseReader::new(false, 10);
        assert_eq!(reader.read(&vec![b'a'; MAX_HEAD + 1]), Err("malformed response head"));
        let mut reader = ResponseReader::new(false, 10);
        let long_head = [&b"HTTP/1.1 200 OK\r\nx: "[..], &vec![b'a'; MAX_HEAD]].concat();
        assert_eq!(reader.read(&long_head), Err("response head too large"));
    }
}
