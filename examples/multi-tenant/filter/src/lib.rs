//! A tenant's filter: nginx.conf declares one module per tenant (all from this file), so each
//! tenant has its own instances, shared data namespace and limits. The plugin configuration
//! is `tenant=NAME plan=PLAN` (`plan` optional, default `free`).
//!
//! - Every request counts in the shared-data key `requests` (compare-and-swap); responses
//!   get `x-tenant`, `x-tenant-plan` and `x-tenant-requests`, and the upstream `x-tenant`.
//! - `PUT /kv/KEY` stores the request body under shared-data key `kv/KEY` (201) and
//!   `GET /kv/KEY` answers it (200, or 404): the same key names in every tenant, never
//!   seen by another tenant.
//! - `/_misbehave/loop`, `/_misbehave/hog` and `/_misbehave/panic` stand for a tenant's bug:
//!   they loop forever, allocate until memory runs out, or panic.
use std::hint::black_box;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

#[derive(Clone, Default)]
struct Tenant {
    name: String,
    plan: String,
}

impl Tenant {
    fn parse(config: &str) -> Result<Tenant, String> {
        let mut tenant = Tenant { name: String::new(), plan: "free".into() };
        for word in config.split_whitespace() {
            match word.split_once('=') {
                Some(("tenant", name)) if !name.is_empty() => tenant.name = name.into(),
                Some(("plan", plan)) if !plan.is_empty() => tenant.plan = plan.into(),
                _ => return Err(format!("expected tenant=NAME or plan=PLAN, not {word:?}")),
            }
        }
        if tenant.name.is_empty() {
            return Err("tenant=NAME is required".into());
        }
        Ok(tenant)
    }
}

#[derive(Default)]
struct Root {
    tenant: Tenant,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match Tenant::parse(&String::from_utf8_lossy(&config)) {
            Ok(tenant) => {
                self.tenant = tenant;
                true
            }
            Err(error) => {
                log::error!("bad configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { tenant: self.tenant.clone(), requests: 0, put: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    tenant: Tenant,
    requests: u64,
    /// The shared-data key of a `PUT /kv/KEY`, stored when its body has arrived.
    put: Option<String>,
}

impl Request {
    /// Counts this request in the tenant's `requests`, retrying when another request wrote
    /// in between.
    fn count(&self) -> u64 {
        loop {
            let (value, cas) = self.get_shared_data("requests");
            let n = value.and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok()).unwrap_or(0) + 1;
            // The SDK returns Err only for CasMismatch: someone else wrote first, retry.
            if self.set_shared_data("requests", Some(n.to_string().as_bytes()), cas).is_ok() {
                return n;
            }
        }
    }
}

/// Never returns.
fn misbehave(how: &str) {
    match how {
        "loop" => loop {
            black_box(());
        },
        // Takes memory a MiB at a time without writing it, as a leak does: the memory limit
        // stops it at once, however busy the machine (writing 32 MiB on a loaded one could
        // take longer than the tenant's deadline, and the deadline would stop it instead).
        "hog" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(Vec::with_capacity(1 << 20));
                black_box(&hoard);
            }
        }
        _ => panic!("tenant bug: {how}"),
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        self.requests = self.count();
        self.set_http_request_header("x-tenant", Some(&self.tenant.name));
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        if let Some(how) = path.strip_prefix("/_misbehave/") {
            misbehave(how);
        }
        let Some(key) = path.strip_prefix("/kv/").map(|k| format!("kv/{k}")) else {
            return Action::Continue;
        };
        match method.as_str() {
            "GET" => match self.get_shared_data(&key).0 {
                Some(value) => self.send_http_response(200, vec![], Some(&value)),
                None => self.send_http_response(404, vec![], Some(b"no such key\n")),
            },
            "PUT" if end_of_stream => self.send_http_response(400, vec![], Some(b"a PUT needs a body\n")),
            "PUT" => {
                self.put = Some(key);
                return Action::Continue;
            }
            _ => self.send_http_response(405, vec![("allow", "GET, PUT")], None),
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let Some(key) = &self.put else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let value = self.get_http_request_body(0, size).unwrap_or_default();
        // No CAS: the last write wins. (The SDK's Err is only CasMismatch, impossible here.)
        let _ = self.set_shared_data(key, Some(&value), None);
        self.send_http_response(201, vec![], None);
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-tenant", Some(&self.tenant.name));
        self.set_http_response_header("x-tenant-plan", Some(&self.tenant.plan));
        self.set_http_response_header("x-tenant-requests", Some(&self.requests.to_string()));
        Action::Continue
    }
}
