//! Bodies: buffers the whole request body (Pause until end of stream), rejects it with 400
//! when it contains `bad`, else replaces it with its bytes reversed; drops the response
//! `content-length` and replaces the response body with its ASCII upper case plus `!`.
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
        Some(Box::new(Body))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Body;

impl Context for Body {}

impl HttpContext for Body {
    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        if body.windows(3).any(|w| w == b"bad") {
            self.send_http_response(400, vec![], Some(b"rejected: bad body\n"));
            return Action::Pause;
        }
        let reversed: Vec<u8> = body.into_iter().rev().collect();
        self.set_http_request_body(0, size, &reversed);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.remove_http_response_header("content-length");
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let mut body = self.get_http_response_body(0, size).unwrap_or_default();
        body.make_ascii_uppercase();
        body.push(b'!');
        self.set_http_response_body(0, size, &body);
        Action::Continue
    }
}
