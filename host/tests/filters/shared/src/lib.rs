//! Shared data with compare-and-swap: every request increments the decimal counter `hits`,
//! retrying on CAS_MISMATCH, and sees the new value as request and response header `x-hits`.
//! Request header `x-fill: N` first writes N 1 KiB keys `fill-0..N` (to fill the store);
//! `x-check: KEY` answers with response header `x-present: yes|no`.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hits { hits: 0, present: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Hits {
    hits: u64,
    present: Option<bool>,
}

impl Context for Hits {}

impl HttpContext for Hits {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let fill = self.get_http_request_header("x-fill").and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
        for i in 0..fill {
            // Err only for CasMismatch, impossible with no cas; a full store that cannot evict traps.
            let _ = self.set_shared_data(&format!("fill-{i}"), Some(&[b'x'; 1024]), None);
        }
        if let Some(key) = self.get_http_request_header("x-check") {
            self.present = Some(self.get_shared_data(&key).0.is_some());
        }
        self.hits = loop {
            let (value, cas) = self.get_shared_data("hits");
            let n = value.and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok()).unwrap_or(0) + 1;
            // The SDK returns Err only for CasMismatch: someone else wrote first, retry.
            if self.set_shared_data("hits", Some(n.to_string().as_bytes()), cas).is_ok() {
                break n;
            }
        };
        self.set_http_request_header("x-hits", Some(&self.hits.to_string()));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.add_http_response_header("x-hits", &self.hits.to_string());
        if let Some(present) = self.present {
            self.add_http_response_header("x-present", if present { "yes" } else { "no" });
        }
        Action::Continue
    }
}
