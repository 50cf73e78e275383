//! Does what its plugin configuration says, callback by callback: a test filter that can
//! play any filter's part (an SDK example, a hostile tenant) without a crate of its own.
//!
//! The configuration is a script, one step a line: `CALLBACK VERB ARGS...`. Arguments are
//! separated by spaces and percent-decoded (`%20` is a space). A callback runs its lines in
//! order; `pause` ends it with `Action::Pause`, else it continues. Callbacks:
//! `configure`, `tick` and `queue_ready` (the root context), `request_headers`,
//! `request_body`, `response_headers`, `response_body`, `log`, `call_response` (a stream's
//! http call answered; `call_failed` when it failed).
//!
//! Verbs:
//! - `get-header MAP NAME`, `set-header MAP NAME VALUE`, `add-header MAP NAME VALUE`,
//!   `remove-header MAP NAME`, `get-headers MAP` (MAP: `request`, `response`, `call`),
//!   `bulk-header request NAME SIZE` (adds NAME with SIZE bytes of `y`);
//!   reads are logged as `NAME=VALUE` (or `NAME absent`). `try-set-header MAP NAME VALUE`
//!   and `try-add-header ...` log the host's status (`status N`) where the SDK would panic.
//! - `property a.b.c` (logged as `a.b.c=VALUE`, `a.b.c absent`), `set-property a.b.c VALUE`.
//! - `get-body request|response` (logged as `request body=TEXT`), `set-body request|response TEXT`.
//! - `buffer`: pause unless this is the body's last piece (collect the whole body).
//! - `log TEXT`, `pause`, `resume` (the request, or the response once its headers ran),
//!   `respond STATUS [BODY]`, `trap`, `spin`, `hog` (allocates until it fails).
//! - `call UPSTREAM PATH [NAME=VALUE ...]`: an http call with those headers (`:method`
//!   `GET` and `:authority` UPSTREAM unless given; `timeout=MS` sets the timeout, 5 s).
//! - `grpc-call UPSTREAM SERVICE METHOD MESSAGE [timeout=MS] [NAME=VALUE ...]`: a unary
//!   gRPC call (NAME=VALUE: initial metadata); `grpc-stream UPSTREAM SERVICE METHOD M1,M2,...
//!   [NAME=VALUE ...]`: a stream that sends each message, then half-closes. UPSTREAM is a
//!   cluster, or `service:CLUSTER[:AUTHORITY]` for a serialized `GrpcService`. What comes
//!   back is noted line by line (`call answered ANSWER`, `call failed CODE MESSAGE`,
//!   `initial x-echo-meta=V`, `message M`, `trailing grpc-status=V`, `closed CODE MESSAGE`,
//!   `call refused: STATUS`); the end runs callback `grpc_done`, where `respond-grpc-log`
//!   answers 200 with the notes as the body.
//! - `tick MS` (in `configure`): the tick period.
//! - `postpone` (a stream): pause, and wait for `resume-postponed` (a root context), which
//!   resumes every postponed stream of the module (as the Go SDK's postpone_requests).
//! - `global-count`: adds one to a counter of the whole module (its globals are shared by
//!   every root context on its VM) and adds request header `x-global: root<ID>:<COUNT>`.
//! - `register-queue NAME` (a root context), `dequeue` (in `queue_ready`: one item, logged
//!   as `dequeued N bytes`, or `queue empty`).
//! - `count NAME`: adds one to counter NAME, defining it first if needed, and logs
//!   `NAME=VALUE`.
//! - `enqueue VM_ID NAME COUNT`: COUNT one-byte items into queue NAME of VM VM_ID.
//! - `zlib-round-trip TEXT`: TEXT through the host's `compress` and `uncompress` foreign
//!   functions, logged as `zlib HEADER round trip ok` (or the failing status).
//! - `stdout N`: writes N bytes of `x` to standard output.
//! - `spin-ms N`: keeps the CPU busy for N ms.
//! - Floods, each logging how many succeeded and the first failure's status (where an SDK
//!   would panic): `shared-fill PREFIX COUNT SIZE` (keys PREFIX0.. of SIZE bytes),
//!   `shared-get KEY` (logged as `shared KEY=SIZE bytes` or `shared KEY absent`),
//!   `queue-fill PREFIX COUNT` (registers queues), `enqueue-fill NAME COUNT SIZE` (items into
//!   the module's own queue NAME), `metric-fill PREFIX COUNT` (counters), `call-fill COUNT
//!   UPSTREAM PATH [timeout=MS]` (http calls).
use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| Box::new(Root { id, ..Root::default() }));
}}

/// Counts `global-count` steps across the module's root contexts.
static GLOBAL_COUNT: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// Streams waiting for `resume-postponed`, by context id.
    static POSTPONED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// One line of the script.
#[derive(Clone, Debug)]
struct Step {
    callback: String,
    verb: String,
    args: Vec<String>,
}

fn parse(script: &str) -> Vec<Step> {
    script
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut words = line.split_whitespace().map(decode);
            let callback = words.next().unwrap_or_default();
            let verb = words.next().unwrap_or_default();
            Step { callback, verb, args: words.collect() }
        })
        .collect()
}

/// `%XX` escapes decoded.
fn decode(word: &str) -> String {
    let bytes = word.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A value as the log shows it: text when printable, else hex.
fn shown(value: &[u8]) -> String {
    if value.iter().all(|b| (0x20..0x7f).contains(b)) {
        String::from_utf8_lossy(value).into_owned()
    } else {
        value.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn arg(step: &Step, index: usize) -> &str {
    step.args.get(index).map(String::as_str).unwrap_or_default()
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, size: usize, cas: u32) -> u32;
    fn proxy_register_shared_queue(name: *const u8, size: usize, id: *mut u32) -> u32;
    fn proxy_enqueue_shared_queue(id: u32, value: *const u8, size: usize) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_replace_header_map_value(map: u32, key: *const u8, key_size: usize, value: *const u8, size: usize) -> u32;
    fn proxy_add_header_map_value(map: u32, key: *const u8, key_size: usize, value: *const u8, size: usize) -> u32;
}

#[derive(Default)]
struct Root {
    id: u32,
    script: Vec<Step>,
    /// The queue `register-queue` registered (0: none).
    queue: u32,
}

impl Root {
    fn run_root(&mut self, callback: &str) {
        for step in self.script.clone().iter().filter(|s| s.callback == callback) {
            match step.verb.as_str() {
                "tick" => self.set_tick_period(Duration::from_millis(arg(step, 0).parse().unwrap_or(0))),
                "register-queue" => self.queue = self.register_shared_queue(arg(step, 0)),
                "dequeue" => match self.dequeue_shared_queue(self.queue) {
                    Ok(Some(item)) => log::info!("{callback}: dequeued {} bytes", item.len()),
                    Ok(None) => log::info!("{callback}: queue empty"),
                    Err(status) => log::info!("{callback}: dequeue failed: {status:?}"),
                },
                "resume-postponed" => {
                    for id in POSTPONED.with(|p| std::mem::take(&mut *p.borrow_mut())) {
                        let resumed = proxy_wasm::hostcalls::set_effective_context(id)
                            .and_then(|()| proxy_wasm::hostcalls::resume_http_request());
                        log::info!("{callback}: resumed a postponed stream: {}", resumed.is_ok());
                    }
                }
                _ => {
                    common(self, step);
                }
            }
        }
    }
}

/// Verbs every context has; returns false for a verb it does not know.
fn common(context: &dyn Context, step: &Step) -> bool {
    match step.verb.as_str() {
        "log" => log::info!("{}: {}", step.callback, step.args.join(" ")),
        "property" => {
            let path = arg(step, 0);
            match context.get_property(path.split('.').collect()) {
                Some(value) => log::info!("{}: {path}={}", step.callback, shown(&value)),
                None => log::info!("{}: {path} absent", step.callback),
            }
        }
        "set-property" => context.set_property(arg(step, 0).split('.').collect(), Some(arg(step, 1).as_bytes())),
        "trap" => panic!("script: trap in {}", step.callback),
        "spin" => loop {
            std::hint::black_box(());
        },
        "hog" => {
            let mut hoard = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "stdout" => {
            let size = arg(step, 0).parse().unwrap_or(0);
            let _ = std::io::stdout().write_all(&vec![b'x'; size]);
        }
        "spin-ms" => {
            let until = std::time::Instant::now() + Duration::from_millis(arg(step, 0).parse().unwrap_or(0));
            while std::time::Instant::now() < until {
                std::hint::black_box(());
            }
        }
        "shared-get" => match context.get_shared_data(arg(step, 0)) {
            (Some(value), _) => log::info!("{}: shared {}={} bytes", step.callback, arg(step, 0), value.len()),
            _ => log::info!("{}: shared {} absent", step.callback, arg(step, 0)),
        },
        "shared-fill" | "queue-fill" | "enqueue-fill" | "metric-fill" => fill(step),
        "enqueue" => match context.resolve_shared_queue(arg(step, 0), arg(step, 1)) {
            Some(queue) => {
                for _ in 0..arg(step, 2).parse().unwrap_or(0) {
                    let _ = context.enqueue_shared_queue(queue, Some(b"i"));
                }
            }
            None => log::info!("{}: queue {} unknown", step.callback, arg(step, 1)),
        },
        "zlib-round-trip" => {
            let text = arg(step, 0).as_bytes();
            let round = proxy_wasm::hostcalls::call_foreign_function("compress", Some(text)).and_then(|packed| {
                let packed = packed.unwrap_or_default();
                let back = proxy_wasm::hostcalls::call_foreign_function("uncompress", Some(&packed))?;
                Ok((packed, back.unwrap_or_default()))
            });
            match round {
                Ok((packed, back)) if back == text => {
                    log::info!("{}: zlib {} round trip ok", step.callback, shown(&packed[..2.min(packed.len())]))
                }
                Ok(_) => log::info!("{}: zlib round trip changed the text", step.callback),
                Err(status) => log::info!("{}: zlib failed: {status:?}", step.callback),
            }
        }
        "count" => {
            let name = arg(step, 0);
            let mut id = 0;
            // SAFETY: the host's ABI functions, with a live name and out-pointer.
            let defined = unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) } == 0;
            // SAFETY: as above.
            if defined && unsafe { proxy_increment_metric(id, 1) } == 0 {
                match proxy_wasm::hostcalls::get_metric(id) {
                    Ok(value) => log::info!("{}: {name}={value}", step.callback),
                    Err(status) => log::info!("{}: {name} unreadable: {status:?}", step.callback),
                }
            }
        }
        "call" => call(context, step),
        "call-fill" => {
            let count: usize = arg(step, 0).parse().unwrap_or(0);
            let one = Step { args: step.args[1..].to_vec(), ..step.clone() };
            (0..count).for_each(|_| call(context, &one));
        }
        _ => return false,
    }
    true
}

/// An http call as `call` describes it.
fn call(context: &dyn Context, step: &Step) {
    let upstream = arg(step, 0);
    let mut headers: Vec<(String, String)> = vec![(":path".into(), arg(step, 1).into())];
    let mut timeout = Duration::from_secs(5);
    for pair in step.args.iter().skip(2) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "timeout" => timeout = Duration::from_millis(value.parse().unwrap_or(5000)),
            _ => headers.push((name.into(), value.into())),
        }
    }
    for (name, default) in [(":method", "GET"), (":authority", upstream)] {
        if !headers.iter().any(|(k, _)| k == name || (name == ":authority" && k == "host")) {
            headers.push((name.into(), default.into()));
        }
    }
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match context.dispatch_http_call(upstream, pairs, None, vec![], timeout) {
        Ok(token) => log::info!("{}: call {token} dispatched", step.callback),
        Err(status) => log::info!("{}: call refused: {status:?}", step.callback),
    }
}

/// Runs a flood verb: `count` host calls, logging how many succeeded and the first failure.
fn fill(step: &Step) {
    let (prefix, count) = (arg(step, 0), arg(step, 1).parse::<usize>().unwrap_or(0));
    let value = vec![b'v'; arg(step, 2).parse().unwrap_or(0)];
    let mut queue = 0;
    if step.verb == "enqueue-fill" {
        // SAFETY: the host's ABI function, with a live name and out-pointer.
        unsafe { proxy_register_shared_queue(prefix.as_ptr(), prefix.len(), &mut queue) };
    }
    let (mut done, mut failure) = (0, None);
    for i in 0..count {
        let name = format!("{prefix}{i}");
        let mut id = 0;
        // SAFETY: the host's ABI functions, with live buffers and out-pointers.
        let status = unsafe {
            match step.verb.as_str() {
                "shared-fill" => proxy_set_shared_data(name.as_ptr(), name.len(), value.as_ptr(), value.len(), 0),
                "queue-fill" => proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id),
                "enqueue-fill" => proxy_enqueue_shared_queue(queue, value.as_ptr(), value.len()),
                _ => proxy_define_metric(0, name.as_ptr(), name.len(), &mut id),
            }
        };
        match status {
            0 => done += 1,
            status => failure = failure.or(Some(status)),
        }
    }
    match failure {
        Some(status) => log::info!("{}: {} {done} of {count}, then status {status}", step.callback, step.verb),
        None => log::info!("{}: {} {done} of {count}", step.callback, step.verb),
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.script = parse(&String::from_utf8_lossy(&config));
        self.run_root("configure");
        true
    }

    fn on_tick(&mut self) {
        self.run_root("tick");
    }

    fn on_queue_ready(&mut self, _: u32) {
        self.run_root("queue_ready");
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id,
            root: self.id,
            script: self.script.clone(),
            response_started: false,
            grpc_log: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    /// Its root context's id.
    root: u32,
    script: Vec<Step>,
    /// The response headers have run: `resume` resumes the response.
    response_started: bool,
    /// What the stream's gRPC calls and streams gave, one line each.
    grpc_log: Vec<String>,
}

/// What a callback's lines amount to.
enum Outcome {
    Continue,
    Pause,
}

impl Stream {
    fn run(&mut self, callback: &str, end_of_stream: bool) -> Outcome {
        for step in self.script.clone().iter().filter(|s| s.callback == callback) {
            match step.verb.as_str() {
                "pause" => return Outcome::Pause,
                "postpone" => {
                    POSTPONED.with(|p| p.borrow_mut().push(self.id));
                    return Outcome::Pause;
                }
                "global-count" => {
                    let count = GLOBAL_COUNT.fetch_add(1, Ordering::Relaxed) + 1;
                    self.add_http_request_header("x-global", &format!("root{}:{count}", self.root));
                }
                "buffer" if !end_of_stream => return Outcome::Pause,
                "buffer" => {}
                "resume" if self.response_started => self.resume_http_response(),
                "resume" => self.resume_http_request(),
                "grpc-call" | "grpc-stream" => self.grpc_start(step),
                "respond-grpc-log" => {
                    let log = self.grpc_log.join("\n");
                    self.send_http_response(200, vec![], Some(log.as_bytes()));
                    return Outcome::Pause;
                }
                "respond" => {
                    let status = arg(step, 0).parse().unwrap_or(200);
                    let body = step.args.get(1).map(|b| b.as_bytes());
                    self.send_http_response(status, vec![], body);
                    return Outcome::Pause;
                }

                _ => {
                    if !common(self, step) && !self.header_step(step) {
                        self.body_step(step);
                    }
                }
            }
        }
        Outcome::Continue
    }

    /// Header verbs; false for any other verb.
    fn header_step(&mut self, step: &Step) -> bool {
        let (map, name, value) = (arg(step, 0), arg(step, 1), arg(step, 2));
        let callback = &step.callback;
        match (step.verb.as_str(), map) {
            ("get-header", _) => {
                let found = match map {
                    "request" => self.get_http_request_header(name),
                    "response" => self.get_http_response_header(name),
                    _ => self.get_http_call_response_header(name),
                };
                match found {
                    Some(value) => log::info!("{callback}: {name}={value}"),
                    None => log::info!("{callback}: {name} absent"),
                }
            }
            ("get-headers", _) => {
                let all = match map {
                    "request" => self.get_http_request_headers(),
                    "response" => self.get_http_response_headers(),
                    _ => self.get_http_call_response_headers(),
                };
                let text: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
                log::info!("{callback}: {} headers: {}", all.len(), text.join(", "));
            }
            ("set-header", "request") => self.set_http_request_header(name, Some(value)),
            ("set-header", _) => self.set_http_response_header(name, Some(value)),
            ("add-header", "request") => self.add_http_request_header(name, value),
            ("add-header", _) => self.add_http_response_header(name, value),
            ("remove-header", "request") => self.set_http_request_header(name, None),
            ("bulk-header", "request") => {
                self.add_http_request_header(name, &"y".repeat(value.parse().unwrap_or(0)));
            }
            ("remove-header", _) => self.set_http_response_header(name, None),
            ("try-set-header" | "try-add-header", _) => {
                let map = match map {
                    "request" => 0,
                    _ => 2,
                };
                let (k, v) = (name.as_bytes(), value.as_bytes());
                // SAFETY: the host's ABI functions, with pointers to live byte strings.
                let status = unsafe {
                    match step.verb.as_str() {
                        "try-set-header" => {
                            proxy_replace_header_map_value(map, k.as_ptr(), k.len(), v.as_ptr(), v.len())
                        }
                        _ => proxy_add_header_map_value(map, k.as_ptr(), k.len(), v.as_ptr(), v.len()),
                    }
                };
                log::info!("{callback}: {} {name} status {status}", step.verb);
            }
            _ => return false,
        }
        true
    }

    fn body_step(&mut self, step: &Step) {
        let callback = &step.callback;
        match (step.verb.as_str(), arg(step, 0)) {
            ("get-body", "request") => {
                let body = self.get_http_request_body(0, usize::MAX).unwrap_or_default();
                log::info!("{callback}: request body={}", String::from_utf8_lossy(&body));
            }
            ("get-body", _) => {
                let body = self.get_http_response_body(0, usize::MAX).unwrap_or_default();
                log::info!("{callback}: response body={}", String::from_utf8_lossy(&body));
            }
            ("set-body", "request") => self.set_http_request_body(0, usize::MAX, arg(step, 1).as_bytes()),
            ("set-body", _) => self.set_http_response_body(0, usize::MAX, arg(step, 1).as_bytes()),
            (verb, _) => log::error!("{callback}: unknown verb {verb}"),
        }
    }
}

/// A gRPC call's upstream as the script names it: a cluster, or `service:CLUSTER[:AUTHORITY]`
/// for a serialized `GrpcService` naming them (its `envoy_grpc`).
fn grpc_upstream(word: &str) -> String {
    let Some(service) = word.strip_prefix("service:") else { return word.to_string() };
    let (cluster, authority) = service.split_once(':').unwrap_or((service, ""));
    let field = |tag: u8, value: &str| [&[tag, value.len() as u8][..], value.as_bytes()].concat();
    let mut envoy_grpc = field(0x0a, cluster);
    if !authority.is_empty() {
        envoy_grpc.extend(field(0x12, authority));
    }
    let service = [&[0x0a, envoy_grpc.len() as u8][..], &envoy_grpc].concat();
    String::from_utf8(service).unwrap_or_default()
}

impl Stream {
    /// `grpc-call UPSTREAM SERVICE METHOD MESSAGE [timeout=MS] [NAME=VALUE ...]` or
    /// `grpc-stream UPSTREAM SERVICE METHOD MESSAGE,MESSAGE... [NAME=VALUE ...]` (the stream
    /// sends each message, then half-closes).
    fn grpc_start(&mut self, step: &Step) {
        let upstream = grpc_upstream(arg(step, 0));
        let (service, method, message) = (arg(step, 1), arg(step, 2), arg(step, 3));
        let mut timeout = Duration::from_secs(5);
        let mut metadata: Vec<(String, String)> = Vec::new();
        for pair in step.args.iter().skip(4) {
            match pair.split_once('=') {
                Some(("timeout", ms)) => timeout = Duration::from_millis(ms.parse().unwrap_or(5000)),
                Some((name, value)) => metadata.push((name.into(), value.into())),
                None => {}
            }
        }
        let metadata: Vec<(&str, &[u8])> = metadata.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        if step.verb == "grpc-call" {
            let call = self.dispatch_grpc_call(&upstream, service, method, metadata, Some(message.as_bytes()), timeout);
            if let Err(status) = call {
                self.grpc_log.push(format!("call refused: {status:?}"));
            }
            return;
        }
        match self.open_grpc_stream(&upstream, service, method, metadata) {
            Ok(token) => {
                for message in message.split(',') {
                    self.send_grpc_stream_message(token, Some(message.as_bytes()), false);
                }
                self.close_grpc_stream(token);
            }
            Err(status) => self.grpc_log.push(format!("stream refused: {status:?}")),
        }
    }

    /// Logs a gRPC failure's status and message, then runs `grpc_done`.
    fn grpc_done(&mut self, what: &str, status_code: u32) {
        let (_, message) = self.get_grpc_status();
        self.grpc_log.push(format!("{what} {status_code} {}", message.unwrap_or_default()));
        self.run("grpc_done", true);
    }
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        let callback = if headers == 0 { "call_failed" } else { "call_response" };
        log::info!("{callback}: call {token}: {headers} headers, {body} bytes");
        self.run(callback, true);
    }

    fn on_grpc_call_response(&mut self, _: u32, status_code: u32, size: usize) {
        if status_code != 0 {
            return self.grpc_done("call failed", status_code);
        }
        let answer = self.get_grpc_call_response_body(0, size).unwrap_or_default();
        self.grpc_log.push(format!("call answered {}", String::from_utf8_lossy(&answer)));
        self.run("grpc_done", true);
    }

    fn on_grpc_stream_initial_metadata(&mut self, _: u32, _: u32) {
        let meta = self.get_grpc_stream_initial_metadata_value("x-echo-meta").unwrap_or_default();
        self.grpc_log.push(format!("initial x-echo-meta={}", String::from_utf8_lossy(&meta)));
    }

    fn on_grpc_stream_message(&mut self, _: u32, size: usize) {
        let message = self.get_grpc_stream_message(0, size).unwrap_or_default();
        self.grpc_log.push(format!("message {}", String::from_utf8_lossy(&message)));
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _: u32, _: u32) {
        let status = self.get_grpc_stream_trailing_metadata_value("grpc-status").unwrap_or_default();
        self.grpc_log.push(format!("trailing grpc-status={}", String::from_utf8_lossy(&status)));
    }

    fn on_grpc_stream_close(&mut self, _: u32, status_code: u32) {
        self.grpc_done("closed", status_code);
    }
}

fn action(outcome: Outcome) -> Action {
    match outcome {
        Outcome::Continue => Action::Continue,
        Outcome::Pause => Action::Pause,
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        action(self.run("request_headers", end_of_stream))
    }

    fn on_http_request_body(&mut self, _: usize, end_of_stream: bool) -> Action {
        action(self.run("request_body", end_of_stream))
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        self.response_started = true;
        action(self.run("response_headers", end_of_stream))
    }

    fn on_http_response_body(&mut self, _: usize, end_of_stream: bool) -> Action {
        action(self.run("response_body", end_of_stream))
    }

    fn on_log(&mut self) {
        self.run("log", true);
    }
}
