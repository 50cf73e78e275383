//! Rewrites request and response headers by rules from the plugin configuration, one rule
//! per line:
//!
//! ```text
//! request  set    x-hello world     # set (replace) a request header
//! request  remove x-internal        # drop a request header
//! response add    x-powered-by inwasm
//! response set    cache-control no-store
//! ```
//!
//! Every response also gets `x-inwasm-request-ms`, the time from request to response
//! headers in milliseconds, taken from the host's clock.
use std::time::SystemTime;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<Rules>::default());
}}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Request,
    Response,
}

#[derive(Clone)]
enum Op {
    Set(String, String),
    Add(String, String),
    Remove(String),
}

#[derive(Clone, Default)]
struct Rules {
    rules: Vec<(Side, Op)>,
}

fn parse(line: &str) -> Result<(Side, Op), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let side = match words.first() {
        Some(&"request") => Side::Request,
        Some(&"response") => Side::Response,
        _ => return Err(format!("rule must start with request or response: {line:?}")),
    };
    let value = || words[3..].join(" ");
    let op = match (words.get(1), words.get(2)) {
        (Some(&"set"), Some(name)) if words.len() > 3 => Op::Set(name.to_string(), value()),
        (Some(&"add"), Some(name)) if words.len() > 3 => Op::Add(name.to_string(), value()),
        (Some(&"remove"), Some(name)) if words.len() == 3 => Op::Remove(name.to_string()),
        _ => return Err(format!("expected set NAME VALUE, add NAME VALUE or remove NAME: {line:?}")),
    };
    Ok((side, op))
}

impl Context for Rules {}

impl RootContext for Rules {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        let lines = config.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty());
        match lines.map(parse).collect::<Result<Vec<_>, _>>() {
            Ok(rules) => {
                log::info!("{} header rules loaded", rules.len());
                self.rules = rules;
                true
            }
            Err(error) => {
                log::error!("bad configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Rewrite { rules: self.rules.clone(), started: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Rewrite {
    rules: Vec<(Side, Op)>,
    started: Option<SystemTime>,
}

impl Rewrite {
    fn apply(&self, side: Side) {
        for (_, op) in self.rules.iter().filter(|(s, _)| *s == side) {
            match (side, op) {
                (Side::Request, Op::Set(name, value)) => self.set_http_request_header(name, Some(value)),
                (Side::Request, Op::Add(name, value)) => self.add_http_request_header(name, value),
                (Side::Request, Op::Remove(name)) => self.set_http_request_header(name, None),
                (Side::Response, Op::Set(name, value)) => self.set_http_response_header(name, Some(value)),
                (Side::Response, Op::Add(name, value)) => self.add_http_response_header(name, value),
                (Side::Response, Op::Remove(name)) => self.set_http_response_header(name, None),
            }
        }
    }
}

impl Context for Rewrite {}

impl HttpContext for Rewrite {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.started = Some(self.get_current_time());
        self.apply(Side::Request);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.apply(Side::Response);
        if let Some(started) = self.started {
            let elapsed = self.get_current_time().duration_since(started).unwrap_or_default();
            self.set_http_response_header("x-inwasm-request-ms", Some(&elapsed.as_millis().to_string()));
        }
        Action::Continue
    }
}
