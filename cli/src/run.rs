//! `inwasm run`: a filter's whole lifecycle offline, on the host's in-memory proxy, under the
//! same deadlines and memory limit as in nginx and Envoy. What the filter did is printed
//! phase by phase: each callback's answer, the headers and bodies as they leave it, a local
//! response, the http calls it made (answered from files), its log lines, its metrics, and a
//! failure with its wasm backtrace.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use inwasm_host::testing::{Exchange, MemoryEmbedding, Node};
use inwasm_host::{
    default_request_budget, Action, FilterError, HttpCallResponse, Module, Pairs, PluginId, StreamLimits, StreamType,
    Vm, DEFAULT_TIMEOUT,
};

use crate::args::{inline_or_file, Arg, Parser, Usage};
use crate::defaults::{engine, filter_configs};
use crate::message::{self, Message};

pub const RUN_USAGE: &str = "\
usage: inwasm run FILTER.wasm --request REQUEST.http [--response RESPONSE.http] [OPTIONS]

Runs the filter's whole lifecycle on an in-memory proxy: its start-up (on_vm_start,
on_configure), then a stream for the request: on_request_headers, on_request_body (when the
request has a body), on_response_headers, on_response_body (when the response has one), and
on_log, on_done, on_delete. It prints each callback's answer, the headers and bodies as they
leave it, a local response if the filter sends one (the response callbacks do not run then),
the http calls it makes, its log lines and its metrics, and a failure with its backtrace.
Callbacks run under the budgets and memory limit nginx gives them by default.

REQUEST.http and RESPONSE.http are HTTP/1.1 text: a request or status line, headers, a blank
line, then the body (Content-Length bytes, else the rest of the file). Without --response the
upstream answers 200 with no body.

options:
  --request FILE        the request
  --response FILE       the upstream's response
  --config TEXT         the filter's configuration (@FILE: read it from FILE)
  --vm-config TEXT      the VM's configuration (@FILE: read it from FILE)
  --call-response FILE  the answer to the next http call, as an HTTP/1.1 response (repeat it
                        for each call, in the order they are made); a call with no answer
                        left fails, as an unreachable upstream does
  --timeout MS          each callback's budget (default 100, nginx's proxy_wasm_timeout)
  --request-timeout MS  the budget of all the request's callbacks (default five callbacks'
                        worth, nginx's proxy_wasm_request_timeout)

Exit status: 0 when the lifecycle ran, 1 when the filter was refused or failed, 2 for a
usage error or a file that cannot be read.
";

/// What `inwasm run` was asked.
struct Options {
    filter: String,
    request: Message,
    response: Message,
    config: Vec<u8>,
    vm_config: Vec<u8>,
    answers: VecDeque<(String, HttpCallResponse)>,
    timeout: Duration,
    /// The stream's limits: its request budget.
    limits: StreamLimits,
}

/// `inwasm run`.
pub fn run(parser: Parser) -> Result<bool, Usage> {
    let Some(options) = options(parser)? else { return Ok(true) };
    let engine = engine()?;
    let Options { filter, request, response, config, vm_config, answers, timeout, limits } = options;
    let module = match Module::from_file(&engine, Path::new(&filter), None) {
        Ok(module) => module,
        Err(error) => {
            eprintln!("inwasm: {error}");
            return Ok(false);
        }
    };
    let node = Node::default();
    let (vm_config, plugin) = filter_configs(&filter, config, vm_config, Some(timeout));
    let mut session =
        Session { node: node.clone(), exchange: Exchange::default(), logs_shown: 0, calls_shown: 0, calls_answered: 0 };
    let outcome = Vm::new(module, vm_config).and_then(|mut vm| {
        let plugin = vm.add_plugin(plugin, MemoryEmbedding::root(&node))?;
        println!("== on_vm_start, on_configure: started");
        session.show_news();
        session.lifecycle(&mut vm, plugin, limits, request, response, answers)
    });
    session.show_news();
    session.show_metrics();
    match outcome {
        Ok(()) => Ok(true),
        Err(error) => {
            println!("== the filter failed\n{error}");
            Ok(false)
        }
    }
}

/// Reads the command line and the files it names; `None` after `--help`.
fn options(mut parser: Parser) -> Result<Option<Options>, Usage> {
    let (mut filter, mut request, mut response) = (None, None, None);
    let (mut timeout, mut request_timeout) = (DEFAULT_TIMEOUT, None);
    let (mut config, mut vm_config, mut answers) = (Vec::new(), Vec::new(), VecDeque::new());
    while let Some(arg) = parser.next()? {
        match arg {
            Arg::Option(name) => match name.as_str() {
                "help" => {
                    print!("{RUN_USAGE}");
                    return Ok(None);
                }
                "request" => request = Some(read(&parser.value(&name)?, message::request)?),
                "response" => response = Some(read(&parser.value(&name)?, message::response)?),
                "call-response" => {
                    let path = parser.value(&name)?;
                    let answer = read(&path, message::response)?;
                    answers.push_back((
                        path,
                        HttpCallResponse { headers: answer.headers, body: answer.body, trailers: Pairs::new() },
                    ));
                }
                "config" => config = inline_or_file(&parser.value(&name)?)?,
                "vm-config" => vm_config = inline_or_file(&parser.value(&name)?)?,
                "timeout" => timeout = millis(&name, &parser.value(&name)?)?,
                "request-timeout" => request_timeout = Some(millis(&name, &parser.value(&name)?)?),
                _ => return Err(Arg::Option(name).unexpected()),
            },
            Arg::Positional(path) if filter.is_none() => filter = Some(path),
            other => return Err(other.unexpected()),
        }
    }
    let filter = filter.ok_or_else(|| Usage::new("run needs a FILTER.wasm (see --help)"))?;
    let request = request.ok_or_else(|| Usage::new("run needs --request REQUEST.http (see --help)"))?;
    let response =
        response.unwrap_or_else(|| Message { headers: [(":status", "200")].into_iter().collect(), body: Vec::new() });
    let limits = StreamLimits {
        timeout: None,
        request_budget: Some(request_timeout.unwrap_or(default_request_budget(timeout))),
    };
    Ok(Some(Options { filter, request, response, config, vm_config, answers, timeout, limits }))
}

/// A positive number of milliseconds, the value of option `name`.
fn millis(name: &str, value: &str) -> Result<Duration, Usage> {
    let millis = value.parse().ok().filter(|&ms| ms > 0);
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| Usage::new(format!("--{name} {value}: not a number of milliseconds")))
}

/// Reads and parses a message file; errors name it.
fn read(path: &str, parse: fn(&[u8]) -> Result<Message, String>) -> Result<Message, Usage> {
    let text = std::fs::read(path).map_err(|e| Usage::new(format!("cannot read {path}: {e}")))?;
    parse(&text).map_err(|e| Usage::new(format!("{path}: {e}")))
}

/// The stream's callbacks, in order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
}

impl Step {
    const ALL: [Step; 4] = [Step::RequestHeaders, Step::RequestBody, Step::ResponseHeaders, Step::ResponseBody];

    fn callback(self) -> &'static str {
        match self {
            Step::RequestHeaders => "on_request_headers",
            Step::RequestBody => "on_request_body",
            Step::ResponseHeaders => "on_response_headers",
            Step::ResponseBody => "on_response_body",
        }
    }

    fn side(self) -> StreamType {
        match self {
            Step::RequestHeaders | Step::RequestBody => StreamType::Request,
            Step::ResponseHeaders | Step::ResponseBody => StreamType::Response,
        }
    }
}

/// The in-memory proxy around one run, and how much of what it recorded was printed.
struct Session {
    node: Node,
    exchange: Exchange,
    logs_shown: usize,
    calls_shown: usize,
    calls_answered: usize,
}

impl Session {
    /// The stream: the request side, the response side (unless the filter answered), its end.
    fn lifecycle(
        &mut self,
        vm: &mut Vm,
        plugin: PluginId,
        limits: StreamLimits,
        request: Message,
        response: Message,
        mut answers: VecDeque<(String, HttpCallResponse)>,
    ) -> Result<(), FilterError> {
        let (request_body, response_body) = (request.body.len(), response.body.len());
        {
            let mut exchange = self.exchange.borrow_mut();
            exchange.request_headers = request.headers;
            exchange.request_body = request.body;
        }
        let stream = vm.new_stream(plugin, MemoryEmbedding::stream(&self.node, &self.exchange), limits)?;
        let mut response = Some(response);
        for step in Step::ALL {
            let action = match step {
                Step::RequestHeaders => vm.on_request_headers(stream, request_body == 0)?,
                Step::RequestBody if request_body == 0 => continue,
                Step::RequestBody => vm.on_request_body(stream, request_body, true)?,
                Step::ResponseHeaders => {
                    if let Some(response) = response.take() {
                        let mut exchange = self.exchange.borrow_mut();
                        exchange.response_headers = response.headers;
                        exchange.response_body = response.body;
                    }
                    vm.on_response_headers(stream, response_body == 0)?
                }
                Step::ResponseBody if response_body == 0 => continue,
                Step::ResponseBody => vm.on_response_body(stream, response_body, true)?,
            };
            self.show_step(step, action);
            if !self.goes_on(vm, plugin, action, step.side(), &mut answers)? {
                break;
            }
        }
        println!("== on_log, on_done, on_delete");
        let finished = vm.finish_stream(stream);
        self.show_news();
        finished
    }

    /// After a callback: whether the stream goes on. A paused stream gets its calls answered
    /// (in order) until the filter resumes it or answers.
    fn goes_on(
        &mut self,
        vm: &mut Vm,
        plugin: PluginId,
        action: Action,
        side: StreamType,
        answers: &mut VecDeque<(String, HttpCallResponse)>,
    ) -> Result<bool, FilterError> {
        if self.answered() {
            return Ok(false);
        }
        if action == Action::Continue {
            return Ok(true);
        }
        loop {
            let call = self.node.borrow().http_calls.get(self.calls_answered).map(|(token, _)| *token);
            let Some(token) = call else { break };
            self.calls_answered += 1;
            let answer = match answers.pop_front() {
                Some((path, response)) => {
                    println!("== http call {token} answered from {path}");
                    Ok(response)
                }
                None => {
                    println!("== http call {token} failed: no --call-response left for it");
                    Err("no answer given".to_string())
                }
            };
            vm.on_http_call_response(plugin, token, answer)?;
            self.show_news();
            if self.answered() {
                return Ok(false);
            }
            if std::mem::take(&mut self.exchange.borrow_mut().continued).contains(&side) {
                println!("== the filter resumed the stream");
                return Ok(true);
            }
        }
        println!("== the filter paused the stream and did not resume it");
        Ok(false)
    }

    /// Whether the filter sent a local response (printed once).
    fn answered(&mut self) -> bool {
        let Some(local) = self.exchange.borrow_mut().local_response.take() else { return false };
        println!("== local response {}", local.status);
        show_pairs(&local.headers);
        show_body(&local.body);
        true
    }

    /// Prints what a callback answered and left, then what it logged and called.
    fn show_step(&mut self, step: Step, action: Action) {
        println!("== {}: {action:?}", step.callback());
        {
            let exchange = self.exchange.borrow();
            match step {
                Step::RequestHeaders => show_pairs(&exchange.request_headers),
                Step::RequestBody => show_body(&exchange.request_body),
                Step::ResponseHeaders => show_pairs(&exchange.response_headers),
                Step::ResponseBody => show_body(&exchange.response_body),
            }
        }
        self.show_news();
    }

    /// Prints the log lines and http calls recorded since the last time.
    fn show_news(&mut self) {
        let node = self.node.borrow();
        for (level, line) in &node.logs[self.logs_shown..] {
            println!("log {}: {line}", format!("{level:?}").to_lowercase());
        }
        self.logs_shown = node.logs.len();
        for (token, call) in &node.http_calls[self.calls_shown..] {
            let timeout = call.timeout.map_or("none".into(), |t| format!("{} ms", t.as_millis()));
            println!("== http call {token} to \"{}\" (timeout {timeout})", call.upstream);
            show_pairs(&call.headers);
            show_body(&call.body);
        }
        self.calls_shown = node.http_calls.len();
    }

    fn show_metrics(&self) {
        let node = self.node.borrow();
        if node.metrics.is_empty() {
            return;
        }
        println!("== metrics");
        for metric in &node.metrics {
            let kind = metric.kind.map_or("metric".into(), |kind| format!("{kind:?}").to_lowercase());
            match metric.recorded.is_empty() {
                true => println!("{kind} {} = {}", metric.name, metric.value),
                false => println!("{kind} {} = {:?}", metric.name, metric.recorded),
            }
        }
    }
}

fn show_pairs(pairs: &Pairs) {
    for (name, value) in pairs {
        println!("{}: {}", String::from_utf8_lossy(name), String::from_utf8_lossy(value));
    }
}

fn show_body(body: &[u8]) {
    if body.is_empty() {
        return;
    }
    match std::str::from_utf8(body) {
        Ok(text) => println!("\n{}", text.trim_end_matches('\n')),
        Err(_) => println!("\n({} bytes, not UTF-8)", body.len()),
    }
}
