//! Callback order and arguments: logs (at info) every callback the root and HTTP contexts
//! get, with the context id, e.g. `request_body 2 size=5 eos=true`; and, with its request
//! headers, how many requests the instance saw before (`requests before 2: 0`: a fresh
//! instance, or one reset to its state after start-up).
use std::sync::atomic::{AtomicU32, Ordering};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| Box::new(Root(id)));
}}

/// Requests this instance has seen.
static REQUESTS: AtomicU32 = AtomicU32::new(0);

struct Root(u32);

impl Context for Root {
    fn on_done(&mut self) -> bool {
        log::info!("root on_done {}", self.0);
        true
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        log::info!("on_vm_start {}", self.0);
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        log::info!("on_configure {}", self.0);
        true
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        log::info!("on_context_create {id}");
        Some(Box::new(Stream(id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream(u32);

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        log::info!("on_done {}", self.0);
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        log::info!("request_headers {} eos={end_of_stream}", self.0);
        log::info!("requests before {}: {}", self.0, REQUESTS.fetch_add(1, Ordering::Relaxed));
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        log::info!("request_body {} size={size} eos={end_of_stream}", self.0);
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        log::info!("request_trailers {}", self.0);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        log::info!("response_headers {}", self.0);
        Action::Continue
    }

    fn on_http_response_body(&mut self, _: usize, _: bool) -> Action {
        log::info!("response_body {}", self.0);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        log::info!("response_trailers {}", self.0);
        Action::Continue
    }

    fn on_log(&mut self) {
        log::info!("on_log {}", self.0);
    }
}
