//! Turns XML responses (`application/xml`, `text/xml`, `application/*+xml`) into JSON for
//! the client; other responses pass through untouched.
//!
//! The response goes out with `content-type: application/json` (and without the XML's
//! `content-length`, `etag` and `accept-ranges`); the filter holds the body until it has all
//! of it, then converts it:
//!
//! ```text
//! <book id="7" lang="en"><title>Dune</title><tag>sf</tag><tag>classic</tag></book>
//! {"book":{"@id":"7","@lang":"en","title":"Dune","tag":["sf","classic"]}}
//! ```
//!
//! An element is a string (its text) when it has neither attributes nor child elements,
//! otherwise an object: attributes as `@name`, children by name (repeated names make an
//! array, in document order), its own text as `#text`. Values stay strings: XML has no
//! types. Namespaced names keep their prefix (`atom:link`). Comments and processing
//! instructions are dropped; DTDs are refused (no entity expansion).
//!
//! XML that does not parse becomes a JSON error body, `{"error": "upstream sent malformed
//! XML: ..."}`, with the upstream's status (the headers are gone by then), and a warning in
//! the log. A response with a `content-encoding`, or a `content-length` over `max_body_bytes`
//! (plugin configuration `{"max_body_bytes": N}`, default 4 MiB), passes through as it is; one
//! without a length that grows past the limit is dropped for a JSON error.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde_json::{json, Map, Value};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { max_body_bytes: 4 << 20 }));
}}

struct Root {
    max_body_bytes: usize,
}

fn parse_config(text: &[u8]) -> Result<Option<usize>, String> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let config: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(object) = config.as_object() else { return Err("expected an object".into()) };
    if let Some(unknown) = object.keys().find(|k| *k != "max_body_bytes") {
        return Err(format!("unknown field {unknown:?} (expected max_body_bytes)"));
    }
    let max = object.get("max_body_bytes").map(|v| v.as_u64().filter(|&n| n > 0));
    max.map(|n| n.map(|n| n as usize).ok_or_else(|| "max_body_bytes must be a positive integer".to_string()))
        .transpose()
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        match parse_config(&self.get_plugin_configuration().unwrap_or_default()) {
            Ok(max) => {
                self.max_body_bytes = max.unwrap_or(self.max_body_bytes);
                true
            }
            Err(error) => {
                log::error!("bad configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Convert { max_body_bytes: self.max_body_bytes, state: State::Untouched }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Whether a content type (parameters and all) is an XML one.
fn is_xml(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/xml" || mime == "text/xml" || (mime.starts_with("application/") && mime.ends_with("+xml"))
}

/// An element's or attribute's name as written: `prefix:local` when it has a namespace
/// with a prefix.
fn name(node: roxmltree::Node, namespace: Option<&str>, local: &str) -> String {
    match namespace.and_then(|uri| node.lookup_prefix(uri)) {
        Some(prefix) => format!("{prefix}:{local}"),
        None => local.to_string(),
    }
}

fn element(node: roxmltree::Node) -> Value {
    let mut object = Map::new();
    for attribute in node.attributes() {
        let key = format!("@{}", name(node, attribute.namespace(), attribute.name()));
        object.insert(key, Value::String(attribute.value().to_string()));
    }
    let mut text = String::new();
    for child in node.children() {
        if child.is_element() {
            let key = name(child, child.tag_name().namespace(), child.tag_name().name());
            let value = element(child);
            match object.get_mut(&key) {
                Some(Value::Array(list)) => list.push(value),
                Some(first) => *first = Value::Array(vec![first.take(), value]),
                None => {
                    object.insert(key, value);
                }
            }
        } else if child.is_text() {
            text.push_str(child.text().unwrap_or(""));
        }
    }
    let text = text.trim();
    if object.is_empty() {
        return Value::String(text.to_string());
    }
    if !text.is_empty() {
        object.insert("#text".into(), Value::String(text.to_string()));
    }
    Value::Object(object)
}

fn to_json(xml: &str) -> Result<Value, roxmltree::Error> {
    let document = roxmltree::Document::parse(xml)?;
    let root = document.root_element();
    let key = name(root, root.tag_name().namespace(), root.tag_name().name());
    Ok(Value::Object(Map::from_iter([(key, element(root))])))
}

struct Convert {
    max_body_bytes: usize,
    state: State,
}

#[derive(PartialEq)]
enum State {
    /// Not an XML response (or one passed through as it is).
    Untouched,
    /// Held until its end, then converted.
    Converting,
    /// Grew past the limit without a length in advance: dropped, replaced at its end.
    TooLarge,
}

impl Convert {
    fn error(&self, message: String) -> Vec<u8> {
        log::warn!("{message}");
        (json!({ "error": message }).to_string() + "\n").into_bytes()
    }
}

impl Context for Convert {}

impl HttpContext for Convert {
    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let content_type = self.get_http_response_header("content-type").unwrap_or_default();
        if end_of_stream || !is_xml(&content_type) {
            return Action::Continue;
        }
        if let Some(encoding) = self.get_http_response_header("content-encoding") {
            log::warn!("passing a {encoding}-encoded XML response through unconverted");
            return Action::Continue;
        }
        let length = self.get_http_response_header("content-length").and_then(|l| l.parse::<usize>().ok());
        if length.is_some_and(|length| length > self.max_body_bytes) {
            log::warn!("passing an XML response over {} bytes through unconverted", self.max_body_bytes);
            return Action::Continue;
        }
        // The headers leave now (nginx sends them before the body arrives), so they say what
        // the body will be.
        self.set_http_response_header("content-type", Some("application/json"));
        // The upstream's length, entity tag and ranges describe the XML, not the JSON.
        for stale in ["content-length", "etag", "accept-ranges"] {
            self.set_http_response_header(stale, None);
        }
        self.state = State::Converting;
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.state == State::Converting && size > self.max_body_bytes {
            self.state = State::TooLarge;
        }
        let replacement = match self.state {
            State::Untouched => return Action::Continue,
            State::Converting if !end_of_stream => return Action::Pause,
            State::TooLarge if !end_of_stream => Vec::new(),
            State::TooLarge => self.error(format!("upstream XML is over {} bytes", self.max_body_bytes)),
            State::Converting => {
                let body = self.get_http_response_body(0, size).unwrap_or_default();
                let converted = match std::str::from_utf8(&body) {
                    Ok(xml) => to_json(xml).map_err(|e| e.to_string()),
                    Err(e) => Err(format!("not UTF-8: {e}")),
                };
                match converted {
                    Ok(value) => (value.to_string() + "\n").into_bytes(),
                    Err(error) => self.error(format!("upstream sent malformed XML: {error}")),
                }
            }
        };
        self.set_http_response_body(0, size, &replacement);
        Action::Continue
    }
}
