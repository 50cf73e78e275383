//! The `inwasm` command as a filter author runs it, on the SDK-built filters in build/filters:
//! its vetting against nginx's, a cache nginx then starts from, and offline runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use inwasm_testkit::{nginx_test, scratch_dir};

fn filter(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../build/filters/{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make filters` first", path.display());
    path.display().to_string()
}

/// Runs `inwasm ARGS`: its exit status, stdout and stderr.
fn inwasm(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_inwasm")).args(args).output().expect("inwasm runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// Writes `text` to a new file under `dir`.
fn file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn check_vets_as_nginx_does_and_says_why_with_the_same_words() {
    let headers = filter("example_headers");
    let (code, out, _) = inwasm(&["check", &headers]);
    assert_eq!((code, out.trim_end()), (0, format!("{headers}: ok, proxy-wasm ABI 0.2.1 (vetted)").as_str()));

    let dir = scratch_dir();
    let text = file(&dir, "notes.wasm", "not a module");
    let (code, out, _) = inwasm(&["check", "--json", &text]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(code, 1);
    assert_eq!(report["ok"], false);
    let reason = "not a WebAssembly module (no \\0asm magic and not text format)";
    assert_eq!(report["error"], format!("wasm module \"{text}\": {reason}"));

    let no_abi = file(&dir, "plain.wat", "(module (memory (export \"memory\") 1))");
    let (code, _, err) = inwasm(&["check", &no_abi]);
    assert_eq!(code, 1);
    let (ok, nginx) = nginx_test(&format!("wasm {{ module plain {no_abi}; }}"), "");
    assert!(!ok);
    let reason = "not a proxy-wasm filter: no proxy_abi_version_0_1_0, _0_2_0 or _0_2_1 export";
    assert!(err.contains(reason) && nginx.contains(reason), "inwasm: {err}\nnginx: {nginx}");
}

#[test]
fn check_with_a_configuration_starts_the_filter() {
    let schema = filter("example_json_schema");
    let (code, _, err) = inwasm(&["check", &schema, "--config", r#"{"schema": {"type": 12}}"#]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad configuration: invalid schema"), "{err}");
    assert!(err.contains("rejected its configuration (proxy_on_configure returned false)"), "{err}");
    let (code, out, _) = inwasm(&["check", &filter("example_headers"), "--config", "response set x-a 1"]);
    assert_eq!(code, 0);
    assert!(out.ends_with("(started)\n"), "{out}");
}

#[test]
fn compile_fills_the_cache_nginx_starts_from() {
    let dir = scratch_dir();
    let cache = dir.join("cache").display().to_string();
    let headers = filter("example_headers");
    let (code, out, err) = inwasm(&["compile", &headers, "--cache-dir", &cache]);
    assert_eq!((code, out), (0, format!("{headers}: compiled into {cache}\n")), "{err}");
    let (_, again, _) = inwasm(&["compile", &headers, "--cache-dir", &cache]);
    assert_eq!(again, format!("{headers}: already compiled in {cache}\n"));
    let (ok, nginx) = nginx_test(&format!("wasm {{ cache_dir {cache}; module headers {headers}; }}"), "");
    assert!(ok, "{nginx}");
    assert!(!nginx.contains("compiling"), "nginx compiled again: {nginx}");
}

#[test]
fn run_shows_each_phase_as_the_filter_leaves_it() {
    let dir = scratch_dir();
    let request = file(&dir, "get.http", "GET /hello HTTP/1.1\nHost: shop.test\nX-Internal: secret\n\n");
    let response = file(&dir, "ok.http", "HTTP/1.1 200 OK\nContent-Type: text/plain\n\nhello\n");
    let config = "request set x-hello world\nrequest remove x-internal\nresponse add x-powered-by inwasm";
    let args = ["run", &filter("example_headers"), "--request", &request, "--response", &response, "--config", config];
    let (code, out, err) = inwasm(&args);
    assert_eq!(code, 0, "{out}{err}");
    let request_side = out.split("== on_request_headers: Continue\n").nth(1).unwrap();
    let request_side = request_side.split("== ").next().unwrap();
    assert!(request_side.contains("x-hello: world\n") && !request_side.contains("x-internal"), "{out}");
    let response_side = out.split("== on_response_headers: Continue\n").nth(1).unwrap();
    assert!(response_side.starts_with(":status: 200\ncontent-type: text/plain\nx-powered-by: inwasm\n"), "{out}");
    assert!(out.contains("== on_response_body: Continue\n\nhello\n"), "{out}");
    assert!(out.contains("\n== on_log, on_done, on_delete\n"), "{out}");
}

#[test]
fn run_answers_calls_from_files_and_fails_those_without_an_answer() {
    let dir = scratch_dir();
    let request = file(&dir, "get.http", "GET / HTTP/1.1\nHost: a.test\n\n");
    let answer = file(&dir, "answer.http", "HTTP/1.1 201 Created\nContent-Length: 4\n\nyes!");
    let callout = filter("filter_callout");
    let (code, out, _) =
        inwasm(&["run", &callout, "--request", &request, "--config", "upstream auth", "--call-response", &answer]);
    assert_eq!(code, 0, "{out}");
    let call = out.split("== on_request_headers: Pause\n").nth(1).unwrap();
    let token = call.strip_prefix(":authority: a.test\n:path: /\n:method: GET\n:scheme: http\n== http call ").unwrap();
    let token = token.split(' ').next().unwrap();
    assert!(call.contains(&format!("{token} to \"auth\" (timeout 5000 ms)\n:method: GET\n")), "{out}");
    assert!(out.contains(&format!("== http call {token} answered from {answer}\n")), "{out}");
    assert!(out.contains("== local response 200\nx-call-status: 201\nx-call-body-size: 4\n"), "{out}");
    assert!(!out.contains("on_response_headers"), "{out}");

    let (code, out, _) = inwasm(&["run", &callout, "--request", &request, "--config", "upstream auth"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("failed: no --call-response left for it\n== local response 502\nx-call-failed: 1\n"), "{out}");
}

#[test]
fn run_reports_a_failure_with_its_backtrace_and_the_budget_it_ran_past() {
    let dir = scratch_dir();
    let request = file(&dir, "get.http", "GET / HTTP/1.1\nHost: a.test\n\n");
    let script = filter("filter_script");
    let (code, out, _) = inwasm(&["run", &script, "--request", &request, "--config", "request_headers trap"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("== the filter failed\nfilter \"filter_script\" trapped in proxy_on_request_headers"),
        "{out}"
    );
    assert!(out.contains("script: trap in request_headers"), "{out}");

    let spin = ["run", &script, "--request", &request, "--config", "request_headers spin-ms 60000", "--timeout", "50"];
    let (code, out, _) = inwasm(&spin);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("exceeded its deadline of 50 ms in proxy_on_request_headers"), "{out}");

    let budget = ["--timeout", "5000", "--request-timeout", "200"];
    let (code, out, _) = inwasm(&[&spin[..6], &budget].concat());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("exceeded its request budget of 200 ms (all its callbacks for one request)"), "{out}");
}

#[test]
fn usage_errors_say_what_is_wrong_and_help_says_the_rest() {
    for command in ["check", "compile", "run"] {
        let (code, out, _) = inwasm(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(out.starts_with(&format!("usage: inwasm {command} ")), "{out}");
        assert_eq!(inwasm(&["help", command]).1, out);
    }
    let (code, out, _) = inwasm(&[]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(inwasm(&["frobnicate"]).0, 2);
    let (code, _, err) = inwasm(&["compile", &filter("example_headers")]);
    assert_eq!((code, err.as_str()), (2, "inwasm: compile needs --cache-dir DIR (see --help)\n"));
    let (code, _, err) = inwasm(&["run", &filter("example_headers"), "--request", "/nonexistent.http"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("inwasm: cannot read /nonexistent.http: "), "{err}");
}
