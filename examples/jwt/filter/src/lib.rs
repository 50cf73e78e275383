//! Request authentication by the plugin configuration (JSON): JWT bearer tokens (HS256 with a
//! shared secret, RS256 with an RSA public key; `exp`/`nbf` checked against the host clock,
//! `iss` and `aud` when configured) and HMAC-SHA256 request signatures (over the method, the
//! path, chosen headers and the body's digest, with a timestamp header against replays).
//!
//! ```json
//! { "jwt": { "hs256_secret": "...", "rs256_public_key": "-----BEGIN PUBLIC KEY----- ...",
//!            "issuer": "https://auth.example", "audience": "inwasm-demo",
//!            "leeway_seconds": 30, "claim_headers": { "sub": "x-jwt-sub" } },
//!   "signature": { "secret": "...", "header": "x-signature",
//!                  "signed": ["method", "path", "header:x-timestamp", "body-sha256"],
//!                  "timestamp_header": "x-timestamp", "max_skew_seconds": 300 } }
//! ```
//!
//! A request failing either check gets 401 with `WWW-Authenticate` and the reason. A verified
//! token's claims go upstream in the `claim_headers` (which a client cannot set itself: they
//! are removed from every request first).
mod signature;
mod token;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use serde_json::Value;

use signature::Part;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: None }));
}}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    jwt: Option<RawJwt>,
    signature: Option<RawSignature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    hs256_secret: Option<String>,
    rs256_public_key: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    #[serde(default)]
    leeway_seconds: u64,
    #[serde(default = "default_claim_headers")]
    claim_headers: BTreeMap<String, String>,
}

fn default_claim_headers() -> BTreeMap<String, String> {
    BTreeMap::from([("sub".into(), "x-jwt-sub".into())])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    secret: String,
    #[serde(default = "default_signature_header")]
    header: String,
    signed: Vec<String>,
    timestamp_header: Option<String>,
    #[serde(default = "default_max_skew")]
    max_skew_seconds: u64,
}

fn default_signature_header() -> String {
    "x-signature".into()
}

fn default_max_skew() -> u64 {
    300
}

struct Jwt {
    keys: token::Keys,
    rules: token::Rules,
    claim_headers: BTreeMap<String, String>,
}

struct Signed {
    secret: Vec<u8>,
    header: String,
    parts: Vec<Part>,
    timestamp_header: Option<String>,
    max_skew_seconds: u64,
}

struct Config {
    jwt: Option<Jwt>,
    signature: Option<Signed>,
}

fn parse_config(text: &[u8]) -> Result<Config, String> {
    let raw: RawConfig = serde_json::from_slice(text).map_err(|e| format!("not the expected JSON: {e}"))?;
    let jwt = raw.jwt.map(parse_jwt).transpose()?;
    let signature = raw.signature.map(parse_signature).transpose()?;
    if jwt.is_none() && signature.is_none() {
        return Err("nothing to check: configure \"jwt\", \"signature\" or both".into());
    }
    Ok(Config { jwt, signature })
}

fn parse_jwt(raw: RawJwt) -> Result<Jwt, String> {
    let hs256 = raw.hs256_secret.map(String::into_bytes);
    if hs256.as_ref().is_some_and(|s| s.len() < 16) {
        return Err("hs256_secret is too short (16 bytes at least)".into());
    }
    let rs256 = raw.rs256_public_key.as_deref().map(token::rsa_public_key).transpose()?;
    if hs256.is_none() && rs256.is_none() {
        return Err("jwt needs hs256_secret, rs256_public_key or both".into());
    }
    let rules = token::Rules { issuer: raw.issuer, audience: raw.audience, leeway_seconds: raw.leeway_seconds };
    Ok(Jwt { keys: token::Keys { hs256, rs256 }, rules, claim_headers: raw.claim_headers })
}

fn parse_signature(raw: RawSignature) -> Result<Signed, String> {
    if raw.secret.len() < 16 {
        return Err("signature secret is too short (16 bytes at least)".into());
    }
    let parts = raw.signed.iter().map(|p| Part::parse(p)).collect::<Result<Vec<_>, _>>()?;
    if parts.is_empty() {
        return Err("signature.signed is empty: nothing would be signed".into());
    }
    let timestamp_header = raw.timestamp_header.map(|h| h.to_ascii_lowercase());
    if let Some(name) = &timestamp_header {
        if !parts.contains(&Part::Header(name.clone())) {
            return Err(format!("timestamp_header {name} must be signed: add \"header:{name}\" to signed"));
        }
    }
    Ok(Signed {
        secret: raw.secret.into_bytes(),
        header: raw.header,
        parts,
        timestamp_header,
        max_skew_seconds: raw.max_skew_seconds,
    })
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let text = self.get_plugin_configuration().unwrap_or_default();
        match parse_config(&text) {
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
        let config = self.config.clone()?;
        Some(Box::new(Check { config, signed_parts: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Check {
    config: Rc<Config>,
    /// The signed parts read from the headers (`None` in the body digest's place), kept
    /// while the body is on its way.
    signed_parts: Option<Vec<Option<String>>>,
}

/// Why a request is refused, with the `WWW-Authenticate` scheme that asks for what it lacks
/// and the error code that goes with it.
struct Refusal {
    scheme: &'static str,
    error: &'static str,
    reason: String,
}

impl Check {
    fn now(&self) -> u64 {
        self.get_current_time().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    fn check_token(&self, jwt: &Jwt) -> Result<(), Refusal> {
        let refuse = |reason: String| Refusal { scheme: "Bearer", error: "invalid_token", reason };
        let header = self.get_http_request_header("authorization").unwrap_or_default();
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(refuse("missing bearer token".into())),
        };
        let claims = token::verify(token, &jwt.keys, &jwt.rules, self.now()).map_err(refuse)?;
        for (claim, header) in &jwt.claim_headers {
            let value = match claims.get(claim) {
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => continue,
            };
            self.set_http_request_header(header, Some(&value));
        }
        Ok(())
    }

    /// Reads the signed parts from the headers and checks the timestamp.
    fn signed_parts(&self, signed: &Signed) -> Result<Vec<Option<String>>, Refusal> {
        let refuse = |reason: String| Refusal { scheme: "HMAC-SHA256", error: "invalid_signature", reason };
        if let Some(name) = &signed.timestamp_header {
            let stamp = self.get_http_request_header(name).ok_or_else(|| refuse(format!("missing {name}")))?;
            let stamp: u64 = stamp.trim().parse().map_err(|_| refuse(format!("{name} is not Unix seconds")))?;
            if self.now().abs_diff(stamp) > signed.max_skew_seconds {
                return Err(refuse(format!("{name} is too far from now")));
            }
        }
        let pseudo = |name: &str| self.get_http_request_header(name).unwrap_or_default();
        signed
            .parts
            .iter()
            .map(|part| match part {
                Part::Method => Ok(Some(pseudo(":method"))),
                Part::Path => Ok(Some(pseudo(":path"))),
                Part::BodySha256 => Ok(None),
                Part::Header(name) => {
                    self.get_http_request_header(name).map(Some).ok_or_else(|| refuse(format!("missing {name}")))
                }
            })
            .collect()
    }

    fn check_signature(&self, signed: &Signed, parts: &[Option<String>], body: &[u8]) -> Result<(), Refusal> {
        let refuse =
            |reason: &str| Refusal { scheme: "HMAC-SHA256", error: "invalid_signature", reason: reason.into() };
        let signature = self.get_http_request_header(&signed.header).ok_or_else(|| refuse("missing signature"))?;
        signature::verify(&signed.secret, parts, body, &signature).map_err(refuse)
    }

    fn refuse(&self, refusal: Refusal) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let Refusal { scheme, error, reason } = refusal;
        let challenge = format!("{scheme} error=\"{error}\", error_description=\"{reason}\"");
        log::info!("401 for {path}: {reason}");
        let body = format!("unauthorized: {reason}\n");
        self.send_http_response(
            401,
            vec![("www-authenticate", &challenge), ("content-type", "text/plain")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}

impl Context for Check {}

impl HttpContext for Check {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.config);
        if let Some(jwt) = &config.jwt {
            for header in jwt.claim_headers.values() {
                self.set_http_request_header(header, None);
            }
            if let Err(refusal) = self.check_token(jwt) {
                return self.refuse(refusal);
            }
        }
        let Some(signed) = &config.signature else { return Action::Continue };
        let parts = match self.signed_parts(signed) {
            Ok(parts) => parts,
            Err(refusal) => return self.refuse(refusal),
        };
        if end_of_stream || !signed.parts.contains(&Part::BodySha256) {
            return match self.check_signature(signed, &parts, b"") {
                Ok(()) => Action::Continue,
                Err(refusal) => self.refuse(refusal),
            };
        }
        // The digest needs the whole body: checked when it has arrived.
        self.signed_parts = Some(parts);
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let Some(parts) = &self.signed_parts else { return Action::Continue };
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let signed = self.config.signature.as_ref().expect("signed parts come from a signature config");
        match self.check_signature(signed, parts, &body) {
            Ok(()) => Action::Continue,
            Err(refusal) => self.refuse(refusal),
        }
    }
}
