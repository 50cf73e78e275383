//! The request and response `inwasm run` is given, as HTTP/1.1 text (CR LF or LF line ends):
//! read with `httparse` into the headers a proxy-wasm filter sees (pseudo-headers first,
//! `Host` as `:authority`, names in lower case, as Envoy presents them) and a body.

use inwasm_host::Pairs;

/// A message's headers, as a filter sees them, and its body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub headers: Pairs,
    pub body: Vec<u8>,
}

/// The most header lines a message file may have.
const MAX_HEADERS: usize = 100;

/// Reads a request: `METHOD PATH HTTP/1.1`, headers, a blank line, the body.
pub fn request(text: &[u8]) -> Result<Message, String> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut lines);
    let head = head_length(request.parse(text), "request")?;
    let (method, path) = (request.method.unwrap_or_default(), request.path.unwrap_or_default());
    let authority = request.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host")).map(|h| h.value);
    let mut headers: Pairs = [
        (&b":authority"[..], authority.unwrap_or_default()),
        (b":path", path.as_bytes()),
        (b":method", method.as_bytes()),
        (b":scheme", b"http"),
    ]
    .into_iter()
    .collect();
    headers.extend(regular(request.headers, &["host"]));
    Ok(Message { body: body(request.headers, &text[head..])?, headers })
}

/// Reads a response: `HTTP/1.1 STATUS REASON`, headers, a blank line, the body.
pub fn response(text: &[u8]) -> Result<Message, String> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut lines);
    let head = head_length(response.parse(text), "response")?;
    let mut headers = Pairs::new();
    headers.push(b":status", response.code.unwrap_or(200).to_string());
    headers.extend(regular(response.headers, &[]));
    Ok(Message { body: body(response.headers, &text[head..])?, headers })
}

/// The length of a message's head, from what `httparse` made of it.
fn head_length(parsed: httparse::Result<usize>, what: &str) -> Result<usize, String> {
    match parsed.map_err(|e| format!("not an HTTP/1.1 {what}: {e}"))? {
        httparse::Status::Complete(length) => Ok(length),
        httparse::Status::Partial => Err(format!("the {what}'s head has no blank line after it")),
    }
}

/// The header lines, but `skipped`, with names in lower case.
fn regular<'a>(
    lines: &'a [httparse::Header<'a>],
    skipped: &'a [&str],
) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + 'a {
    lines
        .iter()
        .filter(|h| !skipped.iter().any(|s| h.name.eq_ignore_ascii_case(s)))
        .map(|h| (h.name.to_ascii_lowercase().into_bytes(), h.value.to_vec()))
}

/// The body after the head: `Content-Length` bytes when the head says, else all that follows.
fn body(lines: &[httparse::Header<'_>], rest: &[u8]) -> Result<Vec<u8>, String> {
    let header = |name: &str| lines.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    if header("transfer-encoding").is_some() {
        return Err("a chunked body is not read: write the body as it is, with Content-Length or without".into());
    }
    let Some(length) = header("content-length") else { return Ok(rest.to_vec()) };
    let length: usize =
        std::str::from_utf8(length).ok().and_then(|l| l.trim().parse().ok()).ok_or("Content-Length is not a number")?;
    rest.get(..length)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format!("Content-Length is {length}, the body {} bytes", rest.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use inwasm_host::testing::pairs;

    #[test]
    fn a_request_becomes_what_a_filter_sees() {
        let text = b"POST /orders?x=1 HTTP/1.1\nHost: shop.test\nContent-Type: text/plain\nContent-Length: 5\n\nhello, and more";
        let message = request(text).unwrap();
        let expected = pairs(&[
            (":authority", "shop.test"),
            (":path", "/orders?x=1"),
            (":method", "POST"),
            (":scheme", "http"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
        ]);
        assert_eq!(message, Message { headers: expected, body: b"hello".to_vec() });
    }

    #[test]
    fn a_response_without_length_has_the_rest_as_body() {
        let message = response(b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\n\r\ngone\n").unwrap();
        assert_eq!(message, Message { headers: pairs(&[(":status", "404"), ("x-a", "1")]), body: b"gone\n".to_vec() });
    }

    #[test]
    fn what_cannot_be_read_says_why() {
        assert_eq!(request(b"GET / HTTP/1.1\nHost: a\n").unwrap_err(), "the request's head has no blank line after it");
        assert_eq!(
            request(b"GET / HTTP/1.1\nContent-Length: 9\n\nshort").unwrap_err(),
            "Content-Length is 9, the body 5 bytes"
        );
        assert!(response(b"hello\n\n").unwrap_err().starts_with("not an HTTP/1.1 response"));
        assert!(request(b"GET / HTTP/1.1\nTransfer-Encoding: chunked\n\n").unwrap_err().contains("chunked"));
    }
}
