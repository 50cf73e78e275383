//! A filter shaped like a WAF (Coraza with the OWASP Core Rule Set is the model): a large
//! module (regex and Aho-Corasick engines), a slow start-up (it compiles its rule sets in
//! `on_configure`: a few hundred regular expressions and tens of thousands of words), and
//! CPU-heavy inspection of the query and the whole request body (URL-decoded, lower-cased,
//! every rule run over it). A request that matches a rule is answered 403 and the rule
//! logged; the others go on with `x-inspected: <bytes>`.
//!
//! The plugin configuration is the number of generated words (default 30000); the rules are
//! generated the same way on every start, so every instance and host agrees.
use std::time::Instant;

use aho_corasick::AhoCorasick;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use regex::RegexSet;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

/// Attack shapes, in the spirit of the Core Rule Set's (each expanded into variants).
const SHAPES: [&str; 12] = [
    r"<script[^>]*>",
    r"\bunion\s+(all\s+)?select\b",
    r"'\s*or\s+'?\d+'?\s*=\s*'?\d+",
    r"\.\./\.\./",
    r";\s*(cat|ls|id|uname)\b",
    r"\$\{jndi:",
    r"\bon(load|error|click)\s*=",
    r"javascript:",
    r"\bdrop\s+table\b",
    r"/etc/(passwd|shadow)",
    r"\bexec\s*\(",
    r"maliciouspayload",
];

struct Rules {
    regexes: RegexSet,
    words: AhoCorasick,
}

/// A deterministic generator (xorshift), so every start builds the same rules.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn word(&mut self) -> String {
        let len = 8 + self.next() % 8;
        (0..len).map(|_| (b'a' + (self.next() % 26) as u8) as char).collect()
    }
}

impl Rules {
    fn build(words: usize) -> Rules {
        let mut generator = Generator(0x2545_f491_4f6c_dd1d);
        // The shapes, then many variants of them in a generated context, as a rule set grows.
        let variants = (0..300).map(|i| format!(r"{}\s*[=:]\s*{}", generator.word(), SHAPES[i % SHAPES.len()]));
        let patterns: Vec<String> = SHAPES.iter().map(|shape| shape.to_string()).chain(variants).collect();
        let regexes = RegexSet::new(&patterns).expect("valid rules");
        // Words no benign request contains (each starts with a "zq" no English word has).
        let words: Vec<String> = (0..words).map(|_| format!("zq{}", generator.word())).collect();
        let words = AhoCorasick::new(&words).expect("valid words");
        Rules { regexes, words }
    }

    /// The first rule `text` matches, by number (which one is only worked out for a match).
    fn check(&self, text: &str) -> Option<usize> {
        if self.regexes.is_match(text) {
            return self.regexes.matches(text).iter().next();
        }
        self.words.find(text).map(|m| 10_000 + m.pattern().as_usize())
    }
}

#[derive(Default)]
struct Root {
    rules: Option<std::rc::Rc<Rules>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let words = String::from_utf8_lossy(&config).trim().parse().unwrap_or(30_000);
        let started = Instant::now();
        self.rules = Some(std::rc::Rc::new(Rules::build(words)));
        log::info!("rules compiled in {} ms", started.elapsed().as_millis());
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Inspection { rules: self.rules.clone()?, inspected: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Inspection {
    rules: std::rc::Rc<Rules>,
    inspected: usize,
}

/// URL-decoded and lower-cased, as a WAF normalises what it checks.
fn normalize(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_lowercase()
}

impl Inspection {
    /// Checks `raw`; answers 403 (and returns false) when a rule matches.
    fn inspect(&mut self, raw: &[u8]) -> bool {
        self.inspected += raw.len();
        let Some(rule) = self.rules.check(&normalize(raw)) else { return true };
        log::warn!("blocked by rule {rule}");
        self.send_http_response(403, vec![("x-blocked-by", &rule.to_string())], Some(b"blocked\n"));
        false
    }
}

impl Context for Inspection {}

impl HttpContext for Inspection {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let query = path.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
        if !self.inspect(query.as_bytes()) {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        if !self.inspect(&body) {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-inspected", Some(&self.inspected.to_string()));
        Action::Continue
    }
}
