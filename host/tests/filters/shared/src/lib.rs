//! Shared data with compare-and-swap: every request increments the decimal counter `hits`,
//! retrying on CAS_MISMATCH, and sees the new value as request and response header `x-hits`.
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
        Some(Box::new(Hits(0)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Hits(u64);

impl Context for Hits {}

impl HttpContext for Hits {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.0 = loop {
            let (value, cas) = self.get_shared_data("hits");
            let n = value.and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok()).unwrap_or(0) + 1;
            // The SDK returns Err only for CasMismatch: someone else wrote first, retry.
            if self.set_shared_data("hits", Some(n.to_string().as_bytes()), cas).is_ok() {
                break n;
            }
        };
        self.set_http_request_header("x-hits", Some(&self.0.to_string()));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.add_http_response_header("x-hits", &self.0.to_string());
        Action::Continue
    }
}
