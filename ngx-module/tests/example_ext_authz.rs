//! examples/ext-authz: the filter asks the auth service of the same nginx.conf (run as is)
//! and caches its decisions; the service's access log (nginx's stderr) counts the calls.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn get(example: &Example, path: &str, headers: &[(&str, &str)]) -> Response {
    example.request(8080, "GET", path, headers, b"")
}

/// The calls the auth service has logged, once `at_least` of them are in.
fn auth_calls(example: &Example, at_least: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let calls: Vec<String> =
            example.nginx.stderr().lines().filter(|l| l.starts_with("auth service: ")).map(String::from).collect();
        if calls.len() >= at_least || Instant::now() > deadline {
            return calls;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const ALICE: (&str, &str) = ("authorization", "Bearer alice-token");

#[test]
fn ext_authz_lets_known_tokens_through_as_their_user_and_caches_the_decision() {
    let example = Example::start("ext-authz", 8080);
    let first = get(&example, "/", &[ALICE, ("x-user", "admin")]);
    assert_eq!(first.status, 200, "{}", example.nginx.error_log());
    assert_eq!(first.text(), "upstream saw x-user=[alice] failure-mode-allowed=[]\n", "the client's x-user is dropped");
    assert_eq!(first.header("x-authz-cache"), Some("miss"));
    assert_eq!(auth_calls(&example, 1), ["auth service: 200 for user \"alice\""]);
    for _ in 0..3 {
        let again = get(&example, "/again", &[ALICE]);
        assert_eq!((again.status, again.header("x-authz-cache")), (200, Some("hit")));
        assert_eq!(again.text(), "upstream saw x-user=[alice] failure-mode-allowed=[]\n");
    }
    let bob = get(&example, "/", &[("authorization", "Bearer bob-token")]);
    assert_eq!(
        (bob.header("x-authz-cache"), bob.text().as_str()),
        (Some("miss"), "upstream saw x-user=[bob] failure-mode-allowed=[]\n")
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(auth_calls(&example, 2).len(), 2, "cache hits never called the service");
}

#[test]
fn ext_authz_cached_decisions_expire_after_their_ttl() {
    let example = Example::start("ext-authz", 8080);
    assert_eq!(get(&example, "/", &[ALICE]).header("x-authz-cache"), Some("miss"));
    assert_eq!(get(&example, "/", &[ALICE]).header("x-authz-cache"), Some("hit"));
    std::thread::sleep(Duration::from_millis(3100)); // cache_ttl_s 3
    let expired = get(&example, "/", &[ALICE]);
    assert_eq!((expired.status, expired.header("x-authz-cache")), (200, Some("miss")));
    assert_eq!(auth_calls(&example, 2).len(), 2);
}

#[test]
fn ext_authz_passes_401_through_and_answers_403_for_a_banned_token() {
    let example = Example::start("ext-authz", 8080);
    for cache in ["miss", "hit"] {
        let anonymous = get(&example, "/", &[("x-user", "admin")]);
        assert_eq!(anonymous.status, 401, "{}", example.nginx.error_log());
        assert_eq!(anonymous.header("www-authenticate"), Some("Bearer realm=\"example\""));
        assert_eq!(anonymous.header("x-authz-cache"), Some(cache));
        assert_eq!(anonymous.text(), "unknown or missing token\n", "the service's body");
    }
    for cache in ["miss", "hit"] {
        let banned = get(&example, "/", &[("authorization", "Bearer mallory-token")]);
        assert_eq!((banned.status, banned.text().as_str()), (403, "forbidden\n"));
        assert_eq!(banned.header("x-authz-cache"), Some(cache));
    }
    let calls = auth_calls(&example, 2);
    assert_eq!(calls, ["auth service: 401 for user \"\"", "auth service: 403 for user \"-banned-\""]);
}

#[test]
fn ext_authz_fails_closed_with_503_or_open_when_configured() {
    let example = Example::start("ext-authz", 8080);
    for _ in 0..2 {
        let closed = get(&example, "/orders/1", &[ALICE]);
        assert_eq!((closed.status, closed.text().as_str()), (503, "authorization service unavailable\n"));
        assert_eq!(closed.header("x-authz-cache"), Some("miss"), "failures are not cached");
    }
    let open = get(&example, "/catalog/1", &[ALICE, ("x-user", "admin")]);
    assert_eq!(open.status, 200, "{}", example.nginx.error_log());
    assert_eq!(open.text(), "upstream saw x-user=[] failure-mode-allowed=[true]\n");
    let log = example.nginx.error_log();
    assert_eq!(log.matches("authorization service auth_down failed: no response").count(), 3, "{log}");
    // The service that is up is unaffected, and was never asked about these.
    assert_eq!(get(&example, "/", &[ALICE]).status, 200);
    assert_eq!(auth_calls(&example, 1).len(), 1);
}

#[test]
fn ext_authz_refuses_a_bad_configuration() {
    let module = root().join("build/filters/example_ext_authz.wasm");
    for (config, reason) in [
        (r#"{"cache_ttl_s": 3}"#, "missing field `upstream`"),
        (r#"{"upstream": "", "cache_ttl_s": 3}"#, "upstream must name an upstream block or host:port"),
        (r#"{"upstream": "auth", "cache_ttl_s": 3, "timeout_ms": 0}"#, "timeout_ms must be 1 to 60000, not 0"),
        (r#"{"upstream": "auth", "cache_ttl_s": 3, "path": "check"}"#, "path must start with '/'"),
        (r#"{"upstream": "auth", "ttl": 3}"#, "unknown field `ttl`"),
    ] {
        let (ok, output) = nginx_test(
            &format!("wasm {{ module authz {}; }}", module.display()),
            &format!("server {{ location / {{ proxy_wasm authz '{config}'; }} }}"),
        );
        assert!(!ok, "accepted {config}");
        assert!(output.contains(&format!("bad configuration: {reason}")), "{config}: expected {reason:?} in {output}");
    }
}
