//! examples/json-schema: its nginx.conf as is, with valid, invalid and oversized orders.
mod support;

use support::*;

const JSON: (&str, &str) = ("content-type", "application/json");

fn post(example: &Example, body: &[u8]) -> Response {
    example.request(8080, "POST", "/orders", &[JSON], body)
}

/// What the example's upstream answers when a body of `size` bytes reached it.
fn reached_upstream(size: usize) -> String {
    format!("upstream got POST /orders: {size} bytes of application/json\n")
}

fn assert_400(response: &Response, expected: &str) {
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert!(response.text().contains(expected), "expected {expected} in {}", response.text());
}

#[test]
fn valid_orders_reach_the_upstream_whole() {
    let example = Example::start("json-schema", 8080);
    let order = br#"{"customer":{"email":"ada@example.com","name":"Ada"},"items":[{"sku":"ABC-1234","qty":2}]}"#;
    let response = post(&example, order);
    assert_eq!((response.status, response.text()), (200, reached_upstream(order.len())));

    // About 700 KB, which nginx reads in many pieces: validated whole, passed on whole.
    let items: Vec<String> =
        (0..20_000).map(|i| format!(r#"{{"sku":"XYZ-{:04}","qty":{}}}"#, i % 10_000, i + 1)).collect();
    let large = format!(r#"{{"customer":{{"email":"bulk@example.com"}},"items":[{}]}}"#, items.join(","));
    let response = post(&example, large.as_bytes());
    assert_eq!((response.status, response.text()), (200, reached_upstream(large.len())));
}

#[test]
fn invalid_orders_get_400_naming_the_failing_path() {
    let example = Example::start("json-schema", 8080);
    let cases: [(&str, &[&str]); 7] = [
        (
            r#"{"items":[{"sku":"ABC-1234","qty":1}]}"#,
            &[r#""path":"/customer""#, r#"\"customer\" is a required property"#],
        ),
        (
            r#"{"customer":{"email":"a@b.co"},"items":[{"sku":"ABC-1234","qty":"2"}]}"#,
            &[r#""path":"/items/0/qty""#, r#"is not of type \"integer\""#],
        ),
        (
            r#"{"customer":{"email":"a@b.co"},"items":[{"sku":"ABC-1234","qty":0}]}"#,
            &[r#""path":"/items/0/qty""#, "0 is less than the minimum of 1"],
        ),
        (r#"{"customer":{"email":"a@b.co"},"items":[{"sku":"abc","qty":1}]}"#, &[r#""path":"/items/0/sku""#]),
        (r#"{"customer":{"email":"nobody"},"items":[{"sku":"ABC-1234","qty":1}]}"#, &[r#""path":"/customer/email""#]),
        (r#"{"customer":{"email":"a@b.co"},"items":[]}"#, &[r#""path":"/items""#]),
        (
            r#"{"customer":{"email":"a@b.co"},"items":[{"sku":"ABC-1234","qty":1}],"coupon":"FREE"}"#,
            &["'coupon' was unexpected"],
        ),
    ];
    for (body, expected) in cases {
        let response = post(&example, body.as_bytes());
        assert_400(&response, r#"{"error":"body does not match the schema","errors":[{"#);
        for text in expected {
            assert!(response.text().contains(text), "{body}: expected {text} in {}", response.text());
        }
    }
    // Every violation is reported, not only the first.
    let response = post(&example, br#"{"customer":{},"items":[{"qty":-1}]}"#);
    for path in ["/customer/email", "/items/0/sku", "/items/0/qty"] {
        assert!(response.text().contains(&format!(r#""path":"{path}""#)), "{path}: {}", response.text());
    }
    assert_eq!(example.nginx.wait_log("400 for /orders: ", 8), 8, "{}", example.nginx.error_log());
}

#[test]
fn missing_empty_and_non_json_bodies_get_400() {
    let example = Example::start("json-schema", 8080);
    assert_400(&post(&example, b"customer=ada"), r#"{"error":"body is not JSON: expected value at line 1 column 1"}"#);
    assert_400(&post(&example, br#"{"customer": "#), r#""error":"body is not JSON: EOF while parsing"#);
    assert_400(&post(&example, b"   \n"), r#"{"error":"empty body: a JSON document is required"}"#);
    assert_400(&post(&example, b""), r#"{"error":"empty body: a JSON document is required"}"#);
    let get = example.request(8080, "GET", "/orders", &[], b"");
    assert_400(&get, r#"{"error":"empty body: a JSON document is required"}"#);
}

#[test]
fn bodies_over_max_body_bytes_get_413() {
    let example = Example::start("json-schema", 8080);
    let response = post(&example, &vec![b' '; 2 << 20]);
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.text(), "{\"error\":\"body is larger than 1048576 bytes\"}\n");
}

#[test]
fn a_bad_configuration_fails_nginx_t_with_the_reason() {
    let module = root().join("build/filters/example_json_schema.wasm");
    let main = format!("wasm {{ module json_schema {}; }}", module.display());
    let cases = [
        (r#"{"schema": {"type": 12}}"#, "bad configuration: invalid schema"),
        (r#"{"schema": {"type": "object"}, "max_body_bytes": 0}"#, "max_body_bytes must be a positive integer"),
        (r#"{"schema": {}, "maxBody": 1}"#, "unknown field \"maxBody\""),
        (r#"{"type": "object"}"#, "no \"schema\""),
        ("type: object", "bad configuration: not JSON"),
    ];
    for (config, reason) in cases {
        let http = format!(
            "server {{ listen 127.0.0.1:{}; location / {{ proxy_wasm json_schema '{config}'; }} }}",
            free_port()
        );
        let (ok, output) = nginx_test(&main, &http);
        assert!(!ok, "{config}: {output}");
        assert!(output.contains(reason), "{config}: expected {reason:?} in {output}");
    }
}
