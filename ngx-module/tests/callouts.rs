//! http calls on nginx's upstream machinery, through a real nginx: upstream blocks with their
//! balancer (down and backup servers, keepalive, hashing), nginx's resolver, TLS with a CA of
//! the test's own (http calls, and gRPC calls to a real gRPC server behind a TLS HTTP/2
//! server block), requests a filter tries to smuggle something into, large chunked answers
//! and calls from a root context's ticks. The callout filter makes one call per request,
//! shaped by the request's headers, and answers with what came back.

mod support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use inwasm_grpc_upstream::GrpcUpstream;
use support::*;

/// The server blocks the calls go to: each of `ports` answers `/who` with
/// `<port> <connection> <connection's request number>` (and `$ssl_server_name` over TLS).
fn services(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|port| {
            format!(
                "server {{ listen 127.0.0.1:{port};
                     location /who {{ return 200 '{port} $connection $connection_requests'; }} }}\n"
            )
        })
        .collect()
}

/// An nginx whose every request goes through the callout filter, with `wasm` added to the
/// `wasm {}` block and `http` to the `http {}` block.
fn gateway(wasm: &str, http: &str) -> Nginx {
    Nginx::start_with(
        1,
        &format!("wasm {{ module callout {}; {wasm} }}", filter("callout")),
        "location / { proxy_wasm callout; }",
        http,
    )
}

/// A call through the gateway with the callout filter's request headers.
fn call(nginx: &Nginx, headers: &[(&str, &str)]) -> Response {
    nginx.request("GET", "/", headers, b"")
}

/// `(port, connection)` of a `/who` answer.
fn who(response: &Response) -> (String, String) {
    let text = response.text();
    let mut words = text.split(' ');
    (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string())
}

#[test]
fn keepalive_connections_of_an_upstream_block_are_reused() {
    let port = free_port();
    let nginx = gateway(
        "",
        &format!(
            "upstream kept {{ server 127.0.0.1:{port}; keepalive 4; }}
             upstream unkept {{ server 127.0.0.1:{port}; }}
             {}",
            services(&[port])
        ),
    );
    let connections = |upstream: &str| {
        let answers: Vec<Response> =
            (0..5).map(|_| call(&nginx, &[("x-upstream", upstream), ("x-path", "/who")])).collect();
        for answer in &answers {
            assert_eq!(answer.header("x-call-status"), Some("200"), "{}", nginx.error_log());
        }
        answers.iter().map(|a| who(a).1).collect::<BTreeSet<_>>().len()
    };
    assert_eq!(connections("kept"), 1, "five calls over one kept connection");
    assert_eq!(connections("unkept"), 5, "without keepalive, a connection per call");
}

#[test]
fn an_upstream_blocks_balancer_skips_down_and_failed_servers_for_the_backup() {
    let (down, dead, backup) = (free_port(), free_port(), free_port());
    let nginx = gateway(
        "",
        &format!(
            "upstream guarded {{
                 server 127.0.0.1:{down} down;
                 server 127.0.0.1:{dead} max_fails=1 fail_timeout=30s;
                 server 127.0.0.1:{backup} backup;
             }}
             {}",
            services(&[down, backup])
        ),
    );
    for _ in 0..4 {
        let response = call(&nginx, &[("x-upstream", "guarded"), ("x-path", "/who")]);
        assert_eq!(response.header("x-call-status"), Some("200"), "{}", nginx.error_log());
        assert_eq!(who(&response).0, backup.to_string(), "never the down server, the dead one is passed over");
    }
    let log = nginx.error_log();
    assert!(log.contains(&format!("127.0.0.1:{dead}")), "nginx reports the dead server: {log}");
}

#[test]
fn hash_balancers_see_the_call_as_the_request() {
    let (a, b) = (free_port(), free_port());
    let servers = format!("server 127.0.0.1:{a}; server 127.0.0.1:{b};");
    let nginx = gateway(
        "",
        &format!(
            "upstream by_uri {{ hash $request_uri; {servers} }}
             upstream by_host {{ hash $host consistent; {servers} }}
             upstream by_header {{ hash $http_x_extra; {servers} }}
             upstream by_client {{ ip_hash; {servers} }}
             upstream by_port {{ hash $binary_remote_addr$remote_port$server_addr$gzip_ratio; {servers} }}
             {}",
            services(&[a, b])
        ),
    );
    let server = |headers: &[(&str, &str)]| {
        let response = call(&nginx, headers);
        assert_eq!(response.header("x-call-status"), Some("200"), "{headers:?}: {}", nginx.error_log());
        who(&response).0
    };
    // Sixteen values of `header`, each twice: the same server each time, both servers in all.
    let spread = |upstream: &str, header: &str, value: fn(usize) -> String| {
        let chosen: BTreeSet<_> = (0..16)
            .map(|i| {
                let value = value(i);
                let mut headers = vec![("x-upstream", upstream), (header, value.as_str())];
                if header != "x-path" {
                    headers.push(("x-path", "/who"));
                }
                let first = server(&headers);
                assert_eq!(first, server(&headers), "{upstream}: the same {header} goes to the same server");
                first
            })
            .collect();
        assert_eq!(chosen.len(), 2, "{upstream}: sixteen {header} values reach both servers");
    };
    spread("by_uri", "x-path", |i| format!("/who/{i}"));
    spread("by_host", "x-authority", |i| format!("h{i}.test"));
    let header_calls: BTreeSet<_> =
        (0..4).map(|_| server(&[("x-upstream", "by_header"), ("x-path", "/who")])).collect();
    assert_eq!(header_calls.len(), 1, "one x-extra value, one server");
    // No client address: one server for every call, and nothing that reads one fails.
    let clients: BTreeSet<_> = (0..4).map(|_| server(&[("x-upstream", "by_client"), ("x-path", "/who")])).collect();
    assert_eq!(clients.len(), 1, "ip_hash: every call to one server");
    server(&[("x-upstream", "by_port"), ("x-path", "/who")]);
    assert!(!nginx.error_log().contains("signal"), "{}", nginx.error_log());
}

#[test]
fn host_names_are_resolved_by_nginxs_resolver() {
    let (dns, port) = (DnsServer::start(Ipv4Addr::LOCALHOST), free_port());
    let resolving = gateway("", &format!("resolver 127.0.0.1:{} ipv6=off; {}", dns.port, services(&[port])));
    let target = format!("auth.internal.test:{port}");
    let response = call(&resolving, &[("x-upstream", &target), ("x-path", "/who")]);
    assert_eq!(response.header("x-call-status"), Some("200"), "{response:?} {}", resolving.error_log());
    assert_eq!(who(&response).0, port.to_string());
    assert!(dns.questions() >= 1, "the name was asked of the resolver");

    let unknown = gateway("", &format!("resolver 127.0.0.1:{} ipv6=off; resolver_timeout 1s;", free_port_udp()));
    let response = call(&unknown, &[("x-upstream", "nowhere.test:80")]);
    assert_eq!(response.status, 502, "a name that cannot be resolved fails the call: {}", unknown.error_log());

    let without = gateway("", "");
    let response = call(&without, &[("x-upstream", &target)]);
    assert_eq!(response.header("x-call-error"), Some("BadArgument"));
    assert!(without.error_log().contains("no resolver defined to resolve \"auth.internal.test\""));
}

/// A UDP port with nothing behind it.
fn free_port_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An nginx calling a TLS server block (certificate for `callout.test`, from the test's CA)
/// through upstream block `secure`, with `wasm` in the `wasm {}` block.
fn tls_gateway(wasm: &str) -> Nginx {
    let dir = scratch_dir();
    let certs = TestCertificates::make(&dir, &["callout.test"]);
    let port = free_port();
    gateway(
        &wasm.replace("CA", &certs.ca.display().to_string()),
        &format!(
            "upstream secure {{ server 127.0.0.1:{port}; keepalive 2; }}
             server {{
                 listen 127.0.0.1:{port} ssl;
                 ssl_certificate {};
                 ssl_certificate_key {};
                 location /who {{ return 200 'tls $ssl_server_name $connection'; }}
             }}",
            certs.cert.display(),
            certs.key.display()
        ),
    )
}

fn tls_call(nginx: &Nginx, authority: &str) -> Response {
    call(nginx, &[("x-upstream", "secure"), ("x-scheme", "https"), ("x-path", "/who"), ("x-authority", authority)])
}

#[test]
fn https_calls_verify_the_server_against_the_configured_ca() {
    let nginx = tls_gateway("tls_trusted_certificate CA;");
    let first = tls_call(&nginx, "callout.test");
    assert_eq!(first.header("x-call-status"), Some("200"), "{}", nginx.error_log());
    assert!(first.text().starts_with("tls callout.test "), "SNI is the authority's host: {}", first.text());
    let second = tls_call(&nginx, "callout.test");
    assert_eq!(second.text(), first.text(), "the TLS connection is kept for the next call");

    let wrong = tls_call(&nginx, "other.test");
    assert_eq!(wrong.status, 502);
    assert!(nginx.error_log().contains("does not match \"other.test\""), "{}", nginx.error_log());
}

#[test]
fn https_calls_refuse_an_untrusted_server_unless_verification_is_off() {
    let untrusted = tls_gateway("");
    assert_eq!(tls_call(&untrusted, "callout.test").status, 502);
    assert!(untrusted.error_log().contains("certificate verify error"), "{}", untrusted.error_log());

    let unverified = tls_gateway("tls_verify off;");
    assert_eq!(tls_call(&unverified, "callout.test").header("x-call-status"), Some("200"));
}

/// The script filter's steps for a gRPC call to `upstream`, answered with what came back.
fn grpc_call(verb: &str, upstream: &str, messages: &str) -> String {
    let method = if verb == "grpc-call" { "Unary" } else { "Stream" };
    format!(
        "proxy_wasm script 'request_headers {verb} {upstream} inwasm.test.Echo {method} {messages}
         request_headers pause
         grpc_done respond-grpc-log';"
    )
}

/// An nginx whose locations make the gRPC calls of `calls` (location, verb, upstream,
/// messages), trusting `certs`' CA, with `http` in the `http {}` block.
fn grpc_gateway(certs: &TestCertificates, calls: &[(&str, &str, &str, &str)], http: &str) -> Nginx {
    let locations: String = calls
        .iter()
        .map(|(location, verb, upstream, messages)| {
            format!("location {location} {{ {} }}\n", grpc_call(verb, upstream, messages))
        })
        .collect();
    let wasm =
        format!("wasm {{ module script {}; tls_trusted_certificate {}; }}", filter("script"), certs.ca.display());
    Nginx::start_with(1, &wasm, &locations, http)
}

#[test]
fn grpc_calls_to_grpcs_names_go_over_tls_and_negotiate_http2() {
    let grpc = GrpcUpstream::start();
    let dir = scratch_dir();
    let certs = TestCertificates::make(&dir, &["grpc.test", "http1.test"]);
    let (port, http1_port) = (free_port(), free_port());
    let tls_server = |port: u16, http2: &str| {
        format!(
            "server {{
                 listen 127.0.0.1:{port} ssl {http2};
                 ssl_certificate {};
                 ssl_certificate_key {};
                 location / {{ grpc_pass grpc://127.0.0.1:{}; }}
             }}",
            certs.cert.display(),
            certs.key.display(),
            grpc.port
        )
    };
    let address = format!("grpcs://127.0.0.1:{port}");
    let nginx = grpc_gateway(
        &certs,
        &[
            ("/unary", "grpc-call", "grpcs://grpc.test", "hello"),
            ("/stream", "grpc-stream", "grpcs://grpc.test", "a,b"),
            ("/cleartext", "grpc-call", "grpc://grpc.test", "hello"),
            ("/address", "grpc-call", &address, "hello"),
            ("/http1", "grpc-call", "grpcs://http1.test", "hello"),
        ],
        &format!(
            "upstream grpc.test {{ server 127.0.0.1:{port}; }}
             upstream http1.test {{ server 127.0.0.1:{http1_port}; }}
             {} {}",
            tls_server(port, "http2"),
            tls_server(http1_port, "")
        ),
    );
    assert_eq!(nginx.get("/unary").text(), "call answered echo:hello", "{}", nginx.error_log());
    let stream = "message echo:a\nmessage echo:b\ntrailing grpc-status=0\nclosed 0 via_upstream";
    assert!(nginx.get("/stream").text().ends_with(stream), "{}", nginx.error_log());
    let failed = |path: &str, why: &str| {
        let text = nginx.get(path).text();
        assert!(text.starts_with("call failed 14"), "{path}: {why}: {text}");
    };
    failed("/cleartext", "cleartext HTTP/2 to a TLS server");
    failed("/address", "an address is not the certificate's name");
    failed("/http1", "a TLS server without HTTP/2");
    let log = nginx.error_log();
    assert!(log.contains("does not match \"127.0.0.1\""), "{log}");
    // nginx refuses a handshake that offers no protocol it serves (other servers may accept
    // it without choosing one: then the call says h2 was not agreed).
    assert!(log.contains("TLS handshake failed, gRPC call to \"http1.test\""), "{log}");
}

#[test]
fn grpc_calls_reuse_an_upstream_blocks_keepalive_connections() {
    let grpc = GrpcUpstream::start();
    let dir = scratch_dir();
    let certs = TestCertificates::make(&dir, &["grpc.test"]);
    let (front, tls_front) = (free_port(), free_port());
    let log = dir.join("front.log");
    let nginx = grpc_gateway(
        &certs,
        &[
            ("/kept", "grpc-call", "kept", "hello"),
            ("/stream", "grpc-stream", "kept", "a,b"),
            ("/unkept", "grpc-call", "unkept", "hello"),
            ("/tls", "grpc-call", "grpcs://grpc.test", "hello"),
        ],
        &format!(
            "log_format connection '$server_port $connection';
             upstream kept {{ server 127.0.0.1:{front}; keepalive 2; }}
             upstream unkept {{ server 127.0.0.1:{front}; }}
             upstream grpc.test {{ server 127.0.0.1:{tls_front}; keepalive 2; }}
             server {{
                 listen 127.0.0.1:{front} http2;
                 listen 127.0.0.1:{tls_front} ssl http2;
                 ssl_certificate {};
                 ssl_certificate_key {};
                 access_log {} connection;
                 location / {{ grpc_pass grpc://127.0.0.1:{}; }}
             }}",
            certs.cert.display(),
            certs.key.display(),
            log.display(),
            grpc.port
        ),
    );
    // The connections the front server saw for the calls of `path` (five of them).
    let connections = |path: &str, port: u16| {
        let _ = std::fs::write(&log, "");
        for _ in 0..5 {
            let text = nginx.get(path).text();
            assert!(text.ends_with("closed 0 via_upstream") || text == "call answered echo:hello", "{path}: {text}");
        }
        let seen = std::fs::read_to_string(&log).unwrap();
        let of_port: BTreeSet<_> = seen.lines().filter(|l| l.starts_with(&format!("{port} "))).collect();
        of_port.len()
    };
    assert_eq!(connections("/kept", front), 1, "five calls over one kept connection: {}", nginx.error_log());
    assert_eq!(connections("/stream", front), 1, "streams reuse it too");
    assert_eq!(connections("/unkept", front), 5, "without keepalive, a connection per call");
    assert_eq!(connections("/tls", tls_front), 1, "and over TLS");
}

#[test]
fn a_call_a_filter_tries_to_smuggle_into_is_refused_before_anything_is_sent() {
    let upstream = SilentUpstream::start();
    let nginx = gateway("", &format!("upstream watched {{ server 127.0.0.1:{}; }}", upstream.port));
    for part in ["method", "path", "authority", "name", "value"] {
        let response = call(&nginx, &[("x-upstream", "watched"), ("x-inject", part)]);
        assert_eq!(response.header("x-call-error"), Some("BadArgument"), "{part}: {}", nginx.error_log());
    }
    assert_eq!(upstream.accepted(), 0, "no connection was made");
    assert!(nginx.error_log().contains("http call refused: invalid"), "{}", nginx.error_log());
}

#[test]
fn a_large_chunked_answer_arrives_whole_with_its_trailers() {
    let size = 3_000_000;
    let upstream = ChunkedUpstream::start(size);
    let nginx = gateway("", &format!("upstream chunked {{ server 127.0.0.1:{}; }}", upstream.port));
    let response = call(&nginx, &[("x-upstream", "chunked")]);
    assert_eq!(response.header("x-call-body-size"), Some(size.to_string().as_str()), "{}", nginx.error_log());
    assert_eq!(response.header("x-call-trailers"), Some("1"));
    assert!(response.body == ChunkedUpstream::body(size), "the body arrives as sent");

    let too_large = ChunkedUpstream::start(5 << 20);
    let nginx = gateway("", &format!("upstream chunked {{ server 127.0.0.1:{}; }}", too_large.port));
    assert_eq!(call(&nginx, &[("x-upstream", "chunked")]).status, 502, "past 4 MiB the call fails");
}

#[test]
fn a_root_contexts_ticks_make_calls_through_an_upstream_block() {
    let port = free_port();
    let nginx = Nginx::start_with(
        1,
        &format!("wasm {{ module callout {}; }}", filter("callout")),
        "location / { proxy_wasm callout 'tick ticked'; }",
        &format!("upstream ticked {{ server 127.0.0.1:{port}; keepalive 1; }} {}", tick_service(port)),
    );
    assert!(nginx.wait_log("tick call status 200", 3) >= 3, "{}", nginx.error_log());
}

fn tick_service(port: u16) -> String {
    format!("server {{ listen 127.0.0.1:{port}; location /tick {{ return 200 ok; }} }}")
}
