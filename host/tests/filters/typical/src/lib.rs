//! The benchmarks' typical filter: per request, what a header-rewriting or auth filter does.
//! It reads `:path`, `:method` and `user-agent` and the `request.path` property, formats a
//! string and sets it as a request header, and sets three response headers (one of them
//! removing `content-length`). Next to the one-header filter, it shows what a filter's host
//! calls cost beyond the callbacks themselves.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Typical { route: String::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Typical {
    /// What the request side saw, for the response side.
    route: String,
}

impl Context for Typical {}

impl HttpContext for Typical {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let agent = self.get_http_request_header("user-agent").unwrap_or_default();
        let property = self.get_property(vec!["request", "path"]).unwrap_or_default();
        self.route = format!("{method} {path} ({} bytes of path, agent {})", property.len(), agent.len());
        self.set_http_request_header("x-route", Some(&self.route));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-wasm", Some("1"));
        self.set_http_response_header("x-route", Some(&self.route));
        self.set_http_response_header("content-length", None);
        Action::Continue
    }
}
