//! Metrics: defines counter `requests_total`, gauge `inflight` and histogram `body_size`.
//! Each request increments the counter and the gauge; its response decrements the gauge,
//! records the request's content-length (or 0) and reports the counter in
//! `x-requests-total`.
use proxy_wasm::hostcalls::{define_metric, get_metric, increment_metric, record_metric};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

#[derive(Clone, Copy)]
struct Metrics {
    requests: u32,
    inflight: u32,
    body_size: u32,
}

#[derive(Default)]
struct Root {
    metrics: Option<Metrics>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.metrics = Some(Metrics {
            requests: define_metric(MetricType::Counter, "requests_total").unwrap(),
            inflight: define_metric(MetricType::Gauge, "inflight").unwrap(),
            body_size: define_metric(MetricType::Histogram, "body_size").unwrap(),
        });
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        let metrics = self.metrics?;
        Some(Box::new(Request { metrics, content_length: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    metrics: Metrics,
    content_length: u64,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        increment_metric(self.metrics.requests, 1).unwrap();
        increment_metric(self.metrics.inflight, 1).unwrap();
        self.content_length = self.get_http_request_header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        increment_metric(self.metrics.inflight, -1).unwrap();
        record_metric(self.metrics.body_size, self.content_length).unwrap();
        let total = get_metric(self.metrics.requests).unwrap();
        self.add_http_response_header("x-requests-total", &total.to_string());
        Action::Continue
    }
}
