//! The Envoy module through a real Envoy 1.40, with filters built from the SDK.

use inwasm_testkit::*;

fn filter(name: &str) -> String {
    root().join(format!("build/filters/filter_{name}.wasm")).display().to_string()
}

/// Envoy with one inwasm filter (`settings` beyond the module, as JSON members) in front of
/// an echo upstream.
fn envoy(name: &str, settings: &str, upstream: &EchoUpstream) -> Envoy {
    let settings =
        format!(r#"{{"module": "{}"{}{settings}}}"#, filter(name), if settings.is_empty() { "" } else { ", " });
    Envoy::start(&EnvoySetup {
        filters: vec![inwasm_filter(&settings)],
        upstream: Some(upstream.port),
        ..Default::default()
    })
}

#[test]
fn request_and_response_headers_are_rewritten() {
    let upstream = EchoUpstream::start();
    let envoy = envoy("headers", r#""configuration": "from-config""#, &upstream);
    let response = envoy.request("GET", "/path?x=1", &[("X-Remove-Me", "yes"), ("X-Keep", "kept")], b"");
    assert_eq!(response.status, 200, "{}", envoy.log());
    let seen = response.text();
    assert!(seen.contains("x-inwasm-config: from-config\n"), "{seen}");
    assert!(seen.contains("x-inwasm-added: 1\n") && seen.contains("x-keep: kept\n"), "{seen}");
    assert!(!seen.contains("x-remove-me"), "{seen}");
    assert_eq!(response.header("x-inwasm"), Some("hello"));
    assert_eq!(response.header("x-request-path"), Some("/path?x=1"));
}
