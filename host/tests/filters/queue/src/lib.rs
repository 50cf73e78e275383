//! Shared queues: the root context registers queue `events`; every request resolves it
//! (vm_id "") and enqueues its `:path`. on_queue_ready drains the queue, logging
//! `dequeued <item>`, storing the last item in shared data `last-event` and the running
//! total of dequeued items in `dequeued` (decimal).
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

#[derive(Default)]
struct Root {
    queue: Option<u32>,
    dequeued: u64,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.queue = Some(self.register_shared_queue("events"));
        true
    }

    fn on_queue_ready(&mut self, queue: u32) {
        if self.queue != Some(queue) {
            log::warn!("on_queue_ready for unknown queue {queue}");
            return;
        }
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue) {
            log::info!("dequeued {}", String::from_utf8_lossy(&item));
            self.set_shared_data("last-event", Some(&item), None).unwrap();
            self.dequeued += 1;
        }
        self.set_shared_data("dequeued", Some(self.dequeued.to_string().as_bytes()), None).unwrap();
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Producer))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Producer;

impl Context for Producer {}

impl HttpContext for Producer {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        match self.resolve_shared_queue("", "events") {
            Some(queue) => {
                if let Err(status) = self.enqueue_shared_queue(queue, Some(path.as_bytes())) {
                    log::warn!("enqueue failed: {status:?}");
                }
            }
            None => log::warn!("queue events not found"),
        }
        Action::Continue
    }
}
