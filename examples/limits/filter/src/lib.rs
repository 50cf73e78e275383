//! A filter that misbehaves on request, to show the host's limits at work. The last segment
//! of the request path chooses, in on_http_request_headers:
//!
//! - `loop`: loops forever (stopped by `proxy_wasm_timeout`);
//! - `hog`: allocates 1 MiB blocks until allocation fails (`module_memory_limit`);
//! - `panic`: panics (a trap);
//! - `recurse`: recurses until the stack is exhausted (a trap);
//!
//! anything else passes, and the response gets `x-instance-requests`: how many requests
//! this instance of the filter has seen (1 with `proxy_wasm_isolation stream`; back to 1
//! after a failure with a shared instance, which the host then rebuilt).
use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

#[derive(Default)]
struct Root {
    requests: Rc<Cell<u64>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        self.requests.set(self.requests.get() + 1);
        Some(Box::new(Request { requests: self.requests.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Holds one more 1 KiB frame on the stack per call, and never returns.
#[allow(unconditional_recursion)]
fn recurse(depth: usize) -> usize {
    let frame = black_box([depth; 128]);
    recurse(depth + 1) ^ frame[depth % frame.len()]
}

struct Request {
    requests: Rc<Cell<u64>>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        match path.rsplit('/').next().unwrap_or_default() {
            "loop" => {
                log::info!("looping forever");
                loop {
                    black_box(());
                }
            }
            "hog" => {
                log::info!("allocating until memory runs out");
                // Reserved, not written: the memory limit stops it in microseconds, far
                // inside any deadline, however busy the machine.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(Vec::with_capacity(1 << 20));
                    black_box(&hoard);
                }
            }
            "panic" => panic!("panicking on request"),
            "recurse" => {
                log::info!("recursing without end");
                black_box(recurse(0));
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-instance-requests", Some(&self.requests.get().to_string()));
        Action::Continue
    }
}
