//! examples/assemblyscript: a filter built with AssemblyScript's @solo-io/proxy-runtime,
//! run through its nginx.conf as is.

mod support;

use support::*;

#[test]
fn assemblyscript_filter_adds_response_headers_to_proxied_responses() {
    let example = Example::start("assemblyscript", 8080);
    let response = example.request(8080, "GET", "/some/page", &[], b"");
    assert_eq!(response.status, 200, "{}", example.nginx.error_log());
    assert_eq!(response.header("x-powered-by"), Some("inwasm-assemblyscript"));
    assert_eq!(response.header("x-greeting"), Some("Hello from AssemblyScript"));
    assert_eq!(response.text(), "upstream answered /some/page\n");
    let log = example.nginx.error_log();
    assert!(log.contains("[wasm] filter \"greeter\": greeting is \"Hello from AssemblyScript\""), "{log}");
}

#[test]
fn assemblyscript_filter_answers_get_hello_itself() {
    let example = Example::start("assemblyscript", 8080);
    let response = example.request(8080, "GET", "/hello?lang=as", &[], b"");
    assert_eq!(response.status, 200, "{}", example.nginx.error_log());
    assert_eq!(response.text(), "Hello from AssemblyScript, /hello?lang=as!\n");
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(response.header("x-greeting"), Some("Hello from AssemblyScript"), "local responses pass the filter too");
    let posted = example.request(8080, "POST", "/hello", &[], b"hi");
    assert_eq!(posted.text(), "upstream answered /hello\n", "only GET is answered by the filter");
}

#[test]
fn assemblyscript_filter_refuses_an_empty_greeting() {
    let module = root().join("build/filters/example_assemblyscript.wasm");
    let (ok, output) = nginx_test(
        &format!("wasm {{ module greeter {}; }}", module.display()),
        "server { location / { proxy_wasm greeter '  ' root_id=greeter; } }",
    );
    assert!(!ok, "{output}");
    assert!(output.contains("bad configuration: the plugin configuration must be a greeting"), "{output}");
    assert!(output.contains("rejected its configuration"), "{output}");
}

#[test]
fn the_root_id_a_filter_registers_under_must_be_named() {
    let module = root().join("build/filters/example_assemblyscript.wasm");
    let (ok, output) = nginx_test(
        &format!("wasm {{ module greeter {}; }}", module.display()),
        "server { location / { proxy_wasm greeter 'Hello'; } }",
    );
    assert!(!ok, "{output}");
    assert!(output.contains("Missing root context factory for root id"), "{output}");
    let (ok, output) = nginx_test(
        &format!("wasm {{ module greeter {}; }}", module.display()),
        "server { location / { proxy_wasm greeter 'Hello' other=1; } }",
    );
    assert!(!ok, "{output}");
    assert!(output.contains("the third argument is root_id=ID"), "{output}");
}
