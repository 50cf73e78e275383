//! `inwasm`: a filter author's inner loop without a proxy. `check` vets a module as `nginx -t`
//! does, `compile` fills the compiled-code cache nginx and Envoy read, and `run` runs a
//! filter's whole lifecycle offline against a request (and a response) written as HTTP/1.1
//! text, under the same deadline and memory limit as in a proxy.
//!
//! Exit status: 0 when the filter passed (or ran), 1 when it did not (refused, failed), 2 for
//! a usage error or a file that cannot be read.

mod args;
mod defaults;
mod message;
mod run;
mod vetting;

use std::process::ExitCode;

use args::Parser;

const USAGE: &str = "\
usage: inwasm COMMAND [OPTIONS]

Vet, precompile and run proxy-wasm filters without a proxy.

commands:
  check FILTER.wasm     vet a module as `nginx -t` does
  compile FILTER.wasm   compile it into the compiled-code cache nginx and Envoy read
  run FILTER.wasm       run its lifecycle against a request written as HTTP/1.1 text
  help [COMMAND]        this text, or a command's

`inwasm COMMAND --help` tells more about each.
";

fn main() -> ExitCode {
    let mut parser = Parser::from_env();
    let outcome = match parser.command() {
        Ok(Some(command)) => match command.as_str() {
            "check" => vetting::check(parser),
            "compile" => vetting::compile(parser),
            "run" => run::run(parser),
            "help" | "--help" | "-h" => help(parser),
            other => Err(args::Usage::new(format!("unknown command \"{other}\"\n\n{USAGE}"))),
        },
        Ok(None) => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
        Err(usage) => Err(usage),
    };
    match outcome {
        Ok(passed) => ExitCode::from(!passed as u8),
        Err(usage) => {
            eprintln!("inwasm: {usage}");
            ExitCode::from(2)
        }
    }
}

/// `inwasm help [COMMAND]`.
fn help(mut parser: Parser) -> Result<bool, args::Usage> {
    let text = match parser.value_or_end()?.as_deref() {
        None => USAGE,
        Some("check") => vetting::CHECK_USAGE,
        Some("compile") => vetting::COMPILE_USAGE,
        Some("run") => run::RUN_USAGE,
        Some(other) => return Err(args::Usage::new(format!("unknown command \"{other}\""))),
    };
    print!("{text}");
    Ok(true)
}
