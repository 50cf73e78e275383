//! Header maps: reads `:method`/`:path`, adds, replaces and removes request and response
//! headers, copies the plugin configuration into a header, and answers 403 locally when the
//! request carries `x-deny` (451 in place of the response when it carries `x-deny-response`).
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

#[derive(Default)]
struct Root {
    config: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        match String::from_utf8(self.get_plugin_configuration().unwrap_or_default()) {
            Ok(config) => {
                self.config = config;
                true
            }
            Err(_) => false,
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers { config: self.config.clone(), path: String::new(), deny_response: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Headers {
    config: String,
    path: String,
    deny_response: bool,
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let count = self.get_http_request_headers().len();
        let method = self.get_http_request_header(":method").unwrap_or_default();
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        self.deny_response = self.get_http_request_header("x-deny-response").is_some();
        log::info!("request {method} {}", self.path);
        if self.get_http_request_header("x-deny").is_some() {
            self.send_http_response(403, vec![("x-denied", "yes")], Some(b"denied\n"));
            return Action::Pause;
        }
        self.set_http_request_header("x-inwasm-config", Some(&self.config));
        self.add_http_request_header("x-inwasm-added", "1");
        self.remove_http_request_header("x-remove-me");
        self.set_http_request_header("x-header-count", Some(&count.to_string()));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.deny_response {
            self.send_http_response(451, vec![("x-denied-late", "yes")], Some(b"blocked late\n"));
            return Action::Pause;
        }
        self.add_http_response_header("x-inwasm", "hello");
        self.set_http_response_header("server", Some("inwasm"));
        self.set_http_response_header("x-request-path", Some(&self.path));
        Action::Continue
    }
}
