//! Hostile guests: every host function the engine provides, called with pointers and lengths
//! that are out of bounds, near 4 GiB, negative or misaligned, from a stream context, from a
//! root context, and after the stream ended. Each call must come back with a status or end
//! the callback with a trap, never touch host memory or crash, and the VM must serve the
//! next request.

mod common;

use common::*;
use inwasm_host::*;
use wasmtime::ValType;

/// Argument patterns: each fills every i32 parameter (and i64 ones, sign-extended).
const PATTERNS: [(&str, [i64; 3]); 6] = [
    ("near 4 GiB", [-16, -16, -16]),
    ("all ones (4 GiB lengths)", [-1, -1, -1]),
    ("past the end of memory", [65_530, 65_530, 65_530]),
    ("in bounds, huge lengths", [1024, -1, 1024]),
    ("misaligned", [1027, 7, 2049]),
    ("zero", [0, 0, 0]),
];

fn wat_type(ty: &ValType) -> &'static str {
    match ty {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        ValType::F32 => "f32",
        ValType::F64 => "f64",
        _ => panic!("host function with an unexpected parameter type {ty:?}"),
    }
}

fn constant(ty: &ValType, value: i64) -> String {
    match ty {
        ValType::I32 => format!("(i32.const {})", value as i32),
        ValType::I64 => format!("(i64.const {value})"),
        ValType::F32 => format!("(f32.const {value})"),
        _ => format!("(f64.const {value})"),
    }
}

/// A filter that calls `function` with `args` from `callback` (a stream's request headers,
/// the root's configure, or a stream's delete, after it ended).
fn caller(function: &HostFunction, args: [i64; 3], callback: &str) -> String {
    let params: Vec<&str> = function.params.iter().map(wat_type).collect();
    let results: Vec<&str> = function.results.iter().map(wat_type).collect();
    let call_args: String = function
        .params
        .iter()
        .enumerate()
        .map(|(i, ty)| constant(ty, args[i % args.len()]))
        .collect::<Vec<_>>()
        .join(" ");
    let drops = "(drop)".repeat(results.len());
    let (signature, tail) = match callback {
        "proxy_on_request_headers" => ("(param i32 i32 i32) (result i32)", "(i32.const 0)"),
        "proxy_on_configure" => ("(param i32 i32) (result i32)", "(i32.const 1)"),
        _ => ("(param i32)", ""),
    };
    format!(
        r#"(module
  (import "{module}" "{name}" (func $f (param {params}) (result {results})))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "{callback}") {signature} (call $f {call_args}) {drops} {tail}))"#,
        module = function.module,
        name = function.name,
        params = params.join(" "),
        results = results.join(" "),
    )
}

/// Runs `function` with `args` in each kind of context; returns what went wrong, if anything.
fn run_hostile(function: &HostFunction, args: [i64; 3]) -> Vec<String> {
    let mut problems = Vec::new();
    for callback in ["proxy_on_request_headers", "proxy_on_configure", "proxy_on_delete"] {
        let text = caller(function, args, callback);
        let module = Module::new(engine(), &function.name, text.as_bytes(), None)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", function.name));
        let started = Harness::try_new(module, "", VmConfig::default());
        let Ok(mut h) = started else {
            // A trap or a refusal in on_configure is a clean outcome.
            continue;
        };
        let (stream, _exchange) = h.stream(&get_request_headers());
        let _ = h.vm.on_request_headers(stream, true);
        let _ = h.vm.finish_stream(stream);
        // Whatever happened, the VM serves the next request (on a rebuilt instance if needed).
        let (next, _exchange) = h.stream(&get_request_headers());
        if callback != "proxy_on_request_headers" {
            if let Err(error) = h.vm.on_request_headers(next, true) {
                problems.push(format!("{} from {callback}: the next request failed: {error}", function.name));
            }
        }
    }
    problems
}

#[test]
fn every_host_function_survives_hostile_arguments_in_every_context() {
    let functions = engine().host_functions();
    assert!(functions.len() > 80, "the whole ABI and WASI: {}", functions.len());
    let mut problems = Vec::new();
    for function in functions.iter().filter(|f| f.name != "proc_exit") {
        for (_, args) in PATTERNS {
            problems.extend(run_hostile(function, args));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn proc_exit_ends_only_the_call() {
    let exit = engine().host_functions().into_iter().find(|f| f.name == "proc_exit").expect("proc_exit");
    assert!(run_hostile(&exit, [3, 3, 3]).is_empty());
}
