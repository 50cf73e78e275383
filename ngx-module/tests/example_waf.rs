//! examples/waf: its nginx.conf as is, with attacks in each place a rule looks and clean
//! requests that must pass.
mod support;

use support::*;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn assert_blocked(response: &Response, rule: &str) {
    assert_eq!(response.status, 403, "expected {rule}: {}", response.text());
    assert_eq!(response.header("x-waf-rule"), Some(rule));
    assert_eq!(response.text(), format!("blocked by rule {rule}\n"));
}

fn assert_passed(response: &Response, method: &str, uri: &str) {
    assert_eq!(response.status, 200, "{method} {uri}: {}", response.text());
    assert_eq!(response.text(), format!("upstream: {method} {uri}\n"));
}

#[test]
fn rules_block_the_path_query_and_headers_they_name() {
    let example = Example::start("waf", 8080);
    let get = |uri: &str, headers: &[(&str, &str)]| example.request(8080, "GET", uri, headers, b"");
    assert_blocked(&get("/search?q=1%20UNION%20ALL%20SELECT%20password", &[]), "sqli-union");
    assert_blocked(&get("/search?q=x%27+or+1=1", &[]), "sqli-tautology");
    assert_blocked(&get("/files/..%2fsecret", &[]), "path-traversal");
    assert_blocked(&get("/download?file=../../etc/passwd", &[]), "path-traversal");
    assert_blocked(&get("/", &[("user-agent", "sqlmap/1.7.2#stable")]), "scanner");
    assert_blocked(&get("/", &[("referer", "http://x/?<script>alert(1)</script>")]), "xss-script");
    assert_blocked(&get("/", &[("x-anything", "() { :; }; /bin/id")]), "shellshock");
    // A rule looks only where it is told to: a script tag in the path is no xss-script match.
    assert_passed(&get("/pages/%3Cscript", &[]), "GET", "/pages/%3Cscript");
    let log = "rule sqli-union matched the query of GET /search?q=1%20UNION%20ALL%20SELECT%20password: 403";
    assert_eq!(example.nginx.wait_log(log, 1), 1, "{}", example.nginx.error_log());
}

#[test]
fn matching_is_case_insensitive_unless_the_rule_says_otherwise() {
    let example = Example::start("waf", 8080);
    for query in ["union%20select", "UNION%20SELECT", "UnIoN%09sElEcT"] {
        assert_blocked(&example.request(8080, "GET", &format!("/?q={query}"), &[], b""), "sqli-union");
    }
    for user_agent in ["Nikto/2.5", "NMAP scripting engine"] {
        assert_blocked(&example.request(8080, "GET", "/", &[("user-agent", user_agent)], b""), "scanner");
    }
    let post = |body: &[u8]| example.request(8080, "POST", "/comments", &[FORM], body);
    assert_blocked(&post(b"text=%3CScRiPt%3Ealert(1)"), "xss-script");
    // aws-key-leak is case-sensitive: AKIA... keys are upper case, other words are not keys.
    assert_blocked(&post(b"key=AKIAIOSFODNN7EXAMPLE"), "aws-key-leak");
    assert_passed(&post(b"key=akiaiosfodnn7example"), "POST", "/comments");
}

#[test]
fn bodies_are_inspected_whole_and_clean_ones_pass() {
    let example = Example::start("waf", 8080);
    let post = |headers: &[(&str, &str)], body: &[u8]| example.request(8080, "POST", "/comments", headers, body);
    assert_blocked(&post(&[FORM], b"name=eve&comment=1+union+select+card+from+users"), "sqli-union");
    assert_blocked(&post(&[("content-type", "application/json")], br#"{"q": "' or 1 = 1"}"#), "sqli-tautology");
    // The attack sits at the end of a body nginx reads in several pieces.
    let mut long = vec![b'a'; 60_000];
    long.extend_from_slice(b"<script>steal()</script>");
    assert_blocked(&post(&[], &long), "xss-script");
    let error_log = example.nginx.error_log();
    assert!(error_log.contains("rule xss-script matched the body of POST /comments: 403"), "{error_log}");

    let clean = b"name=ada&comment=Selecting+a+union+of+two+sets+is+fine";
    assert_passed(&post(&[FORM], clean), "POST", "/comments");
    assert_passed(&post(&[], &vec![b'a'; 60_000]), "POST", "/comments");
    let get = example.request(8080, "GET", "/search?q=books&page=2", &[("user-agent", "curl/8.0")], b"");
    assert_passed(&get, "GET", "/search?q=books&page=2");

    let response = post(&[], &vec![b'a'; 70_000]);
    assert_eq!((response.status, response.text()), (413, "body too large to inspect\n".to_string()));
}

#[test]
fn a_bad_configuration_fails_nginx_t_with_the_reason() {
    let module = root().join("build/filters/example_waf.wasm");
    let main = format!("wasm {{ module waf {}; }}", module.display());
    let rule = |fields: &str| format!(r#"{{"rules": [{{"id": "r1", {fields}}}]}}"#);
    let cases = [
        (rule(r#""in": ["query"], "regex": "(unclosed""#), "bad configuration: rule r1: regex parse error"),
        (rule(r#""in": ["cookie"], "contains": "x""#), "rule r1: target \"cookie\" is not path"),
        (rule(r#""in": ["query"]"#), "rule r1: give either a non-empty \"contains\" or a \"regex\""),
        (rule(r#""in": [], "contains": "x""#), "rule r1: \"in\" names no target"),
        (rule(r#""in": ["body"], "contains": "x", "action": "log""#), "unknown field `action`"),
        (
            r#"{"rules": [{"id": "a", "in": ["path"], "contains": "x"}, {"id": "a", "in": ["path"], "contains": "y"}]}"#
                .to_string(),
            "rule id a is used twice",
        ),
    ];
    for (config, reason) in cases {
        let http =
            format!("server {{ listen 127.0.0.1:{}; location / {{ proxy_wasm waf '{config}'; }} }}", free_port());
        let (ok, output) = nginx_test(&main, &http);
        assert!(!ok, "{config}: {output}");
        assert!(output.contains(reason), "{config}: expected {reason:?} in {output}");
    }
}
