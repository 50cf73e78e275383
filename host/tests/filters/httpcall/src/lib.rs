//! HTTP callouts: pauses each request on a GET `/check` to the upstream named by the plugin
//! configuration (forwarding `authorization` as `x-token`, 500 ms timeout). A 200 answer
//! resumes the request with its body as `x-auth-user`; a failed call (no headers) gets a
//! local 502, any other answer a local 403. Dispatch errors answer 500 with `x-call-error`.
//! Request header `x-calls: N` makes N calls at once; the request resumes after the last.
//! Responses carry `x-auth-calls: <calls made>`. With `x-call-at: body` the call is made at
//! the end of the request body instead, and a 200 answer also prefixes the body with
//! `checked:` before resuming. With `x-call-at: response` it is made on the response headers,
//! which wait for it: a 200 answer adds response header `x-auth-user` and resumes the
//! response, any other answers 403 in its place.
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

#[derive(Default)]
struct Root {
    upstream: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.upstream = String::from_utf8_lossy(&config).trim().to_string();
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Auth {
            upstream: self.upstream.clone(),
            pending: 0,
            calls: 0,
            body_size: None,
            at: At::Request,
            token: String::new(),
            wanted_calls: 1,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Where the filter makes its call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Request,
    Body,
    Response,
}

struct Auth {
    at: At,
    /// From the request headers (which Envoy's Wasm filter no longer shows in the response
    /// phase): the `authorization` value and the number of calls to make.
    token: String,
    wanted_calls: usize,
    upstream: String,
    /// Calls still in flight; the request resumes when the last one allows it.
    pending: usize,
    calls: usize,
    /// Set when the call was made at the end of the request body (of this size).
    body_size: Option<usize>,
}

impl Auth {
    /// Makes the configured number of calls; false when one could not be dispatched (the
    /// filter then answered 500).
    fn call(&mut self) -> bool {
        let headers = vec![
            (":method", "GET"),
            (":path", "/check"),
            (":authority", "auth.local"),
            ("x-token", self.token.as_str()),
        ];
        let timeout = Duration::from_millis(500);
        let calls = self.wanted_calls;
        for _ in 0..calls {
            match self.dispatch_http_call(&self.upstream, headers.clone(), None, vec![], timeout) {
                Ok(_) => self.pending += 1,
                Err(status) => {
                    let error = format!("{status:?}");
                    self.send_http_response(500, vec![("x-call-error", &error)], None);
                    return false;
                }
            }
        }
        self.calls = calls;
        true
    }
}

impl Context for Auth {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let status = self.get_http_call_response_header(":status");
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        let shown = status.as_deref().unwrap_or("none");
        log::info!("call {token} status {shown} body {}", body.len());
        self.pending -= 1;
        if status.as_deref() == Some("200") && self.at == At::Response {
            self.set_http_response_header("x-auth-user", Some(&String::from_utf8_lossy(&body)));
            self.resume_http_response();
        } else if status.as_deref() == Some("200") {
            self.set_http_request_header("x-auth-user", Some(&String::from_utf8_lossy(&body)));
            if let Some(size) = self.body_size {
                let original = self.get_http_request_body(0, size).unwrap_or_default();
                self.set_http_request_body(0, size, &[b"checked:".as_slice(), &original].concat());
            }
            if self.pending == 0 {
                self.resume_http_request();
            }
        } else if num_headers == 0 {
            self.send_http_response(502, vec![("x-call-failed", "1")], Some(b"upstream failed\n"));
        } else {
            self.send_http_response(403, vec![], Some(b"forbidden\n"));
        }
    }
}

impl HttpContext for Auth {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.token = self.get_http_request_header("authorization").unwrap_or_default();
        self.wanted_calls = self.get_http_request_header("x-calls").and_then(|n| n.parse().ok()).unwrap_or(1);
        self.at = match self.get_http_request_header("x-call-at").as_deref() {
            Some("body") => At::Body,
            Some("response") => At::Response,
            _ => At::Request,
        };
        if self.at != At::Request {
            return Action::Continue;
        }
        self.call();
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.at != At::Body {
            return Action::Continue;
        }
        if end_of_stream {
            self.body_size = Some(size);
            self.call();
        }
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.at == At::Response && self.calls == 0 {
            self.call();
            self.add_http_response_header("x-auth-calls", &self.calls.to_string());
            return Action::Pause;
        }
        self.add_http_response_header("x-auth-calls", &self.calls.to_string());
        Action::Continue
    }
}
