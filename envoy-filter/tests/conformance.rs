//! Differential conformance: the same SDK-built filters and the same requests through
//! (1) Envoy's own Wasm filter on V8, the reference, (2) Envoy with this project's module and
//! (3) nginx with this project's module. Statuses, response headers, what the upstream
//! received and the filter's log lines are compared; where the hosts must differ, the case
//! says so and why, and the difference itself is asserted.
//!
//! The comparison table is printed (`cargo test --test conformance -- --nocapture`) and
//! written to `target/conformance.md`. `CONFORMANCE_ONLY=TEXT` runs the cases whose name
//! contains TEXT.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inwasm_grpc_upstream::GrpcUpstream;
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
    /// What every host that runs the case, and is not expected to differ, must show.
    check: fn(&Observed),
    /// Send one request before the one compared, so every host's worker is running.
    warm_up: bool,
    /// How many times the filter stands in the chain (each with the case's configuration).
    chain: usize,
    /// Envoy routes tried before the default one (YAML route entries; clusters `upstream`
    /// and `auth`).
    envoy_routes: &'static [&'static str],
    /// The default Envoy route's metadata (YAML flow mapping).
    route_metadata: Option<&'static str>,
    /// nginx's `location /` in place of the default one: `FILTERS` stands for the filter
    /// directives, `ECHO` and `AUTH` for the upstreams' addresses.
    nginx_location: Option<&'static str>,
    /// More of nginx's `http {}` block.
    nginx_http: &'static str,
}

impl Case {
    /// What a case has unless it says otherwise.
    const PLAIN: Case = Case {
        name: "",
        filter: "filter_script",
        config: "",
        method: "GET",
        path: "/",
        headers: &[],
        body: b"",
        differs: NO_DIFFERENCE,
        no_reference: None,
        check: |_| {},
        warm_up: true,
        chain: 1,
        envoy_routes: &[],
        route_metadata: None,
        nginx_location: None,
        nginx_http: "",
    };
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
    let grpc = GrpcUpstream::start();
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
    // Each filter of a chain has a configuration of its own (the script ignores `#` lines).
    let configs: Vec<String> = (0..case.chain)
        .map(|i| if i == 0 { case.config.to_string() } else { format!("{}\n# filter {i}", case.config) })
        .collect();
    match host {
        Host::V8 | Host::EnvoyInwasm => {
            let filter = |config: &String| match host {
                Host::V8 => v8_filter(name, &wasm(case.filter), config),
                _ => inwasm_filter(&format!(
                    r#"{{"module": "{}", "name": "{name}", "vm_id": "{name}", "configuration": {}}}"#,
                    wasm(case.filter),
                    json_string(config)
                )),
            };
            let setup = EnvoySetup {
                filters: configs.iter().map(filter).collect(),
                upstream: Some(upstream.port),
                clusters: vec![("auth".into(), auth.port)],
                grpc_clusters: vec![("grpc_upstream".into(), grpc.port), ("grpc_silent".into(), grpc.silent_port)],
                workers: 1,
                routes: case.envoy_routes.iter().map(|r| r.to_string()).collect(),
                route_metadata: case.route_metadata.map(str::to_string),
            };
            let envoy = Envoy::start(&setup);
            exchange(envoy.port, &|| envoy.log())
        }
        Host::NginxInwasm => {
            let filters: String = configs.iter().map(|config| format!("proxy_wasm {name} '{config}';")).collect();
            let placeholders = |text: &str| {
                text.replace("FILTERS", &filters)
                    .replace("ECHO", &format!("http://127.0.0.1:{}", upstream.port))
                    .replace("AUTH", &format!("http://127.0.0.1:{}", auth.port))
            };
            let location = placeholders(case.nginx_location.unwrap_or("location / { FILTERS proxy_pass ECHO; }"));
            let nginx = Nginx::start_with(
                1,
                &format!("wasm {{ module {name} {}; }}", wasm(case.filter)),
                &location,
                &format!(
                    "upstream auth {{ server 127.0.0.1:{}; }}
                     upstream grpc_upstream {{ server 127.0.0.1:{}; }}
                     upstream grpc_silent {{ server 127.0.0.1:{}; }} {}",
                    auth.port,
                    grpc.port,
                    grpc.silent_port,
                    placeholders(case.nginx_http)
                ),
            );
            // Workers start after nginx accepts connections: the settling lets their start-up
            // log first.
            exchange(nginx.port, &|| nginx.error_log())
        }
    }
}

fn json_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

/// A row of the table: how each inwasm host compared with the reference.
fn compare(case: &Case) -> String {
    let reference = case.no_reference.is_none().then(|| run(case, Host::V8));
    if let Some(reference) = &reference {
        eprintln!("{}: {}: {reference:?}", case.name, Host::V8.label());
    }
    let mut cells = vec![match (&reference, case.no_reference) {
        (Some(observed), _) => format!("{}", observed.status),
        (None, Some(why)) => format!("not run: {why}"),
        (None, None) => unreachable!(),
    }];
    let mut observed_inwasm = Vec::new();
    for host in [Host::EnvoyInwasm, Host::NginxInwasm] {
        let observed = run(case, host);
        eprintln!("{}: {}: {observed:?}", case.name, host.label());
        let expected_difference = case.differs.iter().find(|(h, _)| *h == host).map(|(_, why)| *why);
        if expected_difference.is_none() {
            (case.check)(&observed);
        }
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
            path: "/path?x=1",
            headers: &[("X-Remove-Me", "yes"), ("X-Keep", "kept")],
            check: |o| {
                assert_eq!(o.status, 200);
                assert!(o.body.contains("x-inwasm-config: from-config") && !o.body.contains("x-remove-me"), "{}", o.body);
                assert!(o.headers.contains(&("x-request-path".into(), "/path?x=1".into())), "{:?}", o.headers);
            },
            ..Case::PLAIN
        },
        Case {
            name: "local response from request headers",
            filter: "filter_headers",
            headers: &[("x-deny", "1")],
            check: |o| assert_eq!((o.status, o.body.as_str()), (403, "denied\n")),
            ..Case::PLAIN
        },
        Case {
            name: "local response from response headers",
            filter: "filter_headers",
            headers: &[("x-deny-response", "1")],
            check: |o| assert_eq!((o.status, o.body.as_str()), (451, "blocked late\n")),
            ..Case::PLAIN
        },
        Case {
            name: "request body buffered and rewritten, response body transformed",
            filter: "filter_body",
            method: "POST",
            path: "/upload",
            body: b"hello",
            check: |o| assert!(o.body.ends_with("\n\nOLLEH!"), "{}", o.body),
            ..Case::PLAIN
        },
        Case {
            name: "response headers held for an http call",
            filter: "filter_httpcall",
            config: "auth",
            path: "/resource",
            headers: &[("authorization", "Bearer good"), ("x-call-at", "response")],
            check: |o| assert!(o.headers.contains(&("x-auth-user".into(), "alice".into())), "{:?}", o.headers),
            ..Case::PLAIN
        },
        Case {
            name: "local response in place of a held response",
            filter: "filter_httpcall",
            config: "auth",
            path: "/resource",
            headers: &[("authorization", "Bearer bad"), ("x-call-at", "response")],
            check: |o| assert_eq!((o.status, o.body.as_str()), (403, "forbidden\n")),
            ..Case::PLAIN
        },
        Case {
            name: "bad request body rejected",
            filter: "filter_body",
            method: "POST",
            path: "/upload",
            body: b"a bad one",
            check: |o| assert_eq!(o.status, 400),
            ..Case::PLAIN
        },
        Case {
            name: "properties",
            filter: "filter_properties",
            config: "request.path,request.url_path,request.method,request.scheme,request.query,request.protocol,plugin_name,plugin_root_id,response.code",
            path: "/props?q=1",
            check: |o| assert!(o.headers.contains(&("x-prop-request-path".into(), "/props?q=1".into())), "{:?}", o.headers),
            ..Case::PLAIN
        },
        Case {
            name: "callback order and arguments",
            filter: "filter_lifecycle",
            method: "POST",
            body: b"hello",
            check: |o| assert!(o.log.contains(&"request_headers 3 eos=false".to_string()), "{:?}", o.log),
            differs: &[(
                Host::NginxInwasm,
                "nginx hands a body that arrives whole to on_request_body at once with end_of_stream; Envoy sends the end of stream as a second, empty piece",
            )],
            ..Case::PLAIN
        },
        Case {
            name: "first request on a worker",
            filter: "filter_lifecycle",
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
            check: |o| assert!(o.log.contains(&"request_headers 2 eos=true".to_string()), "{:?}", o.log),
            warm_up: false,
            ..Case::PLAIN
        },
        Case {
            name: "http call allows the request",
            filter: "filter_httpcall",
            config: "auth",
            path: "/resource",
            headers: &[("authorization", "Bearer good")],
            check: |o| assert!(o.body.contains("x-auth-user: alice"), "{}", o.body),
            ..Case::PLAIN
        },
        Case {
            name: "http call denies the request",
            filter: "filter_httpcall",
            config: "auth",
            path: "/resource",
            headers: &[("authorization", "Bearer bad")],
            check: |o| assert_eq!(o.status, 403),
            ..Case::PLAIN
        },
        Case {
            name: "http call in flight while the request body arrives",
            filter: "filter_httpcall",
            config: "auth",
            method: "POST",
            path: "/resource",
            headers: &[("authorization", "Bearer bad")],
            body: b"payload",
            check: |_| {},
            ..Case::PLAIN
        },
        Case {
            name: "http call to an unknown upstream",
            filter: "filter_httpcall",
            config: "nosuch",
            check: |o| assert!(o.headers.contains(&("x-call-error".into(), "BadArgument".into())), "{:?}", o.headers),
            ..Case::PLAIN
        },
        Case {
            name: "shared data",
            filter: "filter_shared",
            check: |o| assert!(o.headers.contains(&("x-hits".into(), "2".into())), "{:?}", o.headers),
            ..Case::PLAIN
        },
        Case {
            name: "metrics",
            filter: "filter_metrics",
            check: |o| assert!(o.headers.contains(&("x-requests-total".into(), "2".into())), "{:?}", o.headers),
            ..Case::PLAIN
        },
        Case {
            name: "sandbox: an empty environment",
            filter: "filter_misbehave",
            config: "env",
            differs: &[(
                Host::EnvoyInwasm,
                "the filter reports its (empty) environment in a header with an empty value, which Envoy's dynamic-module ABI cannot store: the header is dropped",
            )],
            check: |o| assert!(o.body.contains("x-misbehave-config: env"), "{}", o.body),
            ..Case::PLAIN
        },
        Case {
            name: "panic in request headers",
            filter: "filter_misbehave",
            config: "panic",
            differs: &[(
                Host::NginxInwasm,
                "nginx answers an error status with its own error page (HTML; `error_page` changes it), Envoy with an empty body",
            )],
            check: |o| assert_eq!(o.status, 503),
            // Not warmed up: Envoy's Wasm filter keeps a failed VM failed (inwasm rebuilds it).
            warm_up: false,
            ..Case::PLAIN
        },
        Case {
            name: "panic on a gRPC request",
            filter: "filter_misbehave",
            config: "panic",
            method: "POST",
            path: "/pkg.Service/Method",
            headers: &[("content-type", "application/grpc"), ("te", "trailers")],
            body: b"\0\0\0\0\0",
            check: |o| {
                assert_eq!(o.status, 200, "a gRPC failure is a gRPC status");
                assert!(o.headers.contains(&("grpc-status".into(), "14".into())), "{:?}", o.headers);
            },
            // Not warmed up: Envoy's Wasm filter keeps a failed VM failed (inwasm rebuilds it).
            warm_up: false,
            ..Case::PLAIN
        },
        Case {
            name: "infinite loop in request headers",
            filter: "filter_misbehave",
            config: "spin",
            no_reference: Some("V8 has no deadline: the worker would spin forever"),
            check: |o| assert_eq!(o.status, 503),
            ..Case::PLAIN
        },
        Case {
            name: "a request-header edit re-routes (the route cache is cleared)",
            config: "request_headers set-header request x-route canary",
            envoy_routes: &[r#"- match: {prefix: "/", headers: [{name: x-route, string_match: {exact: canary}}]}
  route: {cluster: auth}"#],
            nginx_http: "map $http_x_route $routed { canary AUTH; default ECHO; }",
            nginx_location: Some("location / { FILTERS proxy_pass $routed; }"),
            check: |o| assert_eq!(o.status, 401, "the canary route's service answered: {}", o.body),
            ..Case::PLAIN
        },
        Case {
            name: "filters with the same code share one VM (globals, distinct root contexts)",
            config: "request_headers global-count",
            chain: 2,
            check: |o| assert!(o.body.contains("x-global: root1:3\nx-global: root2:4\n"), "{}", o.body),
            ..Case::PLAIN
        },
        Case {
            name: "a paused request is resumed by the root context's tick, with no other traffic",
            config: "configure tick 100\ntick resume-postponed\nrequest_headers postpone",
            check: |o| {
                assert_eq!(o.status, 200);
                assert_eq!(o.log, ["tick: resumed a postponed stream: true"]);
            },
            ..Case::PLAIN
        },
        Case {
            name: "route metadata properties",
            config: "request_headers property xds.route_metadata.filter_metadata.tenancy.tenant
                     request_headers property xds.route_metadata.filter_metadata.tenancy.tier
                     request_headers property xds.route_metadata.filter_metadata.tenancy.beta
                     request_headers property xds.route_metadata.filter_metadata.tenancy.regions
                     request_headers property xds.route_metadata.filter_metadata.tenancy.regions.1
                     request_headers property xds.route_metadata.filter_metadata.tenancy.missing",
            route_metadata: Some("{filter_metadata: {tenancy: {tenant: acme, tier: 3, beta: true, regions: [eu, us]}}}"),
            differs: &[(Host::NginxInwasm, "nginx has no xDS route metadata: the properties are absent")],
            check: |o| assert_eq!(o.status, 200),
            ..Case::PLAIN
        },
        Case {
            name: "each queued item notifies the registering root context",
            config: "configure register-queue q\nqueue_ready dequeue\nrequest_headers enqueue script q 3",
            check: |o| assert_eq!(o.log, ["queue_ready: dequeued 1 bytes"; 3]),
            ..Case::PLAIN
        },
        Case {
            name: "unary gRPC call to a cluster (as grpc_auth_random)",
            config: "request_headers grpc-call grpc_upstream inwasm.test.Echo Unary hello x-meta=m1\n\
                     request_headers pause\ngrpc_done respond-grpc-log",
            check: |o| assert_eq!(o.body, "call answered echo:hello"),
            ..Case::PLAIN
        },
        Case {
            name: "unary gRPC call to a GrpcService naming its cluster and authority",
            config: "request_headers grpc-call service:grpc_upstream:echo.test inwasm.test.Echo Unary hi\n\
                     request_headers pause\ngrpc_done respond-grpc-log",
            check: |o| assert_eq!(o.body, "call answered echo:hi"),
            ..Case::PLAIN
        },
        Case {
            name: "a refused gRPC call gives its status and message",
            config: "request_headers grpc-call grpc_upstream inwasm.test.Echo Unary deny\n\
                     request_headers pause\ngrpc_done respond-grpc-log",
            check: |o| assert_eq!(o.body, "call failed 7 denied{via_upstream}"),
            ..Case::PLAIN
        },
        Case {
            name: "a gRPC call to a method the server lacks",
            config: "request_headers grpc-call grpc_upstream inwasm.test.Echo Nope x\n\
                     request_headers pause\ngrpc_done respond-grpc-log",
            check: |o| assert_eq!(o.body, "call failed 12 no%20such%20method{via_upstream}"),
            ..Case::PLAIN
        },
        Case {
            name: "a gRPC call past its deadline",
            config: "request_headers grpc-call grpc_silent inwasm.test.Echo Unary x timeout=300\n\
                     request_headers pause\ngrpc_done respond-grpc-log",
            check: |o| assert_eq!(o.body, "call failed 14 upstream request timeout{response_timeout}"),
            ..Case::PLAIN
        },
        Case {
            name: "a gRPC call to an unknown cluster is refused",
            config: "request_headers grpc-call nowhere inwasm.test.Echo Unary x\nrequest_headers respond-grpc-log",
            check: |o| assert_eq!(o.body, "call refused: ParseFailure"),
            ..Case::PLAIN
        },
        Case {
            name: "gRPC stream: metadata, messages, trailers, close",
            config: "request_headers grpc-stream grpc_upstream inwasm.test.Echo Stream a,b x-meta=m2\n\
                     request_headers pause\ngrpc_done respond-grpc-log",
            check: |o| {
                let expected = "initial x-echo-meta=m2\nmessage echo:a\nmessage echo:b\ntrailing grpc-status=0\nclosed 0 via_upstream";
                assert_eq!(o.body, expected)
            },
            ..Case::PLAIN
        },
        Case {
            name: "a metric first defined by a request counts",
            config: "request_headers count late_total",
            check: |o| assert_eq!(o.log, ["request_headers: late_total=2"]),
            ..Case::PLAIN
        },
        Case {
            name: "compress and uncompress foreign functions (zlib)",
            config: "request_headers zlib-round-trip hello%20hello%20hello",
            check: |o| assert_eq!(o.log, ["request_headers: zlib 789c round trip ok"]),
            ..Case::PLAIN
        },
    ]
}

/// How many cases run side by side: each starts servers of its own, and most of a case's
/// time is spent waiting for them.
const CASES_AT_ONCE: usize = 3;

/// The table's rows for `cases`, in their order. A case that fails fails the test once the
/// cases already started have ended.
fn compare_all(cases: &[Case]) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let claim = || {
        let index = next.fetch_add(1, Ordering::Relaxed);
        cases.get(index).map(|case| (index, case))
    };
    let mut rows: Vec<(usize, String)> = std::thread::scope(|scope| {
        let runners: Vec<_> = (0..CASES_AT_ONCE)
            .map(|_| {
                scope.spawn(|| {
                    let mut rows = Vec::new();
                    while let Some((index, case)) = claim() {
                        rows.push((index, compare(case)));
                    }
                    rows
                })
            })
            .collect();
        runners
            .into_iter()
            .flat_map(|runner| runner.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    rows.sort();
    rows.into_iter().map(|(_, row)| row).collect()
}

#[test]
fn same_filters_behave_the_same_on_every_host() {
    let mut rows = vec![
        "| case | Envoy V8 (reference) | Envoy + inwasm | nginx + inwasm |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    let only = std::env::var("CONFORMANCE_ONLY").unwrap_or_default();
    let cases: Vec<Case> = cases().into_iter().filter(|case| case.name.contains(&only)).collect();
    rows.extend(compare_all(&cases));
    let table = rows.join("\n");
    println!("{table}");
    let _ = std::fs::write(root().join("target/conformance.md"), format!("{table}\n"));
}
