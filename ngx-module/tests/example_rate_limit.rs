//! examples/rate-limit: token buckets in shared data, through its nginx.conf as is (two
//! workers; `/`: 2 a second, bursts of 5, keyed by `x-api-key`; `/login`: 1 a minute, bursts
//! of 5, and `/search`: 10 a minute, bursts of 200, both keyed by client address).

mod support;

use std::time::Duration;

use support::*;

fn get(example: &Example, path: &str, key: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
    example.request(8080, "GET", path, &headers, b"")
}

/// Spends a fresh bucket of 5 on `path`; asserts the countdown and returns the first 429.
fn exhaust(example: &Example, path: &str, key: Option<&str>) -> Response {
    for remaining in (0..5).rev() {
        let response = get(example, path, key);
        assert_eq!(response.status, 200, "{}", example.nginx.error_log());
        assert_eq!(response.header("x-ratelimit-remaining"), Some(remaining.to_string().as_str()));
    }
    let limited = get(example, path, key);
    assert_eq!(limited.status, 429, "{}", example.nginx.error_log());
    limited
}

fn retry_after(response: &Response) -> u64 {
    response.header("retry-after").expect("retry-after").parse().unwrap()
}

#[test]
fn rate_limit_allows_the_burst_then_answers_429_with_retry_after() {
    let example = Example::start("rate-limit", 8080);
    let limited = exhaust(&example, "/", Some("alice"));
    assert_eq!(retry_after(&limited), 1, "one token at 2/s comes within a second");
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.text(), "rate limit exceeded, retry in 1 s\n");
    assert_eq!(get(&example, "/", Some("alice")).status, 429, "no token yet");
    let login = exhaust(&example, "/login", None);
    assert!((59..=60).contains(&retry_after(&login)), "1 a minute: {:?}", login.header("retry-after"));
    let log = example.nginx.error_log();
    assert!(log.contains("filter \"rate_limit\": limit \"api\": alice limited, retry after 1 s"), "{log}");
    assert!(log.contains("limit \"login\": 127.0.0.1 limited, retry after 60 s"), "{log}");
}

#[test]
fn rate_limit_bucket_refills_after_the_retry_after() {
    let example = Example::start("rate-limit", 8080);
    let limited = exhaust(&example, "/", Some("alice"));
    std::thread::sleep(Duration::from_secs(retry_after(&limited)));
    let response = get(&example, "/", Some("alice"));
    assert_eq!(response.status, 200, "{}", example.nginx.error_log());
    let remaining: u64 = response.header("x-ratelimit-remaining").unwrap().parse().unwrap();
    assert!((1..=4).contains(&remaining), "a second at 2/s refilled 2 tokens or a bit more: {remaining}");
}

#[test]
fn rate_limit_keys_are_independent() {
    let example = Example::start("rate-limit", 8080);
    exhaust(&example, "/", Some("alice"));
    let bob = get(&example, "/", Some("bob"));
    assert_eq!((bob.status, bob.header("x-ratelimit-remaining")), (200, Some("4")));
    assert_eq!(bob.text(), "upstream served /\n");
    // Without the header the key is the client address; /login's limit has buckets of its own.
    let anonymous = get(&example, "/", None);
    assert_eq!((anonymous.status, anonymous.header("x-ratelimit-remaining")), (200, Some("4")));
    let login = get(&example, "/login", Some("alice"));
    assert_eq!((login.status, login.header("x-ratelimit-remaining")), (200, Some("4")));
}

#[test]
fn rate_limit_concurrent_requests_on_two_workers_never_exceed_the_burst() {
    let example = Example::start("rate-limit", 8080);
    let workers = example.nginx.started_workers(2);
    // The first request creates the bucket: a write to a missing key cannot be a
    // compare-and-swap (Envoy's semantics), so the race starts on an existing bucket.
    let first = get(&example, "/search", None);
    assert_eq!(first.header("x-ratelimit-remaining"), Some("199"));
    let port = example.port(8080);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..50)
                    .filter_map(|_| {
                        let response = request(port, "GET", "/search", &[], b"");
                        assert!(matches!(response.status, 200 | 429), "{}", response.status);
                        let remaining = response.header("x-ratelimit-remaining").unwrap().parse::<u32>().unwrap();
                        (response.status == 200).then_some(remaining)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut allowed: Vec<u32> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    allowed.sort();
    // 10 a minute refills less than one token while this runs.
    assert_eq!(allowed, (0..199).collect::<Vec<_>>(), "each of the 199 tokens left was spent exactly once");
    let log = example.nginx.error_log();
    let limiting: std::collections::BTreeSet<u32> = log
        .lines()
        .filter(|l| l.contains("limit \"search\": 127.0.0.1 limited"))
        .filter_map(|l| l.split_whitespace().nth(3)?.split('#').next()?.parse().ok())
        .collect();
    assert_eq!(limiting.into_iter().collect::<Vec<_>>(), workers, "both workers took part: {log}");
}

#[test]
fn rate_limit_refuses_a_bad_configuration() {
    let module = root().join("build/filters/example_rate_limit.wasm");
    for (config, reason) in [
        (r#"{"name": "x", "rate": 0, "burst": 5}"#, "rate must be a positive number, not 0"),
        (r#"{"name": "x", "rate": 1, "burst": 0}"#, "burst must be at least 1"),
        (r#"{"name": "x", "rate": 1, "burst": 5, "per": "day"}"#, "unknown variant `day`"),
        (r#"{"name": "x", "rate": 1, "burst": 5, "header": "x-key"}"#, "unknown field `header`"),
        (r#"{"rate": 1, "burst": 5}"#, "missing field `name`"),
    ] {
        let (ok, output) = nginx_test(
            &format!("wasm {{ module rate_limit {}; }}", module.display()),
            &format!("server {{ location / {{ proxy_wasm rate_limit '{config}'; }} }}"),
        );
        assert!(!ok, "accepted {config}");
        assert!(output.contains(&format!("bad configuration: {reason}")), "{config}: expected {reason:?} in {output}");
    }
}
