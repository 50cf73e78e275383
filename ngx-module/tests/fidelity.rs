//! Everyday nginx around a filter: internal redirects, subrequests, keep-alive and pipelined
//! requests, chunked bodies, HTTP/2, edits of framing and conditional headers, pseudo-header
//! writes, and filters that fail or never resume while a request waits. Each runs the
//! `script` test filter, which does what its configuration says (see its crate).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

fn script_block() -> String {
    format!("wasm {{ module script {}; }}", filter("script"))
}

/// A `proxy_wasm script '...'` directive running `lines` (one step a line).
fn script(lines: &[&str]) -> String {
    format!("proxy_wasm script '{}';", lines.join("\n"))
}

/// A filter reading an nginx variable in every callback of a request.
fn reads_variables_everywhere() -> String {
    script(&[
        "request_headers property ngx.msec",
        "request_headers property ngx.uri",
        "response_headers property ngx.msec",
        "response_body property ngx.uri",
        "log property ngx.msec",
        "log property ngx.uri",
        "log property request.path",
    ])
}

/// The worker survives: no signal in the log, and it still serves.
fn assert_no_crash(nginx: &Nginx) {
    let log = nginx.error_log();
    assert!(!log.contains("exited on signal"), "{log}");
    assert!(!log.contains("[alert]"), "{log}");
}

/// With a shared instance and with an instance per request (which a redirect must not
/// take back while the request goes on) alike.
#[test]
fn internal_redirects_keep_one_set_of_streams_that_see_the_final_response_and_log() {
    for isolation in ["none", "stream"] {
        internal_redirects_keep_one_set_of_streams(isolation);
    }
}

fn internal_redirects_keep_one_set_of_streams(isolation: &str) {
    let filter = reads_variables_everywhere();
    let nginx = Nginx::start_with(
        1,
        &script_block(),
        &format!(
            "root /usr/share/nginx/html; proxy_wasm_isolation {isolation};
             location /try {{ {filter} try_files /missing @named; }}
             location @named {{ return 200 'named\n'; }}
             location /error {{ {filter} error_page 404 = /fallback; }}
             location /fallback {{ return 200 'fallback\n'; }}
             location /rewrite {{ {filter} rewrite ^ /rewritten last; }}
             location /rewritten {{ return 200 'rewritten\n'; }}
             location /accel {{ {filter} proxy_pass http://127.0.0.1:$server_port/sets-accel; }}
             location /sets-accel {{ add_header X-Accel-Redirect /internal; return 200 'hidden\n'; }}
             location /internal {{ internal; return 200 'internal\n'; }}"
        ),
        "",
    );
    for (path, body) in
        [("/try", "named\n"), ("/error", "fallback\n"), ("/rewrite", "rewritten\n"), ("/accel", "internal\n")]
    {
        for _ in 0..3 {
            let response = nginx.get(path);
            assert_eq!(
                (response.status, response.text().as_str()),
                (200, body),
                "{isolation}, {path}: {}",
                nginx.error_log()
            );
        }
    }
    // Each request's streams ended once, in the log phase, with nginx's variables readable.
    assert_eq!(nginx.wait_log("log: request.path=", 12), 12, "{}", nginx.error_log());
    assert_eq!(nginx.error_log().matches("log: ngx.uri absent").count(), 0, "{}", nginx.error_log());
    assert_no_crash(&nginx);
}

#[test]
fn a_redirect_into_a_location_with_its_own_filters_runs_those_once_and_the_first_ones_once() {
    let nginx = Nginx::start(
        &script_block(),
        &format!(
            "location /first {{ {} try_files /missing @second; }}
             location @second {{ {} return 200 'second\n'; }}",
            script(&["request_headers log first-headers", "response_headers log first-response", "log log first-log"]),
            script(&[
                "request_headers log second-headers",
                "response_headers log second-response",
                "log log second-log"
            ]),
        ),
    );
    assert_eq!(nginx.get("/first").text(), "second\n");
    nginx.wait_log("second-log", 1);
    let log = nginx.error_log();
    for line in ["first-headers", "first-response", "first-log", "second-headers", "second-response", "second-log"] {
        assert_eq!(log.matches(line).count(), 1, "{line}: {log}");
    }
}

#[test]
fn subrequests_in_front_of_a_filtered_location_leave_the_filters_to_the_main_request() {
    for isolation in ["none", "stream"] {
        let nginx = Nginx::start(
            &script_block(),
            &format!(
                "proxy_wasm_isolation {isolation};
                 location / {{ auth_request /auth; {} return 200 'main\n'; }}
                 location = /auth {{ {} return 204; }}",
                reads_variables_everywhere(),
                reads_variables_everywhere(),
            ),
        );
        for _ in 0..3 {
            assert_eq!(nginx.get("/").text(), "main\n", "{isolation}");
        }
        assert_eq!(nginx.wait_log("log: request.path=/", 3), 3, "{isolation}: {}", nginx.error_log());
        assert_no_crash(&nginx);
    }
}

/// Sends raw bytes on one connection and reads until the server closes it or `wait` passes.
fn exchange(port: u16, bytes: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_filter_removing_or_changing_content_length_cannot_smuggle_a_request() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &script_block(),
        &format!(
            "location /remove {{ {} proxy_pass http://127.0.0.1:{port}; }}
             location /shrink {{ {} proxy_pass http://127.0.0.1:{port}; }}
             location /grow {{ {} proxy_pass http://127.0.0.1:{port}; }}
             location /chunk {{ {} proxy_pass http://127.0.0.1:{port}; }}",
            script(&["request_headers remove-header request content-length"]),
            script(&["request_headers set-header request content-length 1"]),
            script(&["request_headers set-header request content-length 100000"]),
            script(&["request_headers set-header request transfer-encoding chunked"]),
            port = upstream.port,
        ),
    );
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    for path in ["/remove", "/shrink", "/grow", "/chunk"] {
        let request = format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{hidden}GET {path}/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            hidden.len()
        );
        let answer = exchange(nginx.port, request.as_bytes(), Duration::from_secs(10));
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{path}: {answer}");
        assert!(!answer.contains("GET /smuggled\n"), "{path}: {answer}");
        // The upstream got the body whole, with a Content-Length that matches it.
        assert!(answer.contains(&format!("content-length: {}\n", hidden.len())), "{path}: {answer}");
        assert!(answer.contains(&format!("\n\n{hidden}")), "{path}: {answer}");
        assert!(answer.contains(&format!("GET {path}/next")), "{path}: {answer}");
    }
}

#[test]
fn a_body_rewriting_filter_sends_the_upstream_a_length_that_matches() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &script_block(),
        &format!(
            "location / {{ {} proxy_pass http://127.0.0.1:{}; }}",
            script(&[
                "request_headers remove-header request content-length",
                "request_body buffer",
                "request_body set-body request a%20longer%20body%20than%20before",
            ]),
            upstream.port
        ),
    );
    let response = nginx.request("POST", "/", &[], b"short");
    assert_eq!(response.status, 200);
    let seen = response.text();
    assert!(seen.contains("content-length: 25\n"), "{seen}");
    assert!(seen.ends_with("\n\na longer body than before"), "{seen}");
    let chunked = chunked_request(nginx.port, "/", &[b"sh", b"ort"], Duration::from_millis(50)).unwrap();
    let seen = chunked.text();
    assert!(seen.contains("content-length: 25\n") && !seen.contains("transfer-encoding"), "{seen}");
    assert!(seen.ends_with("\n\na longer body than before"), "{seen}");
}

#[test]
fn pseudo_header_writes_change_the_request_line_nginx_and_the_upstream_use() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &script_block(),
        &format!(
            "location /old {{
                 {}
                 {}
                 proxy_pass http://127.0.0.1:1;
             }}
             location /new {{
                 proxy_set_header x-host $host;
                 proxy_set_header x-uri $uri;
                 proxy_set_header x-args $args;
                 proxy_pass http://127.0.0.1:{};
             }}",
            script(&[
                "request_headers set-header request :path /new/%2561b?x=1&y=2",
                "request_headers set-header request :method PATCH",
                "request_headers set-header request :authority Example.ORG:8080",
                "request_headers set-header request :scheme https",
                "request_headers try-set-header request :path bad%20path",
                "request_headers try-set-header request :method BAD%0D%0AMETHOD",
                "request_headers try-set-header request :authority a/b",
            ]),
            // The next filter in the chain sees what the first one wrote.
            script(&[
                "request_headers get-header request :path",
                "request_headers get-header request :method",
                "request_headers get-header request :authority",
                "request_headers get-header request :scheme",
                "request_headers property request.path",
                "request_headers property request.host",
            ]),
            upstream.port
        ),
    );
    let response = nginx.get("/old?z=0");
    assert_eq!(response.status, 200, "{}", nginx.error_log());
    let seen = response.text();
    assert!(seen.starts_with("PATCH /new/%61b?x=1&y=2\n"), "{seen}");
    assert!(seen.contains("x-host: example.org\n"), "{seen}");
    assert!(seen.contains("x-uri: /new/ab\n"), "{seen}");
    assert!(seen.contains("x-args: x=1&y=2\n"), "{seen}");
    let log = nginx.error_log();
    for line in [
        "request_headers: :path=/new/%61b?x=1&y=2",
        "request_headers: :method=PATCH",
        "request_headers: :authority=Example.ORG:8080",
        "request_headers: :scheme=https",
        "request_headers: request.path=/new/%61b?x=1&y=2",
        "request_headers: request.host=Example.ORG:8080",
        "try-set-header :path status 2",
        "try-set-header :method status 2",
        "try-set-header :authority status 2",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }
}

#[test]
fn header_edits_keep_every_shortcut_nginx_reads_true() {
    let upstream = EchoUpstream::start();
    let file = "alias /usr/share/nginx/html/index.html;";
    let nginx = Nginx::start(
        &script_block(),
        &format!(
            "location /no-range {{ {} {file} }}
             location /no-etag {{ {} {file} }}
             location /no-gzip {{ gzip on; gzip_min_length 1; {} {file} }}
             location /cookies {{ {} return 200 '[$cookie_a][$cookie_b][$http_cookie]'; }}
             location /host {{ {} return 200 '[$host][$http_user_agent]'; }}
             location /forwarded {{
                 {}
                 proxy_set_header x-forwarded-for $proxy_add_x_forwarded_for;
                 proxy_pass http://127.0.0.1:{};
             }}",
            script(&["request_headers remove-header request range"]),
            script(&["request_headers remove-header request if-none-match"]),
            script(&["request_headers remove-header request accept-encoding"]),
            script(&["request_headers remove-header request cookie", "request_headers add-header request cookie b=2"]),
            script(&[
                "request_headers set-header request host Other.Example",
                "request_headers set-header request user-agent edited",
            ]),
            script(&["request_headers add-header request x-forwarded-for 10.0.0.1"]),
            upstream.port,
        ),
    );
    let whole = std::fs::read_to_string("/usr/share/nginx/html/index.html").unwrap();
    let range = nginx.request("GET", "/no-range", &[("Range", "bytes=0-9")], b"");
    assert_eq!((range.status, range.text()), (200, whole.clone()));
    let etag = nginx.get("/no-etag").header("etag").unwrap().to_string();
    let conditional = nginx.request("GET", "/no-etag", &[("If-None-Match", &etag)], b"");
    assert_eq!(conditional.status, 200);
    let plain = nginx.request("GET", "/no-gzip", &[("Accept-Encoding", "gzip")], b"");
    assert_eq!((plain.header("content-encoding"), plain.text()), (None, whole));
    let cookies = nginx.request("GET", "/cookies", &[("Cookie", "a=1")], b"");
    assert_eq!(cookies.text(), "[][2][b=2]");
    let host = nginx.request("GET", "/host", &[("User-Agent", "curl")], b"");
    assert_eq!(host.text(), "[other.example][edited]");
    let forwarded = nginx.get("/forwarded").text();
    assert!(forwarded.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1\n"), "{forwarded}");
}

#[test]
fn header_names_and_values_that_would_split_a_message_are_refused() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &script_block(),
        &format!(
            "location / {{ {} proxy_pass http://127.0.0.1:{}; }}",
            script(&[
                "request_headers try-set-header request x-a 1%0D%0AX-Injected:%201",
                "request_headers try-add-header request x-b%0D%0Ax-c 1",
                "request_headers try-add-header request x-nul 1%00",
                "request_headers try-add-header request x-fine 1",
                "response_headers try-set-header response x-d 1%0ASet-Cookie:%20x",
            ]),
            upstream.port
        ),
    );
    let response = nginx.get("/");
    assert_eq!(response.status, 200);
    let seen = response.text();
    assert!(seen.contains("x-fine: 1\n"), "{seen}");
    assert!(
        !seen.to_ascii_lowercase().contains("injected") && !seen.contains("x-c") && !seen.contains("x-nul"),
        "{seen}"
    );
    assert_eq!(response.header("set-cookie"), None);
    let log = nginx.error_log();
    assert_eq!(log.matches(" status 2").count(), 4, "{log}");
    assert!(log.contains("try-add-header x-fine status 0"), "{log}");
}

#[test]
fn a_call_may_name_its_authority_with_a_host_header() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &script_block(),
        &format!(
            "location / {{ {} return 200 'resumed\n'; }}",
            script(&[
                &format!("request_headers call 127.0.0.1:{} /check host=auth.example", upstream.port),
                "request_headers pause",
                "call_response get-header call :status",
                "call_response resume",
            ])
        ),
    );
    let response = nginx.get("/");
    assert_eq!((response.status, response.text().as_str()), (200, "resumed\n"), "{}", nginx.error_log());
    assert!(nginx.error_log().contains("call_response: :status=200"), "{}", nginx.error_log());
}

#[test]
fn a_filter_failing_while_a_request_waits_answers_503_at_once() {
    let upstream = EchoUpstream::start();
    let call = format!("call 127.0.0.1:{} /check", upstream.port);
    let nginx = Nginx::start(
        &script_block(),
        &format!(
            "location /request {{ {} return 200 'never\n'; }}
             location /response {{ {} return 200 'never\n'; }}
             location /open {{ proxy_wasm_fail_open on; {} return 200 'served\n'; }}",
            script(&[&format!("request_headers {call}"), "request_headers pause", "call_response trap"]),
            script(&[&format!("response_headers {call}"), "response_headers pause", "call_response trap"]),
            script(&[&format!("request_headers {call}"), "request_headers pause", "call_response trap"]),
        ),
    );
    for path in ["/request", "/response"] {
        let started = std::time::Instant::now();
        let response = nginx.get(path);
        assert_eq!(response.status, 503, "{path}: {}", nginx.error_log());
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
    }
    assert_eq!(nginx.get("/open").text(), "served\n");
    let log = nginx.error_log();
    assert_eq!(log.matches("its instance failed while the request waited; request failed").count(), 2, "{log}");
    assert!(log.contains("its instance failed while the request waited; skipped (fail-open)"), "{log}");
}

#[test]
fn a_filter_that_never_resumes_is_answered_504_after_the_pause_timeout() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &script_block(),
        &format!(
            "proxy_wasm_pause_timeout 300ms;
             location /request {{ {} return 200 'never\n'; }}
             location /body {{ {} return 200 'never\n'; }}
             location /response {{ {} proxy_pass http://127.0.0.1:{}; }}",
            script(&["request_headers pause", "log log ended"]),
            script(&["request_body buffer", "request_body pause", "log log ended"]),
            script(&["response_headers pause", "log log ended"]),
            upstream.port,
        ),
    );
    for (path, body) in [("/request", &b""[..]), ("/body", b"some body"), ("/response", b"")] {
        let response = nginx.request("POST", path, &[], body);
        assert_eq!(response.status, 504, "{path}: {}", nginx.error_log());
    }
    assert_eq!(nginx.wait_log("log: ended", 3), 3, "{}", nginx.error_log());
    let log = nginx.error_log();
    assert_eq!(
        log.matches(
            "filter \"script\" kept the request waiting longer than proxy_wasm_pause_timeout (300ms); answered 504"
        )
        .count(),
        3,
        "{log}"
    );
    assert_no_crash(&nginx);
}

#[test]
fn a_client_that_gives_up_on_a_paused_request_ends_it() {
    let nginx = Nginx::start(
        &script_block(),
        &format!("location / {{ {} return 200 'never\n'; }}", script(&["request_headers pause", "log log ended"])),
    );
    for _ in 0..5 {
        let mut stream = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(stream);
    }
    assert_eq!(nginx.wait_log("log: ended", 5), 5, "{}", nginx.error_log());
    assert_eq!(nginx.error_log().matches("client prematurely closed connection").count(), 5, "{}", nginx.error_log());
}

/// A filter that touches every phase: headers both ways, the body, variables.
fn busy_filter() -> String {
    script(&[
        "request_headers property ngx.request_uri",
        "request_headers add-header request x-seen yes",
        "request_body buffer",
        "request_body get-body request",
        "response_headers add-header response x-filtered yes",
        "response_body property ngx.status",
        "log property ngx.request_time",
    ])
}

#[test]
fn pipelined_requests_with_bodies_on_one_connection_each_run_the_chain() {
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(
        &script_block(),
        &format!("location / {{ {} proxy_pass http://127.0.0.1:{}; }}", busy_filter(), upstream.port),
    );
    let mut pipeline = String::new();
    for (i, body) in ["first", "second", ""].iter().enumerate() {
        pipeline.push_str(&format!("POST /{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    }
    pipeline.push_str("POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    pipeline.push_str("5\r\nfourt\r\n1\r\nh\r\n0\r\n\r\n");
    let answer = exchange(nginx.port, pipeline.as_bytes(), Duration::from_secs(10));
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 4, "{answer}");
    assert_eq!(answer.matches("x-filtered: yes").count(), 4, "{answer}");
    for (i, body) in ["first", "second", "", "fourth"].iter().enumerate() {
        assert!(answer.contains(&format!("POST /{i}\n")), "{answer}");
        assert!(answer.contains(&format!("content-length: {}\n", body.len())), "{answer}");
    }
    assert!(answer.contains("\n\nfourth"), "{answer}");
    assert_eq!(nginx.wait_log("log: ngx.request_time=", 4), 4, "{}", nginx.error_log());
    assert_no_crash(&nginx);
}

#[test]
fn http2_requests_run_the_chain_like_http1() {
    let upstream = EchoUpstream::start();
    let h2 = free_port();
    let nginx = Nginx::start_with(
        1,
        &script_block(),
        "location / { return 404; }",
        &format!(
            "server {{ listen 127.0.0.1:{h2} http2; location / {{ {} proxy_pass http://127.0.0.1:{}; }} }}",
            busy_filter(),
            upstream.port
        ),
    );
    let mut text = String::new();
    for query in ["x=1", "x=2"] {
        let url = format!("http://127.0.0.1:{h2}/h2?{query}");
        let args = ["-s", "-i", "--http2-prior-knowledge", "--data-binary", "h2 body", &url];
        let output = std::process::Command::new("curl").args(args).output().unwrap();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    assert_eq!(text.matches("HTTP/2 200").count(), 2, "{text}\n{}", nginx.error_log());
    assert_eq!(text.matches("x-filtered: yes").count(), 2, "{text}");
    assert!(text.contains("POST /h2?x=1\n") && text.contains("\n\nh2 body"), "{text}");
    assert!(text.contains("x-seen: yes"), "{text}");
    assert_eq!(nginx.wait_log("log: ngx.request_time=", 2), 2, "{}", nginx.error_log());
    assert_eq!(nginx.error_log().matches("request_body: request body=h2 body").count(), 2, "{}", nginx.error_log());
    assert_no_crash(&nginx);
}

#[test]
fn response_framing_headers_written_by_a_filter_are_the_ones_nginx_sends() {
    let nginx = Nginx::start(
        &script_block(),
        &format!(
            "location / {{ {} return 200 \"hello\\n\"; }}",
            script(&[
                "response_headers remove-header response content-length",
                "response_headers get-header response content-length",
                "response_headers set-header response content-type text/x-test",
                "response_headers get-header response content-type",
                "response_headers set-header response :status 202",
                "response_headers get-header response :status",
            ])
        ),
    );
    let response = nginx.request("GET", "/", &[], b"");
    assert_eq!((response.status, response.text().as_str()), (202, "hello\n"), "{}", nginx.error_log());
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.header("content-type"), Some("text/x-test"));
    assert!(response.header("server").is_some() && response.header("date").is_some());
    let log = nginx.error_log();
    for line in ["content-length absent", "content-type=text/x-test", ":status=202"] {
        assert!(log.contains(line), "{line}: {log}");
    }
}
