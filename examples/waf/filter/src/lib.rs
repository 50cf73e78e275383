//! A small web application firewall: rules from the plugin configuration (JSON) over the
//! request's path, query, headers and body; the first rule that matches answers 403 naming
//! it (body and `x-waf-rule` header) and logs a line naming it.
//!
//! ```json
//! { "rules": [
//!     { "id": "sqli-union", "in": ["query", "body"], "regex": "union\\s+(all\\s+)?select" },
//!     { "id": "traversal", "in": ["path"], "contains": "../" },
//!     { "id": "scanner", "in": ["header:user-agent"], "regex": "sqlmap|nikto" },
//!     { "id": "admin", "in": ["path"], "regex": "^/admin(/|$)", "case_sensitive": true } ],
//!   "max_body_bytes": 65536 }
//! ```
//!
//! `contains` is a literal substring, `regex` a regular expression (the `regex` crate: linear
//! time, no backtracking blow-ups); both match case-insensitively unless `case_sensitive`.
//! Targets (`in`): `path` and `query` (percent-decoded, `+` as a space in the query),
//! `headers` (every `name: value` line), `header:NAME` (each value of that header), `body`
//! (percent-decoded when the request is a form). Body rules make the filter hold the body
//! until it has all of it; a body over `max_body_bytes` (default 1 MiB) gets 413 rather
//! than pass uninspected.
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { waf: None }));
}}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    rules: Vec<RawRule>,
    max_body_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    #[serde(rename = "in")]
    targets: Vec<String>,
    contains: Option<String>,
    regex: Option<String>,
    #[serde(default)]
    case_sensitive: bool,
}

#[derive(PartialEq)]
enum Target {
    Path,
    Query,
    Headers,
    Header(String),
    Body,
}

impl Target {
    fn parse(text: &str) -> Result<Target, String> {
        match text {
            "path" => Ok(Target::Path),
            "query" => Ok(Target::Query),
            "headers" => Ok(Target::Headers),
            "body" => Ok(Target::Body),
            _ => match text.strip_prefix("header:") {
                Some(name) if !name.is_empty() => Ok(Target::Header(name.to_ascii_lowercase())),
                _ => Err(format!("target {text:?} is not path, query, headers, header:NAME or body")),
            },
        }
    }

    fn name(&self) -> String {
        match self {
            Target::Path => "path".into(),
            Target::Query => "query".into(),
            Target::Headers => "headers".into(),
            Target::Header(name) => format!("header {name}"),
            Target::Body => "body".into(),
        }
    }
}

struct Rule {
    id: String,
    targets: Vec<Target>,
    pattern: Regex,
}

struct Waf {
    rules: Vec<Rule>,
    max_body_bytes: usize,
    inspects_body: bool,
}

fn parse_rule(raw: RawRule) -> Result<Rule, String> {
    let id = raw.id;
    let source = match (raw.contains, raw.regex) {
        (Some(text), None) if !text.is_empty() => regex::escape(&text),
        (None, Some(source)) => source,
        _ => return Err(format!("rule {id}: give either a non-empty \"contains\" or a \"regex\"")),
    };
    let pattern = RegexBuilder::new(&source)
        .case_insensitive(!raw.case_sensitive)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("rule {id}: {e}"))?;
    let targets = raw.targets.iter().map(|t| Target::parse(t)).collect::<Result<Vec<_>, _>>();
    let targets = targets.map_err(|e| format!("rule {id}: {e}"))?;
    if targets.is_empty() {
        return Err(format!("rule {id}: \"in\" names no target"));
    }
    Ok(Rule { id, targets, pattern })
}

fn parse_config(text: &[u8]) -> Result<Waf, String> {
    let raw: RawConfig = serde_json::from_slice(text).map_err(|e| format!("not the expected JSON: {e}"))?;
    let rules = raw.rules.into_iter().map(parse_rule).collect::<Result<Vec<_>, _>>()?;
    if let Some(twice) = rules.iter().enumerate().find(|(i, r)| rules[..*i].iter().any(|s| s.id == r.id)) {
        return Err(format!("rule id {} is used twice", twice.1.id));
    }
    let inspects_body = rules.iter().any(|r| r.targets.contains(&Target::Body));
    Ok(Waf { rules, max_body_bytes: raw.max_body_bytes.unwrap_or(1 << 20), inspects_body })
}

/// Percent-decodes `text` (and `+` as a space with `plus`); malformed escapes stay as they are.
fn decode(text: &[u8], plus: bool) -> Vec<u8> {
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'%' => match (text.get(i + 1).copied().and_then(digit), text.get(i + 2).copied().and_then(digit)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

struct Root {
    waf: Option<Rc<Waf>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        match parse_config(&self.get_plugin_configuration().unwrap_or_default()) {
            Ok(waf) => {
                log::info!("{} rules loaded", waf.rules.len());
                self.waf = Some(Rc::new(waf));
                true
            }
            Err(error) => {
                log::error!("bad configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Inspect { waf: self.waf.clone()?, form: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Inspect {
    waf: Rc<Waf>,
    /// The body is a form (application/x-www-form-urlencoded): matched percent-decoded.
    form: bool,
}

impl Inspect {
    /// The request's values for `target` (the body's are given by the caller).
    fn values(&self, target: &Target, headers: &[(String, String)]) -> Vec<Vec<u8>> {
        let uri = self.get_http_request_header(":path").unwrap_or_default();
        let (path, query) = uri.split_once('?').unwrap_or((&uri, ""));
        let regular = || headers.iter().filter(|(name, _)| !name.starts_with(':'));
        match target {
            Target::Path => vec![decode(path.as_bytes(), false)],
            Target::Query => vec![decode(query.as_bytes(), true)],
            Target::Headers => regular().map(|(name, value)| format!("{name}: {value}").into_bytes()).collect(),
            Target::Header(wanted) => {
                regular().filter(|(name, _)| name.eq_ignore_ascii_case(wanted)).map(|(_, v)| v.clone().into()).collect()
            }
            Target::Body => Vec::new(),
        }
    }

    fn block(&self, rule: &Rule, target: &Target) -> Action {
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        log::warn!("rule {} matched the {} of {method} {path}: 403", rule.id, target.name());
        let body = format!("blocked by rule {}\n", rule.id);
        self.send_http_response(
            403,
            vec![("x-waf-rule", &rule.id), ("content-type", "text/plain")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}

impl Context for Inspect {}

impl HttpContext for Inspect {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let waf = Rc::clone(&self.waf);
        let headers = self.get_http_request_headers();
        for rule in &waf.rules {
            for target in rule.targets.iter().filter(|t| **t != Target::Body) {
                if self.values(target, &headers).iter().any(|value| rule.pattern.is_match(value)) {
                    return self.block(rule, target);
                }
            }
        }
        let content_type = self.get_http_request_header("content-type").unwrap_or_default();
        self.form = content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded");
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let waf = Rc::clone(&self.waf);
        if !waf.inspects_body {
            return Action::Continue;
        }
        if size > waf.max_body_bytes {
            let path = self.get_http_request_header(":path").unwrap_or_default();
            log::warn!("body of {path} is over {} bytes: 413", waf.max_body_bytes);
            self.send_http_response(413, vec![("content-type", "text/plain")], Some(b"body too large to inspect\n"));
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let body = if self.form { decode(&body, true) } else { body };
        for rule in waf.rules.iter().filter(|r| r.targets.contains(&Target::Body)) {
            if rule.pattern.is_match(&body) {
                return self.block(rule, &Target::Body);
            }
        }
        Action::Continue
    }
}
