//! HTTP callouts shaped by the request, answered with what came back. Each request makes one
//! call to the upstream in `x-upstream` (default: the plugin configuration's `upstream NAME`) (`:scheme` from `x-scheme`, `:method` from `x-method`,
//! default GET; `:path` from `x-path`, default `/`; `:authority` from `x-authority`, default
//! `callout.test`; timeout 5 s) and pauses. The call's answer becomes the local response: 200
//! with the call's body, `x-call-status`, `x-call-trailers` (the trailer count) and
//! `x-call-body-size`; a failed call 502 with `x-call-failed`; a refused dispatch 500 with
//! `x-call-error`. `x-inject: method|path|authority|name|value` puts a CR LF and a header of
//! its own into that part of the call instead.
//!
//! With a plugin configuration `tick UPSTREAM`, the root context also calls GET `/tick` on
//! UPSTREAM from `on_tick` (every 50 ms) and logs `tick call status N` (or `failed`).
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

const INJECTED: &str = "x\r\nx-injected: 1";
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Root {
    tick_upstream: Option<String>,
    default_upstream: String,
}

impl Context for Root {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        let status = self.get_http_call_response_header(":status");
        log::info!("tick call status {}", status.as_deref().unwrap_or("failed"));
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = String::from_utf8(self.get_plugin_configuration().unwrap_or_default()).unwrap_or_default();
        if let Some(upstream) = config.trim().strip_prefix("tick ") {
            self.tick_upstream = Some(upstream.trim().to_string());
            self.set_tick_period(Duration::from_millis(50));
        }
        if let Some(upstream) = config.trim().strip_prefix("upstream ") {
            self.default_upstream = upstream.trim().to_string();
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(upstream) = self.tick_upstream.clone() else { return };
        let headers = vec![(":method", "GET"), (":path", "/tick"), (":authority", "callout.test")];
        if let Err(status) = self.dispatch_http_call(&upstream, headers, None, vec![], TIMEOUT) {
            log::warn!("tick call refused: {status:?}");
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Callout { default_upstream: self.default_upstream.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Callout {
    default_upstream: String,
}

impl Context for Callout {
    fn on_http_call_response(&mut self, _: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        if num_headers == 0 {
            self.send_http_response(502, vec![("x-call-failed", "1")], Some(b"call failed\n"));
            return;
        }
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        let size = body.len().to_string();
        let trailers = num_trailers.to_string();
        let headers = vec![
            ("x-call-status", status.as_str()),
            ("x-call-body-size", size.as_str()),
            ("x-call-trailers", &trailers),
        ];
        self.send_http_response(200, headers, Some(&body));
    }
}

impl HttpContext for Callout {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let header = |name: &str, default: &str| self.get_http_request_header(name).unwrap_or_else(|| default.into());
        let upstream = header("x-upstream", &self.default_upstream);
        let inject = header("x-inject", "");
        let part = |name: &str, value: String| if inject == name { format!("{value}{INJECTED}") } else { value };
        let method = part("method", header("x-method", "GET"));
        let path = part("path", header("x-path", "/"));
        let authority = part("authority", header("x-authority", "callout.test"));
        let scheme = header("x-scheme", "http");
        let mut headers = vec![
            (":method", method.as_str()),
            (":path", path.as_str()),
            (":authority", authority.as_str()),
            (":scheme", scheme.as_str()),
        ];
        let name = part("name", "x-extra".into());
        let value = part("value", "1".into());
        headers.push((name.as_str(), value.as_str()));
        match self.dispatch_http_call(&upstream, headers, None, vec![], TIMEOUT) {
            Ok(_) => Action::Pause,
            Err(status) => {
                self.send_http_response(500, vec![("x-call-error", &format!("{status:?}"))], None);
                Action::Pause
            }
        }
    }
}
