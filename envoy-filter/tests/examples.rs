//! The examples' envoy.yaml files, run as the READMEs run them (from the repository root,
//! with the module from `build/`), on free ports.

use std::time::{Duration, Instant};

use inwasm_testkit::*;

#[test]
fn header_rewriting_example_runs_as_documented() {
    let example = EnvoyExample::start("headers", 8080, 9901);
    let response = example.request(8080, "GET", "/", &[("x-internal", "secret")], b"");
    assert_eq!(response.status, 200, "{}", example.envoy.log());
    assert_eq!(response.header("x-powered-by"), Some("inwasm"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.header("x-upstream-saw-hello"), Some("[world]"));
    assert_eq!(response.header("x-upstream-saw-internal"), Some("[]"), "the filter removed it");
}

#[test]
fn jwt_example_lets_valid_tokens_through_with_their_claims() {
    let example = EnvoyExample::start("jwt", 8080, 9901);
    let token = std::fs::read_to_string(root().join("examples/jwt/fixtures/rs256.jwt")).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let allowed = example.request(8080, "GET", "/api/orders", &[("authorization", &bearer)], b"");
    assert_eq!(allowed.status, 200, "{}", example.envoy.log());
    assert!(allowed.header("x-upstream-saw-sub").is_some_and(|s| s != "[]"), "{:?}", allowed.headers);
    let refused = example.request(8080, "GET", "/api/orders", &[("authorization", "Bearer nonsense")], b"");
    assert_eq!(refused.status, 401);
    assert!(refused.header("www-authenticate").is_some());
}

#[test]
fn waf_example_blocks_what_its_rules_name() {
    let example = EnvoyExample::start("waf", 8080, 9901);
    assert_eq!(example.request(8080, "GET", "/products?q=shoes", &[], b"").status, 200);
    let blocked = example.request(8080, "GET", "/products?q=1%20UNION%20SELECT%20password", &[], b"");
    assert_eq!((blocked.status, blocked.header("x-waf-rule")), (403, Some("sqli-union")));
    let body =
        example.request(8080, "POST", "/comments", &[("content-type", "text/plain")], b"<script>alert(1)</script>");
    assert_eq!((body.status, body.header("x-waf-rule")), (403, Some("xss-script")));
}

#[test]
fn rate_limit_example_answers_429_past_the_burst() {
    let example = EnvoyExample::start("rate-limit", 8080, 9901);
    let statuses: Vec<u16> =
        (0..7).map(|_| example.request(8080, "GET", "/", &[("x-api-key", "demo")], b"").status).collect();
    assert_eq!(&statuses[..5], &[200; 5], "the burst passes: {statuses:?}");
    let limited = example.request(8080, "GET", "/", &[("x-api-key", "demo")], b"");
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(example.request(8080, "GET", "/", &[("x-api-key", "other")], b"").status, 200, "keys are apart");
}

#[test]
fn limits_example_cuts_a_loop_at_its_deadline_and_serves_on() {
    let example = EnvoyExample::start("limits", 8080, 9901);
    let started = Instant::now();
    assert_eq!(example.request(8080, "GET", "/loop", &[], b"").status, 503);
    assert!(started.elapsed() < Duration::from_millis(500), "cut at the deadline: {:?}", started.elapsed());
    assert_eq!(example.request(8080, "GET", "/hog", &[], b"").status, 503);
    assert_eq!(example.request(8080, "GET", "/panic", &[], b"").status, 503);
    assert_eq!(example.request(8080, "GET", "/ok", &[], b"").status, 200);
    let stats = request(example.port(9901), "GET", "/stats", &[], b"").text();
    for counter in ["timeouts_total: 1", "memory_failures_total: 1", "traps_total: 1"] {
        assert!(stats.contains(&format!("inwasm.limits.{counter}")), "{counter}: {stats}");
    }
}
