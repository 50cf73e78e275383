//! examples/xml-to-json: its nginx.conf as is, with the XML upstream in the same nginx.
mod support;

use support::*;

fn catalog_file() -> String {
    std::fs::read_to_string(root().join("examples/xml-to-json/upstream/catalog.xml")).unwrap()
}

fn assert_json(response: &Response, body: &str) {
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.text(), format!("{body}\n"));
}

#[test]
fn xml_responses_become_json() {
    let example = Example::start("xml-to-json", 8080);
    let get = |path: &str| example.request(8080, "GET", path, &[], b"");
    assert_json(&get("/greeting"), r##"{"greeting":{"#text":"Hello","@lang":"en","@to":"world"}}"##);
    // application/atom+xml is XML too; repeated elements become an array.
    assert_json(&get("/feed"), r#"{"feed":{"entry":[{"title":"One"},{"title":"Two"}],"title":"News"}}"#);

    // A 9 KB file, through the body callbacks in pieces, with and without a length up front.
    let catalog = get("/catalog.xml");
    assert_eq!(catalog.status, 200);
    assert_eq!(catalog.header("content-type"), Some("application/json"));
    assert_eq!(catalog.header("etag"), None);
    let text = catalog.text();
    let first = r##"{"catalog":{"@updated":"2026-01-15","book":[{"@available":"no","@id":"bk001","dc:creator":"Frank Herbert","dc:title":"Dune","price":{"#text":"9.50","@currency":"EUR"},"tag":"science fiction"},"##;
    assert!(text.starts_with(first), "{text}");
    let last = r##"{"@available":"no","@id":"bk040","dc:creator":"Peter Watts","dc:title":"Blindsight (edition 4)","price":{"#text":"38.75","@currency":"EUR"},"tag":["science fiction","classic"]}]}}"##;
    assert!(text.ends_with(&format!("{last}\n")), "{text}");
    assert_eq!(text.matches(r#""@id":"bk"#).count(), 40);
    assert_json(&get("/chunked/catalog.xml"), text.trim_end());
}

#[test]
fn other_responses_pass_through_untouched() {
    let example = Example::start("xml-to-json", 8080);
    let text = example.request(8080, "GET", "/text", &[], b"");
    assert_eq!(text.status, 200);
    assert_eq!(text.header("content-type"), Some("text/plain"));
    assert_eq!(text.text(), "<not>converted: this is text/plain</not>");
    let missing = example.request(8080, "GET", "/missing.xml", &[], b"");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("text/html"));
    assert!(missing.text().contains("<title>404 Not Found</title>"), "{}", missing.text());
}

#[test]
fn malformed_or_oversized_xml_is_reported() {
    let example = Example::start("xml-to-json", 8080);
    // The status is the upstream's: nginx has sent the headers before the body is seen.
    let broken = example.request(8080, "GET", "/broken", &[], b"");
    assert_json(&broken, r#"{"error":"upstream sent malformed XML: expected 'order' tag, not 'ordr' at 1:18"}"#);
    let log = "upstream sent malformed XML: expected 'order' tag, not 'ordr' at 1:18";
    assert_eq!(example.nginx.wait_log(log, 1), 1, "{}", example.nginx.error_log());

    // Over /small/'s 4 KB limit: as it is when the length says so up front...
    let known = example.request(8080, "GET", "/small/catalog.xml", &[], b"");
    assert_eq!(known.status, 200);
    assert_eq!(known.header("content-type"), Some("application/xml"));
    assert_eq!(known.text(), catalog_file());
    // ...and an error once it has grown past it otherwise.
    let chunked = example.request(8080, "GET", "/small/chunked/catalog.xml", &[], b"");
    assert_json(&chunked, r#"{"error":"upstream XML is over 4096 bytes"}"#);
}

#[test]
fn a_bad_configuration_fails_nginx_t_with_the_reason() {
    let module = root().join("build/filters/example_xml_to_json.wasm");
    let main = format!("wasm {{ module xml_to_json {}; }}", module.display());
    let cases = [
        (r#"{"max_body_bytes": -1}"#, "bad configuration: max_body_bytes must be a positive integer"),
        (r#"{"max_bytes": 10}"#, "unknown field \"max_bytes\""),
        ("4096", "bad configuration: expected an object"),
        ("{", "bad configuration: not JSON"),
    ];
    for (config, reason) in cases {
        let http = format!(
            "server {{ listen 127.0.0.1:{}; location / {{ proxy_wasm xml_to_json '{config}'; }} }}",
            free_port()
        );
        let (ok, output) = nginx_test(&main, &http);
        assert!(!ok, "{config}: {output}");
        assert!(output.contains(reason), "{config}: expected {reason:?} in {output}");
    }
}
