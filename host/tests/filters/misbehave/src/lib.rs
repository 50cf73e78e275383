//! Misbehaviour on demand, chosen by request header `x-misbehave` (else the plugin
//! configuration): `spin` loops forever, `hog` allocates 1 MiB chunks until allocation
//! fails, `panic` panics, `recurse` recurses until the stack is exhausted; anything else
//! adds headers `x-misbehave-ok: 1` and `x-misbehave-config: <plugin configuration>`
//! (`env` also adds `x-env`: the environment the filter sees).
//! With `x-misbehave-at: response` it happens in on_http_response_headers instead.
use std::hint::black_box;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

#[derive(Default)]
struct Root {
    default_mode: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.default_mode = String::from_utf8_lossy(&config).trim().to_string();
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Misbehave { default_mode: self.default_mode.clone(), at_response: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Returns only for modes that are not a misbehaviour.
fn misbehave(mode: &str) {
    match mode {
        "spin" => loop {
            black_box(());
        },
        "hog" => {
            let mut hoard = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                black_box(&hoard);
            }
        }
        "panic" => panic!("misbehave: panic requested"),
        "recurse" => {
            black_box(recurse(0));
        }
        _ => {}
    }
}

/// The process environment as the filter sees it: sorted `NAME=VALUE` joined with ";".
fn environment() -> String {
    let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    vars.sort();
    vars.join(";")
}

/// Never returns: each frame keeps 1 KiB live across the recursive call.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 128]);
    recurse(depth + 1) + frame[depth as usize % frame.len()]
}

struct Misbehave {
    default_mode: String,
    at_response: Option<String>,
}

impl Context for Misbehave {}

impl HttpContext for Misbehave {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let mode = self.get_http_request_header("x-misbehave").unwrap_or_else(|| self.default_mode.clone());
        if self.get_http_request_header("x-misbehave-at").as_deref() == Some("response") {
            self.at_response = Some(mode);
        } else {
            misbehave(&mode);
            self.add_http_request_header("x-misbehave-ok", "1");
            self.add_http_request_header("x-misbehave-config", &self.default_mode);
            if mode == "env" {
                self.add_http_request_header("x-env", &environment());
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(mode) = self.at_response.take() {
            misbehave(&mode);
            self.add_http_response_header("x-misbehave-ok", "1");
        }
        Action::Continue
    }
}
