//! Validates JSON request bodies against a JSON Schema from the plugin configuration:
//!
//! ```json
//! { "schema": { "type": "object", "required": ["name"], ... }, "max_body_bytes": 65536 }
//! ```
//!
//! The filter holds the body until it has all of it, then parses and validates it (drafts 4
//! to 2020-12, with the `jsonschema` crate; `format`s such as `email` are checked). A body that matches goes on to the upstream
//! unchanged; one that does not gets 400 with a JSON reason naming each failing place as a
//! JSON Pointer (`{"error": "...", "errors": [{"path": "/items/0/qty", "message": "..."}]}`).
//! A missing, empty or non-JSON body gets 400 too; one over `max_body_bytes` (default 1 MiB)
//! gets 413 as soon as that much has arrived.
use std::rc::Rc;

use jsonschema::error::ValidationErrorKind;
use jsonschema::Validator;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde_json::{json, Value};

/// At most this many schema violations are reported in one answer.
const MAX_REPORTED: usize = 10;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: None }));
}}

struct Config {
    validator: Validator,
    max_body_bytes: usize,
}

fn parse_config(text: &[u8]) -> Result<Config, String> {
    let mut config: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(object) = config.as_object_mut() else { return Err("expected an object with \"schema\"".into()) };
    let schema = object.remove("schema").ok_or("no \"schema\"")?;
    let max_body_bytes = match object.remove("max_body_bytes") {
        None => 1 << 20,
        Some(value) => value.as_u64().filter(|&n| n > 0).ok_or("max_body_bytes must be a positive integer")? as usize,
    };
    if let Some(unknown) = object.keys().next() {
        return Err(format!("unknown field {unknown:?} (expected schema, max_body_bytes)"));
    }
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| format!("invalid schema: {e}"))?;
    Ok(Config { validator, max_body_bytes })
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        match parse_config(&self.get_plugin_configuration().unwrap_or_default()) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(error) => {
                log::error!("bad configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Validate { config: self.config.clone()? }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Validate {
    config: Rc<Config>,
}

impl Validate {
    fn refuse(&self, status: u32, answer: Value) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        log::info!("{status} for {path}: {answer}");
        let body = answer.to_string() + "\n";
        self.send_http_response(status, vec![("content-type", "application/json")], Some(body.as_bytes()));
        Action::Pause
    }

    /// The schema's violations by `body`, as `{path, message}` objects.
    fn violations(&self, body: &Value) -> Vec<Value> {
        let violation = |e: jsonschema::ValidationError| {
            let mut path = e.instance_path().to_string();
            if let ValidationErrorKind::Required { property: Value::String(name) } = e.kind() {
                // Name the missing field itself (as a JSON Pointer token).
                path = format!("{path}/{}", name.replace('~', "~0").replace('/', "~1"));
            }
            json!({ "path": path, "message": e.to_string() })
        };
        self.config.validator.iter_errors(body).take(MAX_REPORTED).map(violation).collect()
    }
}

impl Context for Validate {}

impl HttpContext for Validate {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            return self.refuse(400, json!({ "error": "empty body: a JSON document is required" }));
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let limit = self.config.max_body_bytes;
        if size > limit {
            return self.refuse(413, json!({ "error": format!("body is larger than {limit} bytes") }));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        if body.iter().all(u8::is_ascii_whitespace) {
            return self.refuse(400, json!({ "error": "empty body: a JSON document is required" }));
        }
        let document: Value = match serde_json::from_slice(&body) {
            Ok(document) => document,
            Err(e) => return self.refuse(400, json!({ "error": format!("body is not JSON: {e}") })),
        };
        let errors = self.violations(&document);
        if errors.is_empty() {
            return Action::Continue;
        }
        self.refuse(400, json!({ "error": "body does not match the schema", "errors": errors }))
    }
}
