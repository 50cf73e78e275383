//! Hostile on request, by request header `x-hostile`: `giant-log` logs a 16 MiB line,
//! `many-headers` adds 5,000 response headers, `huge-response` answers with an 8 MiB local
//! body, `late-calls` answers, resumes and rewrites headers from `on_log` (after the
//! stream's end), `foreign-context` switches to a context that does not exist and reads
//! headers there. Anything else passes with `x-hostile: none`.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hostile { mode: String::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Hostile {
    mode: String,
}

impl Context for Hostile {}

impl HttpContext for Hostile {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.mode = self.get_http_request_header("x-hostile").unwrap_or_default();
        match self.mode.as_str() {
            "giant-log" => log::info!("{}", "x".repeat(16 << 20)),
            "huge-response" => {
                self.send_http_response(200, vec![("x-hostile", "huge")], Some(&vec![b'h'; 8 << 20]));
                return Action::Pause;
            }
            "foreign-context" => {
                let switched = hostcalls::set_effective_context(0x7fff_0000);
                let read = hostcalls::get_map_value(MapType::HttpRequestHeaders, ":path");
                self.set_http_request_header("x-hostile-switch", Some(&format!("{switched:?}")));
                self.set_http_request_header("x-hostile-read", Some(&format!("{}", read.is_ok())));
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.mode == "many-headers" {
            for i in 0..5000 {
                self.add_http_response_header(&format!("x-many-{i}"), "v");
            }
        }
        self.set_http_response_header("x-hostile", Some(if self.mode.is_empty() { "none" } else { &self.mode }));
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.mode == "late-calls" {
            self.set_http_response_header("x-too-late", Some("1"));
            self.resume_http_request();
            self.send_http_response(418, vec![], Some(b"too late\n"));
        }
    }
}
