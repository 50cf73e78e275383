//! Rate limiting with a token bucket per client, shared by every nginx worker.
//!
//! The plugin configuration is JSON:
//!
//! ```json
//! {"name": "api", "rate": 2, "per": "second", "burst": 5, "key_header": "x-api-key"}
//! ```
//!
//! A client is keyed by the `key_header` request header (when configured and present), else
//! by its address (`source.address` without the port). Its bucket holds up to `burst` tokens
//! and refills at `rate` tokens `per` second, minute or hour; a request takes one token.
//! Buckets live in shared data under `<name>:<client>` and are updated with compare-and-swap,
//! retried on a conflict, so concurrent requests on any worker never spend a token twice.
//! Allowed requests get `x-ratelimit-remaining` on their response; the others a local 429
//! with `retry-after`: the whole seconds until the next token.
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<Limiter>::default());
}}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Per {
    #[default]
    Second,
    Minute,
    Hour,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: String,
    rate: f64,
    #[serde(default)]
    per: Per,
    burst: u32,
    key_header: Option<String>,
}

/// A validated configuration: the refill rate in tokens per second.
#[derive(Clone, Default)]
struct Limit {
    name: String,
    per_second: f64,
    burst: f64,
    key_header: Option<String>,
}

impl Limit {
    fn parse(json: &[u8]) -> Result<Limit, String> {
        let config: Config = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if config.name.is_empty() || config.name.contains(':') {
            return Err("name must be non-empty and without ':'".into());
        }
        if !(config.rate.is_finite() && config.rate > 0.0) {
            return Err(format!("rate must be a positive number, not {}", config.rate));
        }
        if config.burst == 0 {
            return Err("burst must be at least 1".into());
        }
        let per = format!("{:?}", config.per).to_lowercase();
        log::info!("limit {:?}: {} per {per}, burst {}", config.name, config.rate, config.burst);
        let seconds = match config.per {
            Per::Second => 1.0,
            Per::Minute => 60.0,
            Per::Hour => 3600.0,
        };
        Ok(Limit {
            name: config.name,
            per_second: config.rate / seconds,
            burst: config.burst.into(),
            key_header: config.key_header.map(|h| h.to_ascii_lowercase()),
        })
    }
}

#[derive(Default)]
struct Limiter {
    limit: Limit,
}

impl Context for Limiter {}

impl RootContext for Limiter {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match Limit::parse(&config) {
            Ok(limit) => {
                self.limit = limit;
                true
            }
            Err(error) => {
                log::error!("bad configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { limit: self.limit.clone(), remaining: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A bucket as stored: its tokens and when they were counted (ns since the epoch).
struct Bucket {
    tokens: f64,
    at: u128,
}

impl Bucket {
    fn decode(bytes: &[u8]) -> Option<Bucket> {
        let (tokens, at) = std::str::from_utf8(bytes).ok()?.split_once(' ')?;
        Some(Bucket { tokens: tokens.parse().ok()?, at: at.parse().ok()? })
    }

    fn encode(&self) -> String {
        format!("{} {}", self.tokens, self.at)
    }
}

enum Verdict {
    Allowed { remaining: u64 },
    Limited { retry_after: u64 },
}

struct Request {
    limit: Limit,
    remaining: Option<u64>,
}

impl Request {
    fn client(&self) -> String {
        let header = self.limit.key_header.as_deref().and_then(|name| self.get_http_request_header(name));
        header.unwrap_or_else(|| {
            let address = self.get_property(vec!["source", "address"]).unwrap_or_default();
            let address = String::from_utf8_lossy(&address);
            // "1.2.3.4:5678" or "[::1]:5678"
            let host = address.rsplit_once(':').map_or(&*address, |(host, _)| host);
            host.trim_start_matches('[').trim_end_matches(']').to_string()
        })
    }

    /// Takes a token from `key`'s bucket, retrying when another worker wrote in between. (The
    /// loop ends: a conflict means another request made progress; the callback's deadline
    /// bounds it all the same.)
    fn take(&self, key: &str) -> Verdict {
        let limit = &self.limit;
        loop {
            let now = self.get_current_time().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            let (stored, cas) = self.get_shared_data(key);
            let bucket = match stored.as_deref().and_then(Bucket::decode) {
                Some(bucket) => {
                    let elapsed = now.saturating_sub(bucket.at) as f64 / 1e9;
                    Bucket { tokens: (bucket.tokens + elapsed * limit.per_second).min(limit.burst), at: now }
                }
                // A new (or unreadable) bucket is written full first, then spent from like any
                // other. The ABI has no insert-if-absent: a write to a missing key cannot be
                // conditional, so it must carry no spent token (another worker may be creating
                // the same bucket). A conflict, like success, means: read again.
                None => {
                    let full = Bucket { tokens: limit.burst, at: now };
                    let _ = self.set_shared_data(key, Some(full.encode().as_bytes()), cas);
                    continue;
                }
            };
            if bucket.tokens < 1.0 {
                let retry_after = ((1.0 - bucket.tokens) / limit.per_second).ceil().max(1.0) as u64;
                return Verdict::Limited { retry_after };
            }
            let spent = Bucket { tokens: bucket.tokens - 1.0, at: bucket.at };
            // The SDK returns Err only for CasMismatch: someone else wrote first, retry.
            if self.set_shared_data(key, Some(spent.encode().as_bytes()), cas).is_ok() {
                return Verdict::Allowed { remaining: spent.tokens.floor() as u64 };
            }
        }
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let client = self.client();
        match self.take(&format!("{}:{client}", self.limit.name)) {
            Verdict::Allowed { remaining } => {
                self.remaining = Some(remaining);
                Action::Continue
            }
            Verdict::Limited { retry_after } => {
                log::info!("limit {:?}: {client} limited, retry after {retry_after} s", self.limit.name);
                let retry_after = retry_after.to_string();
                let body = format!("rate limit exceeded, retry in {retry_after} s\n");
                self.send_http_response(
                    429,
                    vec![("retry-after", &retry_after), ("x-ratelimit-remaining", "0")],
                    Some(body.as_bytes()),
                );
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(remaining) = self.remaining {
            self.set_http_response_header("x-ratelimit-remaining", Some(&remaining.to_string()));
        }
        Action::Continue
    }
}
