//! Differential conformance: the same SDK-built filters and the same requests through
//! (1) Envoy's own Wasm filter on V8, the reference, (2) Envoy with this project's module and
//! (3) nginx with this project's module. Statuses, response headers, what the upstream
//! received and the filter's log lines are compared; where the hosts must differ, the case
//! says so and why, and the difference itself is asserted.
//!
//! The comparison table is printed (`cargo test --test conformance -- --nocapture`) and
//! written to `target/conformance.md`.

use std::collections::BTreeSet;
use std::time::Duration;

use inwasm_testkit::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    V8,
    EnvoyInwasm,
    NginxInwasm,
}

impl Host {
    fn label(self) -> &'static str {
        match self {
            Host::V8 => "Envoy V8",
            Host::EnvoyInwasm => "Envoy + inwasm",
            Host::NginxInwasm => "nginx + inwasm",
        }
    }
}

/// One request and the expected relation of each inwasm host to the reference.
struct Case {
    name: &'static str,
    /// A filter under build/filters (file stem).
    filter: &'static str,
    config: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
    /// Where an inwasm host must differ from V8: the host and why.
    differs: &'static [(Host, &'static str)],
    /// The reference cannot run this case (why); the inwasm hosts must then agree.
    no_reference: Option<&'static str>,
    /// What every host that runs the case must show (beyond agreeing).
    check: fn(&Observed),
    /// Send one request before the one compared, so every host's worker is running.
    warm_up: bool,
}

/// What a host did with a request, normalized for comparison.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    status: u16,
    headers: BTreeSet<(String, String)>,
    /// The upstream's view (method, path, the request's own `x-` headers, body), or the
    /// local response's body.
    body: String,
    log: Vec<String>,
}

/// Headers that tell the servers apart, not the filter's work.
const SERVER_HEADERS: [&str; 7] = [
    "date",
    "server",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "x-envoy-upstream-service-time",
];
const PROXY_REQUEST_HEADERS: [&str; 4] = ["x-envoy-", "x-forwarded-", "x-request-id", "x-real-ip"];

fn observe(response: Response, log: Vec<String>) -> Observed {
    let headers = response
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| !SERVER_HEADERS.contains(&k.as_str()))
        .collect();
    let text = response.text();
    let body = match text.split_once("\n\n") {
        // The echo upstream: keep the request line, the x- headers the client or the filter
        // set (not the proxy's own), and the body.
        Some((head, body)) if response.header("server") == Some("echo") || head.lines().count() > 1 => {
            let mut lines = head.lines();
            let mut kept: Vec<&str> = lines.next().into_iter().collect();
            kept.extend(
                lines.filter(|l| l.starts_with("x-") && !PROXY_REQUEST_HEADERS.iter().any(|p| l.starts_with(p))),
            );
            format!("{}\n\n{body}", kept.join("\n"))
        }
        _ => text,
    };
    Observed { status: response.status, headers, body, log }
}

/// The filter's own log messages in a host's log, in order.
fn messages(log: &str, host: Host) -> Vec<String> {
    log.lines()
        .filter_map(|line| match host {
            Host::V8 => line.split_once("wasm log ").and_then(|(_, rest)| rest.split_once(": ")).map(|(_, m)| m),
            Host::EnvoyInwasm => {
                line.split_once("[wasm] filter \"").and_then(|(_, rest)| rest.split_once("\": ")).map(|(_, m)| m)
            }
            Host::NginxInwasm => line
                .split_once("[wasm] filter \"")
                .and_then(|(_, rest)| rest.split_once("\": "))
                // nginx appends its context: "<message> while <doing>, client: ...".
                .map(|(_, m)| {
                    let m = m.split(", client: ").next().unwrap_or(m);
                    m.rsplit_once(" while ").map_or(m, |(message, _)| message)
                }),
        })
        .map(str::to_string)
        .collect()
}

fn wasm(filter: &str) -> String {
    root().join(format!("build/filters/{filter}.wasm")).display().to_string()
}

/// Runs `case` on `host`; the log lines are those written while serving the request.
fn run(case: &Case, host: Host) -> Observed {
    let upstream = EchoUpstream::start();
    let auth = AuthService::start();
    let name = case.filter.trim_start_matches("filter_").trim_start_matches("example_");
    let settle = || std::thread::sleep(Duration::from_millis(200));
    // The case's request (after a warm-up one if it asks), and what the host logged meanwhile.
    let exchange = |port: u16, log: &dyn Fn() -> String| {
        if case.warm_up {
            request(port, "GET", "/warm-up", &[], b"");
        }
        settle();
        let before = log().len();
        let response = try_request(port, case.method, case.path, case.headers, case.body)
            .unwrap_or_else(|e| panic!("{}: {}: {e}", case.name, host.label()));
        settle();
        observe(response, messages(&log()[before..], host))
    };
    match host {
        Host::V8 | Host::EnvoyInwasm => {
            let filter = match host {
                Host::V8 => v8_filter(name, &wasm(case.filter), case.config),
                _ => inwasm_filter(&format!(
                    r#"{{"module": "{}", "name": "{name}", "vm_id": "{name}", "configuration": {}}}"#,
                    wasm(case.filter),
                    json_string(case.config)
                )),
            };
            let setup = EnvoySetup {
                filters: vec![filter],
                upstream: Some(upstream.port),
                clusters: vec![("auth".into(), auth.port)],
                workers: 1,
            };
            let envoy = Envoy::start(&setup);
            exchange(envoy.port, &|| envoy.log())
        }
        Host::NginxInwasm => {
            let nginx = Nginx::start_with(
                1,
                &format!("wasm {{ module {name} {}; }}", wasm(case.filter)),
                &format!(
                    "location / {{ proxy_wasm {name} '{}'; proxy_pass http://127.0.0.1:{}; }}",
                    case.config, upstream.port
                ),
                &format!("upstream auth {{ server 127.0.0.1:{}; }}", auth.port),
            );
            // Workers start after nginx accepts connections: the settling lets their start-up
            // log first.
            exchange(nginx.port, &|| nginx.error_log())
        }
    }
}

fn json_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A row of the table: how each inwasm host compared with the reference.
fn compare(case: &Case) -> String {
    let reference = case.no_reference.is_none().then(|| run(case, Host::V8));
    let mut cells = vec![match (&reference, case.no_reference) {
        (Some(observed), _) => format!("{}", observed.status),
        (None, Some(why)) => format!("not run: {why}"),
        (None, None) => unreachable!(),
    }];
    let mut observed_inwasm = Vec::new();
    for host in [Host::EnvoyInwasm, Host::NginxInwasm] {
        let observed = run(case, host);
        (case.check)(&observed);
        let expected_difference = case.differs.iter().find(|(h, _)| *h == host).map(|(_, why)| *why);
        let cell = match (&reference, expected_difference) {
            (Some(reference), None) => {
                assert_eq!(&observed, reference, "{}: {} differs from Envoy V8", case.name, host.label());
                "same".to_string()
            }
            (Some(reference), Some(why)) => {
                assert_ne!(&observed, reference, "{}: {} was expected to differ ({why})", case.name, host.label());
                format!("differs: {why}")
            }
            (None, _) => format!("{}", observed.status),
        };
        cells.push(cell);
        observed_inwasm.push(observed);
    }
    if reference.is_none() {
        assert_eq!(observed_inwasm[0].status, observed_inwasm[1].status, "{}: the inwasm hosts agree", case.name);
    }
    format!("| {} | {} |", case.name, cells.join(" | "))
}

const NO_DIFFERENCE: &[(Host, &str)] = &[];

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "request and response headers rewritten",
            filter: "filter_headers",
            config: "from-config",
            method: "GET",
            path: "/path?x=1",
            headers: &[("X-Remove-Me", "yes"), ("X-Keep", "kept")],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| {
                assert_eq!(o.status, 200);
                assert!(o.body.contains("x-inwasm-config: from-config") && !o.body.contains("x-remove-me"), "{}", o.body);
                assert!(o.headers.contains(&("x-request-path".into(), "/path?x=1".into())), "{:?}", o.headers);
            },
            warm_up: true,
        },
        Case {
            name: "local response from request headers",
            filter: "filter_headers",
            config: "",
            method: "GET",
            path: "/",
            headers: &[("x-deny", "1")],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert_eq!((o.status, o.body.as_str()), (403, "denied\n")),
            warm_up: true,
        },
        Case {
            name: "local response from response headers",
            filter: "filter_headers",
            config: "",
            method: "GET",
            path: "/",
            headers: &[("x-deny-response", "1")],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert_eq!((o.status, o.body.as_str()), (451, "blocked late\n")),
            warm_up: true,
        },
        Case {
            name: "request body buffered and rewritten, response body transformed",
            filter: "filter_body",
            config: "",
            method: "POST",
            path: "/upload",
            headers: &[],
            body: b"hello",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert!(o.body.ends_with("\n\nOLLEH!"), "{}", o.body),
            warm_up: true,
        },
        Case {
            name: "response headers held for an http call",
            filter: "filter_httpcall",
            config: "auth",
            method: "GET",
            path: "/resource",
            headers: &[("authorization", "Bearer good"), ("x-call-at", "response")],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert!(o.headers.contains(&("x-auth-user".into(), "alice".into())), "{:?}", o.headers),
            warm_up: true,
        },
        Case {
            name: "local response in place of a held response",
            filter: "filter_httpcall",
            config: "auth",
            method: "GET",
            path: "/resource",
            headers: &[("authorization", "Bearer bad"), ("x-call-at", "response")],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert_eq!((o.status, o.body.as_str()), (403, "forbidden\n")),
            warm_up: true,
        },
        Case {
            name: "bad request body rejected",
            filter: "filter_body",
            config: "",
            method: "POST",
            path: "/upload",
            headers: &[],
            body: b"a bad one",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert_eq!(o.status, 400),
            warm_up: true,
        },
        Case {
            name: "properties",
            filter: "filter_properties",
            config: "request.path,request.url_path,request.method,request.scheme,request.query,request.protocol,plugin_name,plugin_root_id,response.code",
            method: "GET",
            path: "/props?q=1",
            headers: &[],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert!(o.headers.contains(&("x-prop-request-path".into(), "/props?q=1".into())), "{:?}", o.headers),
            warm_up: true,
        },
        Case {
            name: "callback order and arguments",
            filter: "filter_lifecycle",
            config: "",
            method: "POST",
            path: "/",
            headers: &[],
            body: b"hello",
                        no_reference: None,
            check: |o| assert!(o.log.contains(&"request_headers 3 eos=false".to_string()), "{:?}", o.log),
            differs: &[(
                Host::NginxInwasm,
                "nginx hands a body that arrives whole to on_request_body at once with end_of_stream; Envoy sends the end of stream as a second, empty piece",
            )],
            warm_up: true,
        },
        Case {
            name: "first request on a worker",
            filter: "filter_lifecycle",
            config: "",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
            differs: &[
                (
                    Host::EnvoyInwasm,
                    "Envoy runs no module code on a worker before its first request, so the worker's instance starts (on_vm_start, on_configure) then; Envoy's Wasm filter starts it with the worker",
                ),
                (
                    Host::NginxInwasm,
                    "a filter that starts no work of its own at configuration time (timers, calls, queues, shared data) starts at its worker's first request, so idle filters cost no instance",
                ),
            ],
            no_reference: None,
            check: |o| assert!(o.log.contains(&"request_headers 2 eos=true".to_string()), "{:?}", o.log),
            warm_up: false,
        },
        Case {
            name: "http call allows the request",
            filter: "filter_httpcall",
            config: "auth",
            method: "GET",
            path: "/resource",
            headers: &[("authorization", "Bearer good")],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert!(o.body.contains("x-auth-user: alice"), "{}", o.body),
            warm_up: true,
        },
        Case {
            name: "http call denies the request",
            filter: "filter_httpcall",
            config: "auth",
            method: "GET",
            path: "/resource",
            headers: &[("authorization", "Bearer bad")],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert_eq!(o.status, 403),
            warm_up: true,
        },
        Case {
            name: "http call in flight while the request body arrives",
            filter: "filter_httpcall",
            config: "auth",
            method: "POST",
            path: "/resource",
            headers: &[("authorization", "Bearer bad")],
            body: b"payload",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |_| {},
            warm_up: true,
        },
        Case {
            name: "http call to an unknown upstream",
            filter: "filter_httpcall",
            config: "nosuch",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert!(o.headers.contains(&("x-call-error".into(), "BadArgument".into())), "{:?}", o.headers),
            warm_up: true,
        },
        Case {
            name: "shared data",
            filter: "filter_shared",
            config: "",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert!(o.headers.contains(&("x-hits".into(), "2".into())), "{:?}", o.headers),
            warm_up: true,
        },
        Case {
            name: "metrics",
            filter: "filter_metrics",
            config: "",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: None,
            check: |o| assert!(o.headers.contains(&("x-requests-total".into(), "2".into())), "{:?}", o.headers),
            warm_up: true,
        },
        Case {
            name: "sandbox: an empty environment",
            filter: "filter_misbehave",
            config: "env",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
            differs: &[(
                Host::EnvoyInwasm,
                "the filter reports its (empty) environment in a header with an empty value, which Envoy's dynamic-module ABI cannot store: the header is dropped",
            )],
            no_reference: None,
            check: |o| assert!(o.body.contains("x-misbehave-config: env"), "{}", o.body),
            warm_up: true,
        },
        Case {
            name: "panic in request headers",
            filter: "filter_misbehave",
            config: "panic",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
            differs: &[
                (Host::EnvoyInwasm, "a failed filter answers 500 (Envoy's Wasm filter answers 503) and logs the trap"),
                (Host::NginxInwasm, "a failed filter answers 500 (Envoy's Wasm filter answers 503) and logs the trap"),
            ],
            no_reference: None,
            check: |o| assert!(o.status >= 500),
            warm_up: true,
        },
        Case {
            name: "infinite loop in request headers",
            filter: "filter_misbehave",
            config: "spin",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
            differs: NO_DIFFERENCE,
            no_reference: Some("V8 has no deadline: the worker would spin forever"),
            check: |o| assert_eq!(o.status, 500),
            warm_up: true,
        },
    ]
}

#[test]
fn same_filters_behave_the_same_on_every_host() {
    let mut rows = vec![
        "| case | Envoy V8 (reference) | Envoy + inwasm | nginx + inwasm |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    for case in cases() {
        rows.push(compare(&case));
    }
    let table = rows.join("\n");
    println!("{table}");
    let _ = std::fs::write(root().join("target/conformance.md"), format!("{table}\n"));
}
