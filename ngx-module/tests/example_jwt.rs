//! examples/jwt: its nginx.conf as is, with the committed test tokens and live-signed requests.
mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use support::*;

const WEBHOOK_SECRET: &[u8] = b"inwasm-demo-webhook-secret";

fn fixture(name: &str) -> String {
    let path = root().join("examples/jwt/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {}", fixture(&format!("{token}.jwt")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The signature the example's /webhook expects: METHOD\nPATH\nTIMESTAMP\nhex(SHA-256(body)).
fn sign(method: &str, path: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET).unwrap();
    mac.update(format!("{method}\n{path}\n{timestamp}\n{}", hex(&Sha256::digest(body))).as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn assert_refused(response: &Response, scheme: &str, reason: &str) {
    assert_eq!(response.status, 401, "{}", response.text());
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with(&format!("{scheme} error=")), "{challenge}");
    assert!(challenge.contains(&format!("error_description=\"{reason}\"")), "{challenge}");
    assert_eq!(response.text(), format!("unauthorized: {reason}\n"));
}

#[test]
fn valid_rs256_and_hs256_tokens_reach_the_upstream_with_their_claims() {
    let example = Example::start("jwt", 8080);
    for (token, sub) in [("rs256", "alice"), ("hs256", "bob")] {
        // A client's own x-jwt-sub never reaches the upstream: the verified claim replaces it.
        let auth = bearer(token);
        let headers = [("authorization", auth.as_str()), ("x-jwt-sub", "root")];
        let response = example.request(8080, "GET", "/api/orders?page=2", &headers, b"");
        assert_eq!(response.status, 200, "{token}: {}", response.text());
        assert_eq!(
            response.text(),
            format!("upstream: GET /api/orders?page=2 x-jwt-sub=[{sub}] x-jwt-iss=[https://auth.example]\n")
        );
    }
}

#[test]
fn bad_or_missing_tokens_get_401_with_the_reason() {
    let example = Example::start("jwt", 8080);
    let cases = [
        (Some(bearer("expired")), "token expired"),
        (Some(bearer("not-yet-valid")), "token not yet valid"),
        (Some(bearer("wrong-audience")), "wrong audience"),
        (Some(bearer("alg-none")), "unsupported alg"),
        (Some(bearer("tampered")), "bad signature"),
        (Some("Bearer not.a.token".to_string()), "malformed token"),
        (Some(format!("Basic {}", fixture("rs256.jwt"))), "missing bearer token"),
        (None, "missing bearer token"),
    ];
    for (authorization, reason) in &cases {
        let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("authorization", a.as_str())).collect();
        let response = example.request(8080, "GET", "/api/orders", &headers, b"");
        assert_refused(&response, "Bearer", reason);
    }
    let log = "401 for /api/orders: token expired";
    assert_eq!(example.nginx.wait_log(log, 1), 1, "{}", example.nginx.error_log());
}

#[test]
fn signed_requests_pass_and_tampered_or_stale_ones_get_401() {
    let example = Example::start("jwt", 8080);
    let body = br#"{"event":"ping"}"#;
    let post = |timestamp: u64, signature: &str, body: &[u8]| {
        let timestamp = timestamp.to_string();
        let headers = [("x-timestamp", timestamp.as_str()), ("x-signature", signature)];
        example.request(8080, "POST", "/webhook", &headers, body)
    };
    let stamp = now();
    let response = post(stamp, &sign("POST", "/webhook", stamp, body), body);
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.text().starts_with("upstream: POST /webhook "), "{}", response.text());

    // A body nginx reads in many pieces is checked whole.
    let large = vec![b'x'; 512 * 1024];
    let response = post(stamp, &sign("POST", "/webhook", stamp, &large), &large);
    assert_eq!(response.status, 200, "{}", response.text());

    let signature = sign("POST", "/webhook", stamp, body);
    assert_refused(&post(stamp, &signature, br#"{"event":"pong"}"#), "HMAC-SHA256", "bad signature");
    assert_refused(&post(stamp + 1, &signature, body), "HMAC-SHA256", "bad signature");
    assert_refused(&post(stamp, "not hex", body), "HMAC-SHA256", "signature is not hex");
    let stale = stamp - 3600;
    assert_refused(
        &post(stale, &sign("POST", "/webhook", stale, body), body),
        "HMAC-SHA256",
        "x-timestamp is too far from now",
    );
    let unsigned = example.request(8080, "POST", "/webhook", &[("x-timestamp", &stamp.to_string())], body);
    assert_refused(&unsigned, "HMAC-SHA256", "missing signature");
    let undated = example.request(8080, "POST", "/webhook", &[("x-signature", &signature)], body);
    assert_refused(&undated, "HMAC-SHA256", "missing x-timestamp");
}

#[test]
fn a_bad_configuration_fails_nginx_t_with_the_reason() {
    let module = root().join("build/filters/example_jwt.wasm");
    let main = format!("wasm {{ module jwt {}; }}", module.display());
    let cases = [
        ("not json", "bad configuration: not the expected JSON"),
        (r#"{"jwt": {"issuer": "x"}}"#, "jwt needs hs256_secret, rs256_public_key or both"),
        (r#"{"jwt": {"hs256_secret": "short"}}"#, "hs256_secret is too short"),
        (r#"{"jwt": {"rs256_public_key": "MIIB"}}"#, "rs256_public_key is not PEM"),
        (r#"{"jwt": {"hs256_secret": "0123456789abcdef", "audiences": "x"}}"#, "unknown field `audiences`"),
        (
            r#"{"signature": {"secret": "0123456789abcdef", "signed": ["method"], "timestamp_header": "x-ts"}}"#,
            "timestamp_header x-ts must be signed",
        ),
        (r#"{"signature": {"secret": "0123456789abcdef", "signed": ["query"]}}"#, "signed part \"query\""),
        ("{}", "nothing to check"),
    ];
    for (config, reason) in cases {
        let http =
            format!("server {{ listen 127.0.0.1:{}; location / {{ proxy_wasm jwt '{config}'; }} }}", free_port());
        let (ok, output) = nginx_test(&main, &http);
        assert!(!ok, "{config}: {output}");
        assert!(output.contains(reason), "{config}: expected {reason:?} in {output}");
    }
}
