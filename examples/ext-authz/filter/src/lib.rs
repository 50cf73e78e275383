//! External authorization: each request is paused while an authorization service decides on
//! its `authorization` header, then resumed or denied. The plugin configuration is JSON:
//!
//! ```json
//! {"upstream": "auth", "path": "/check", "timeout_ms": 500, "cache_ttl_s": 30,
//!  "user_header": "x-user", "failure_mode_allow": false}
//! ```
//!
//! The filter sends `GET <path>` with the request's `authorization` header to `upstream` (an
//! nginx `upstream {}` name or `host:port`). A 200 lets the request through with the
//! service's `x-user` answer in `user_header` (a client's own `user_header` is always
//! dropped); a 401 is passed to the client with the service's `www-authenticate` and body;
//! any other 4xx is a 403. Decisions are cached in shared data per service and token (a
//! SHA-256 of both) for `cache_ttl_s` seconds, and responses say `x-authz-cache: hit` or
//! `miss`. When the service fails (no answer, a 5xx) the request gets a 503, or with
//! `failure_mode_allow` goes on with `x-authz-failure-mode-allowed: true`; failures are not
//! cached.
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use sha2::{Digest, Sha256};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

fn default_path() -> String {
    "/check".into()
}

fn default_timeout_ms() -> u64 {
    500
}

fn default_user_header() -> String {
    "x-user".into()
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    upstream: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    cache_ttl_s: u64,
    #[serde(default = "default_user_header")]
    user_header: String,
    #[serde(default)]
    failure_mode_allow: bool,
}

impl Config {
    fn parse(json: &[u8]) -> Result<Config, String> {
        let config: Config = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if config.upstream.is_empty() {
            return Err("upstream must name an upstream block or host:port".into());
        }
        if !config.path.starts_with('/') {
            return Err(format!("path must start with '/', not {:?}", config.path));
        }
        if !(1..=60_000).contains(&config.timeout_ms) {
            return Err(format!("timeout_ms must be 1 to 60000, not {}", config.timeout_ms));
        }
        Ok(Config { user_header: config.user_header.to_ascii_lowercase(), ..config })
    }
}

#[derive(Default)]
struct Root {
    config: Config,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&config) {
            Ok(config) => {
                log::info!("asking {}{} (cache {} s)", config.upstream, config.path, config.cache_ttl_s);
                self.config = config;
                true
            }
            Err(error) => {
                log::error!("bad configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Authz { config: self.config.clone(), token: String::new(), cache: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What the service decided about a token.
enum Decision {
    Allow {
        user: String,
    },
    /// 401, with the service's `www-authenticate` and body.
    Unauthenticated {
        challenge: String,
        body: String,
    },
    Forbidden,
}

impl Decision {
    /// As cached: `<expiry ns> allow <user>`, `<expiry ns> 401 <challenge>\n<body>` or
    /// `<expiry ns> 403`.
    fn encode(&self, expires: u128) -> String {
        match self {
            Decision::Allow { user } => format!("{expires} allow {user}"),
            Decision::Unauthenticated { challenge, body } => format!("{expires} 401 {challenge}\n{body}"),
            Decision::Forbidden => format!("{expires} 403"),
        }
    }

    /// The cached decision, unless it has expired by `now`.
    fn decode(bytes: &[u8], now: u128) -> Option<Decision> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (expires, rest) = text.split_once(' ')?;
        if expires.parse::<u128>().ok()? <= now {
            return None;
        }
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "allow" => Some(Decision::Allow { user: rest.to_string() }),
            "401" => {
                let (challenge, body) = rest.split_once('\n')?;
                Some(Decision::Unauthenticated { challenge: challenge.to_string(), body: body.to_string() })
            }
            "403" => Some(Decision::Forbidden),
            _ => None,
        }
    }
}

struct Authz {
    config: Config,
    token: String,
    /// `hit` or `miss`, once the cache was consulted.
    cache: Option<&'static str>,
}

impl Authz {
    fn now(&self) -> u128 {
        self.get_current_time().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
    }

    /// The token's decisions by this service: the digest of service, path and token.
    fn cache_key(&self) -> String {
        let digest = Sha256::digest(format!("{}\n{}\n{}", self.config.upstream, self.config.path, self.token));
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("authz:{hex}")
    }

    /// Applies a decision: true when the request may go on (with its user header set), false
    /// when it was answered.
    fn decide(&mut self, decision: &Decision) -> bool {
        match decision {
            Decision::Allow { user } => {
                let user = Some(user.as_str()).filter(|u| !u.is_empty());
                self.set_http_request_header(&self.config.user_header, user);
                return true;
            }
            Decision::Unauthenticated { challenge, body } => {
                let headers =
                    if challenge.is_empty() { vec![] } else { vec![("www-authenticate", challenge.as_str())] };
                self.send_http_response(401, headers, Some(body.as_bytes()));
            }
            Decision::Forbidden => self.send_http_response(403, vec![], Some(b"forbidden\n")),
        }
        false
    }

    /// The service did not decide (no answer, an error status): true when the request may go
    /// on all the same (`failure_mode_allow`), false when it was answered 503.
    fn service_failed(&mut self, why: &str) -> bool {
        log::warn!("authorization service {} failed: {why}", self.config.upstream);
        if self.config.failure_mode_allow {
            self.set_http_request_header("x-authz-failure-mode-allowed", Some("true"));
            return true;
        }
        self.send_http_response(503, vec![], Some(b"authorization service unavailable\n"));
        false
    }
}

impl Context for Authz {
    fn on_http_call_response(&mut self, _: u32, num_headers: usize, body_size: usize, _: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let decision = match status.as_str() {
            _ if num_headers == 0 => None,
            "200" => Some(Decision::Allow { user: self.get_http_call_response_header("x-user").unwrap_or_default() }),
            "401" => Some(Decision::Unauthenticated {
                challenge: self.get_http_call_response_header("www-authenticate").unwrap_or_default(),
                body: String::from_utf8_lossy(&self.get_http_call_response_body(0, body_size).unwrap_or_default())
                    .into_owned(),
            }),
            s if s.starts_with('4') => Some(Decision::Forbidden),
            _ => None,
        };
        let go_on = match decision {
            Some(decision) => {
                if self.config.cache_ttl_s > 0 {
                    let expires = self.now() + Duration::from_secs(self.config.cache_ttl_s).as_nanos();
                    // No CAS: of two concurrent answers for a token the last wins; both are the service's.
                    let _ = self.set_shared_data(&self.cache_key(), Some(decision.encode(expires).as_bytes()), None);
                }
                self.decide(&decision)
            }
            None if num_headers == 0 => self.service_failed("no response"),
            None => self.service_failed(&format!("status {status}")),
        };
        if go_on {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Authz {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // Only the service says who the user is.
        self.set_http_request_header(&self.config.user_header, None);
        self.token = self.get_http_request_header("authorization").unwrap_or_default();
        let (cached, _) = self.get_shared_data(&self.cache_key());
        if let Some(decision) = cached.and_then(|bytes| Decision::decode(&bytes, self.now())) {
            self.cache = Some("hit");
            return if self.decide(&decision) { Action::Continue } else { Action::Pause };
        }
        self.cache = Some("miss");
        let headers = vec![
            (":method", "GET"),
            (":path", self.config.path.as_str()),
            (":authority", self.config.upstream.as_str()),
            ("authorization", self.token.as_str()),
        ];
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match self.dispatch_http_call(&self.config.upstream, headers, None, vec![], timeout) {
            Ok(_) => Action::Pause,
            Err(status) if self.service_failed(&format!("dispatch: {status:?}")) => Action::Continue,
            Err(_) => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(cache) = self.cache {
            self.set_http_response_header("x-authz-cache", Some(cache));
        }
        Action::Continue
    }
}
