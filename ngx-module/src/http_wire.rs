//! HTTP/1.1 on the wire for `proxy_http_call`: the request a filter's pairs become, and an
//! incremental parser for the response (Content-Length, chunked, or read to close).

use inwasm_host::{HttpCallRequest, HttpCallResponse, Pairs};

/// The request bytes: pseudo-headers give the request line and Host, the rest follow as is.
pub fn request_bytes(request: &HttpCallRequest) -> Vec<u8> {
    let pseudo = |name: &[u8]| {
        request.headers.iter().find(|(k, _)| k.as_slice() == name).map(|(_, v)| v.as_slice()).unwrap_or_default()
    };
    let mut out = Vec::with_capacity(256 + request.body.len());
    for part in [pseudo(b":method"), b" ", pseudo(b":path"), b" HTTP/1.1\r\nhost: ", pseudo(b":authority"), b"\r\n"] {
        out.extend_from_slice(part);
    }
    for (key, value) in request.headers.iter().filter(|(k, _)| k.first() != Some(&b':')) {
        let framing = key.eq_ignore_ascii_case(b"content-length") || key.eq_ignore_ascii_case(b"connection");
        if !framing && !key.eq_ignore_ascii_case(b"host") {
            out.extend_from_slice(&[key.as_slice(), b": ", value, b"\r\n"].concat());
        }
    }
    out.extend_from_slice(format!("content-length: {}\r\nconnection: close\r\n\r\n", request.body.len()).as_bytes());
    out.extend_from_slice(&request.body);
    out
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    Complete(HttpCallResponse),
    Invalid(&'static str),
}

/// Parses a response from `bytes`; `closed` says the peer has closed the connection (which
/// completes a response that has neither Content-Length nor chunked framing).
pub fn parse_response(bytes: &[u8], closed: bool) -> Parsed {
    let Some(head_end) = find(bytes, b"\r\n\r\n") else {
        return if closed {
            Parsed::Invalid("connection closed before the response headers")
        } else {
            Parsed::Incomplete
        };
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|line| line.split_whitespace().nth(1)).filter(|s| s.len() == 3);
    let Some(status) = status else { return Parsed::Invalid("malformed status line") };
    let mut headers: Pairs = vec![(b":status".to_vec(), status.as_bytes().to_vec())];
    for line in lines {
        let Some((key, value)) = line.split_once(':') else { return Parsed::Invalid("malformed header line") };
        headers.push((key.trim().to_ascii_lowercase().into_bytes(), value.trim().as_bytes().to_vec()));
    }
    let value = |name: &[u8]| headers.iter().find(|(k, _)| k.as_slice() == name).map(|(_, v)| v.clone());
    let rest = &bytes[head_end + 4..];
    let body = if value(b"transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
        match dechunk(rest) {
            Some(Ok(body)) => body,
            Some(Err(reason)) => return Parsed::Invalid(reason),
            None if closed => return Parsed::Invalid("connection closed inside a chunked body"),
            None => return Parsed::Incomplete,
        }
    } else if let Some(length) = value(b"content-length") {
        let Some(length) = std::str::from_utf8(&length).ok().and_then(|l| l.parse::<usize>().ok()) else {
            return Parsed::Invalid("malformed content-length");
        };
        match rest.get(..length) {
            Some(body) => body.to_vec(),
            None if closed => return Parsed::Invalid("connection closed before the whole body"),
            None => return Parsed::Incomplete,
        }
    } else if status.starts_with('1') || status == "204" || status == "304" {
        Vec::new()
    } else if closed {
        rest.to_vec()
    } else {
        return Parsed::Incomplete;
    };
    Parsed::Complete(HttpCallResponse { headers, body, trailers: Vec::new() })
}

/// Decodes a complete chunked body; `None` while the final chunk has not arrived.
fn dechunk(mut bytes: &[u8]) -> Option<Result<Vec<u8>, &'static str>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(bytes, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&bytes[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else { return Some(Err("malformed chunk size")) };
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return find(bytes, b"\r\n").map(|_| Ok(body));
        }
        if bytes.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}
