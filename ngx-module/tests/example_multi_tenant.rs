//! examples/multi-tenant: one module per tenant, chosen by Host; its nginx.conf as is (three
//! tenants: acme, globex and the untrusted sandbox), and a generated one with 200 tenants.
//! Requests name their tenant in an absolute URI (`GET http://acme.example/ HTTP/1.1`), whose
//! host nginx prefers to the Host header.

mod support;

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn at(port: u16, tenant: &str, method: &str, path: &str, body: &[u8]) -> Response {
    request(port, method, &format!("http://{tenant}.example{path}"), &[], body)
}

fn generate(args: &[&str]) -> String {
    let script = root().join("examples/multi-tenant/generate.py");
    let output = Command::new("python3").arg(&script).args(args).output().expect("python3 runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn multi_tenant_host_chooses_the_tenant_filter_and_its_configuration() {
    let example = Example::start("multi-tenant", 8080);
    let port = example.port(8080);
    for (tenant, plan) in [("acme", "gold"), ("globex", "silver"), ("sandbox", "free")] {
        let response = at(port, tenant, "GET", "/page", b"");
        assert_eq!(response.status, 200, "{}", example.nginx.error_log());
        assert_eq!((response.header("x-tenant"), response.header("x-tenant-plan")), (Some(tenant), Some(plan)));
        assert_eq!(response.text(), format!("upstream served /page for tenant [{tenant}]\n"));
    }
    let unknown = at(port, "nobody", "GET", "/", b"");
    assert_eq!((unknown.status, unknown.text().as_str()), (404, "unknown tenant nobody.example\n"));
    assert_eq!(unknown.header("x-tenant"), None);
}

#[test]
fn multi_tenant_shared_data_is_namespaced_per_tenant() {
    let example = Example::start("multi-tenant", 8080);
    let port = example.port(8080);
    assert_eq!(at(port, "acme", "PUT", "/kv/secret", b"acme's secret").status, 201);
    assert_eq!(at(port, "acme", "GET", "/kv/secret", b"").text(), "acme's secret");
    let other = at(port, "globex", "GET", "/kv/secret", b"");
    assert_eq!((other.status, other.text().as_str()), (404, "no such key\n"), "globex cannot see acme's key");
    assert_eq!(at(port, "globex", "PUT", "/kv/secret", b"globex's").status, 201);
    assert_eq!(at(port, "acme", "GET", "/kv/secret", b"").text(), "acme's secret");
    assert_eq!(at(port, "globex", "GET", "/kv/secret", b"").text(), "globex's");
    // Each tenant's `requests` counter is its own too.
    let count = |tenant| at(port, tenant, "GET", "/", b"").header("x-tenant-requests").unwrap().parse::<u64>().unwrap();
    assert_eq!((count("acme"), count("globex"), count("sandbox"), count("acme")), (4, 4, 1, 5));
}

#[test]
fn multi_tenant_limits_are_per_tenant() {
    let example = Example::start("multi-tenant", 8080);
    let port = example.port(8080);
    for (tenant, budget) in [("sandbox", 50), ("acme", 100)] {
        let started = Instant::now();
        assert_eq!(at(port, tenant, "GET", "/_misbehave/loop", b"").status, 503);
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(budget) && elapsed < Duration::from_secs(2), "{tenant}: {elapsed:?}");
        assert_eq!(at(port, tenant, "GET", "/_misbehave/hog", b"").status, 503);
    }
    let log = example.nginx.error_log();
    for line in [
        "filter \"sandbox\" exceeded its deadline of 50 ms in proxy_on_request_headers",
        "filter \"acme\" exceeded its deadline of 100 ms in proxy_on_request_headers",
        "filter \"sandbox\" exceeded its memory limit of 8388608 bytes",
        "filter \"acme\" exceeded its memory limit of 33554432 bytes",
    ] {
        assert!(log.contains(line), "missing {line:?} in {log}");
    }
}

#[test]
fn multi_tenant_failing_tenant_leaves_the_others_serving() {
    let example = Example::start("multi-tenant", 8080);
    let port = example.port(8080);
    let failing: Vec<_> = ["sandbox", "acme"]
        .into_iter()
        .map(|tenant| {
            std::thread::spawn(move || {
                let modes = ["panic", "loop", "hog"].iter().cycle().take(9);
                modes.filter(|mode| at(port, tenant, "GET", &format!("/_misbehave/{mode}"), b"").status == 503).count()
            })
        })
        .collect();
    let healthy: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                (0..30)
                    .filter(|_| {
                        let response = at(port, "globex", "GET", "/", b"");
                        response.status == 200 && response.header("x-tenant") == Some("globex")
                    })
                    .count()
            })
        })
        .collect();
    // A client thread that panics (e.g. a refused connection) fails the test with nginx's log.
    let joined =
        |t: std::thread::JoinHandle<usize>| t.join().unwrap_or_else(|_| panic!("{}", example.nginx.error_log()));
    assert_eq!(healthy.into_iter().map(joined).sum::<usize>(), 90, "{}", example.nginx.error_log());
    assert_eq!(failing.into_iter().map(joined).collect::<Vec<_>>(), [9, 9]);
    for tenant in ["acme", "sandbox"] {
        assert_eq!(at(port, tenant, "GET", "/", b"").status, 200, "{tenant} serves again");
    }
    assert!(!example.nginx.error_log().contains("filter \"globex\" "), "globex never failed");
}

#[test]
fn multi_tenant_refuses_a_bad_tenant_configuration() {
    let module = root().join("build/filters/example_multi_tenant.wasm");
    for (config, reason) in [
        ("plan=gold", "tenant=NAME is required"),
        ("tenant=acme colour=blue", "expected tenant=NAME or plan=PLAN, not \"colour=blue\""),
    ] {
        let (ok, output) = nginx_test(
            &format!("wasm {{ module acme {}; }}", module.display()),
            &format!("server {{ location / {{ proxy_wasm acme '{config}'; }} }}"),
        );
        assert!(!ok, "accepted {config}");
        assert!(output.contains(&format!("bad configuration: {reason}")), "{config}: expected {reason:?} in {output}");
    }
}

#[test]
fn multi_tenant_committed_config_is_the_generators_output() {
    let committed = std::fs::read_to_string(root().join("examples/multi-tenant/nginx.conf")).unwrap();
    let args = committed.lines().find_map(|l| l.strip_prefix("# Generated by examples/multi-tenant/generate.py "));
    let args: Vec<&str> = args.expect("a Generated by line").split_whitespace().collect();
    assert_eq!(generate(&args), committed);
}

#[test]
fn multi_tenant_two_hundred_tenants_start_and_serve() {
    let (text, ports) = nginx_config_for_test(&generate(&["--count", "200"]));
    let port = ports[&8080];
    // Every tenant's module is compiled at start, which takes longer than start_config waits
    // for its port; it is handed a port that answers at once, and this test waits for nginx.
    let placeholder = TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let nginx = Nginx::start_config(&text, &root(), placeholder.local_addr().unwrap().port());
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log = nginx.error_log();
        assert!(!log.contains("[emerg]") && started.elapsed() < Duration::from_secs(300), "{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("200 tenants: serving after {:?}", started.elapsed());
    for i in [1, 2, 3, 57, 99, 100, 123, 150, 199, 200] {
        let tenant = format!("t{i:03}");
        let response = at(port, &tenant, "GET", "/hello", b"");
        assert_eq!(response.status, 200, "{tenant}: {}", nginx.error_log());
        let plan = ["gold", "silver", "free"][i % 3];
        assert_eq!((response.header("x-tenant"), response.header("x-tenant-plan")), (Some(&*tenant), Some(plan)));
        assert_eq!(response.text(), format!("upstream served /hello for tenant [{tenant}]\n"));
    }
    assert_eq!(at(port, "t057", "PUT", "/kv/k", b"57").status, 201);
    assert_eq!(at(port, "t058", "GET", "/kv/k", b"").status, 404);
    assert_eq!(at(port, "t057", "GET", "/kv/k", b"").text(), "57");
    // t150 is untrusted (every tenth): 50 ms per callback, a fresh instance per request.
    assert_eq!(at(port, "t150", "GET", "/_misbehave/loop", b"").status, 503);
    assert!(nginx.error_log().contains("filter \"t150\" exceeded its deadline of 50 ms"), "{}", nginx.error_log());
    assert_eq!(at(port, "t150", "GET", "/", b"").status, 200);
    assert_eq!(at(port, "t151", "GET", "/", b"").status, 200);
}
