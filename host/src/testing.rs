//! An in-memory proxy: the reference embedding, used by the host's tests and benchmarks.
//!
//! A [`Node`] holds what a proxy shares across contexts (logs, shared data, queues, metrics,
//! issued calls, timers); a [`Exchange`] holds one request/response. Both are shared handles
//! so a test can inspect them while the VM owns the embedding.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::embedding::*;
use crate::stores::{QueueStore, SharedDataStore};
use crate::types::{BufferType, HostResult, LogLevel, MapType, MetricType, Status, StreamType};
use crate::Pairs;

/// Converts string pairs to the ABI's byte pairs.
pub fn pairs(items: &[(&str, &str)]) -> Pairs {
    items.iter().copied().collect()
}

#[derive(Debug, Default)]
pub struct Metric {
    pub kind: Option<MetricType>,
    pub name: String,
    pub value: u64,
    /// Values recorded into a histogram.
    pub recorded: Vec<u64>,
}

/// State shared by every context of the in-memory proxy.
#[derive(Debug)]
pub struct NodeState {
    pub log_level: LogLevel,
    pub logs: Vec<(LogLevel, String)>,
    pub shared_data: SharedDataStore,
    pub queues: QueueStore<()>,
    pub metrics: Vec<Metric>,
    pub http_calls: Vec<(u32, HttpCallRequest)>,
    pub tick_period: Option<Duration>,
    pub properties: HashMap<String, Vec<u8>>,
    pub foreign_calls: Vec<(String, Vec<u8>)>,
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState {
            log_level: LogLevel::Trace,
            logs: Vec::new(),
            shared_data: SharedDataStore::default(),
            queues: QueueStore::default(),
            metrics: Vec::new(),
            http_calls: Vec::new(),
            tick_period: None,
            properties: HashMap::new(),
            foreign_calls: Vec::new(),
        }
    }
}

pub type Node = Rc<RefCell<NodeState>>;

impl NodeState {
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.iter().map(|(_, line)| line.clone()).collect()
    }
}

/// One request and its response, as the in-memory proxy holds them.
#[derive(Debug, Default)]
pub struct ExchangeState {
    pub request_headers: Pairs,
    pub request_body: Vec<u8>,
    pub request_trailers: Pairs,
    pub response_headers: Pairs,
    pub response_body: Vec<u8>,
    pub response_trailers: Pairs,
    pub local_response: Option<LocalResponse>,
    pub continued: Vec<StreamType>,
    pub closed: Vec<StreamType>,
}

pub type Exchange = Rc<RefCell<ExchangeState>>;

/// The in-memory embedding of one context. A root context has no exchange.
pub struct MemoryEmbedding {
    pub node: Node,
    pub exchange: Option<Exchange>,
    /// The VM id used for shared queues.
    pub vm_id: Vec<u8>,
}

impl MemoryEmbedding {
    pub fn root(node: &Node) -> Box<MemoryEmbedding> {
        Box::new(MemoryEmbedding { node: node.clone(), exchange: None, vm_id: Vec::new() })
    }

    pub fn stream(node: &Node, exchange: &Exchange) -> Box<MemoryEmbedding> {
        Box::new(MemoryEmbedding { node: node.clone(), exchange: Some(exchange.clone()), vm_id: Vec::new() })
    }

    fn exchange(&self) -> HostResult<std::cell::RefMut<'_, ExchangeState>> {
        self.exchange.as_ref().map(|e| e.borrow_mut()).ok_or(Status::NotFound)
    }

    fn pairs(&self, map: MapType) -> HostResult<std::cell::RefMut<'_, Pairs>> {
        let exchange = self.exchange()?;
        std::cell::RefMut::filter_map(exchange, |exchange| match map {
            MapType::HttpRequestHeaders => Some(&mut exchange.request_headers),
            MapType::HttpRequestTrailers => Some(&mut exchange.request_trailers),
            MapType::HttpResponseHeaders => Some(&mut exchange.response_headers),
            MapType::HttpResponseTrailers => Some(&mut exchange.response_trailers),
            _ => None,
        })
        .map_err(|_| Status::BadArgument)
    }
}

impl Logging for MemoryEmbedding {
    fn log(&mut self, level: LogLevel, message: &str) {
        self.node.borrow_mut().logs.push((level, message.to_string()));
    }
    fn log_level(&self) -> LogLevel {
        self.node.borrow().log_level
    }
}

impl Clock for MemoryEmbedding {}

/// Edited in place, as a proxy's own header maps are: the host's header calls then cost what
/// they cost in a proxy, not a copy of the map each (the defaults' way).
impl HeaderMaps for MemoryEmbedding {
    fn header_map(&mut self, map: MapType) -> HostResult<Pairs> {
        Ok(self.pairs(map)?.clone())
    }

    fn set_header_map(&mut self, map: MapType, pairs: Pairs) -> HostResult<()> {
        *self.pairs(map)? = pairs;
        Ok(())
    }

    fn header_map_size(&mut self, map: MapType) -> HostResult<usize> {
        Ok(self.pairs(map)?.len())
    }

    fn header_value(&mut self, map: MapType, key: &[u8], value: &mut Vec<u8>) -> HostResult<bool> {
        Ok(append_first_value(&*self.pairs(map)?, key, value))
    }

    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> HostResult<()> {
        self.pairs(map)?.push(key, value);
        Ok(())
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> HostResult<()> {
        let mut pairs = self.pairs(map)?;
        match pairs.position(key) {
            Some(first) => {
                pairs.set_value(first, value);
                // Later values of the key go; the first keeps its place.
                pairs.retain(|index, k, _| index <= first || !k.eq_ignore_ascii_case(key));
            }
            None => pairs.push(key, value),
        }
        Ok(())
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> HostResult<()> {
        self.pairs(map)?.retain(|_, k, _| !k.eq_ignore_ascii_case(key));
        Ok(())
    }
}

impl Buffers for MemoryEmbedding {
    fn buffer(&mut self, buffer: BufferType) -> HostResult<Vec<u8>> {
        let exchange = self.exchange()?;
        match buffer {
            BufferType::HttpRequestBody => Ok(exchange.request_body.clone()),
            BufferType::HttpResponseBody => Ok(exchange.response_body.clone()),
            _ => Err(Status::NotFound),
        }
    }

    fn set_buffer(&mut self, buffer: BufferType, bytes: Vec<u8>) -> HostResult<()> {
        let mut exchange = self.exchange()?;
        match buffer {
            BufferType::HttpRequestBody => exchange.request_body = bytes,
            BufferType::HttpResponseBody => exchange.response_body = bytes,
            _ => return Err(Status::NotFound),
        }
        Ok(())
    }
}

impl Properties for MemoryEmbedding {
    fn property(&mut self, path: &[&[u8]]) -> HostResult<Option<Vec<u8>>> {
        let key = path.iter().map(|s| String::from_utf8_lossy(s)).collect::<Vec<_>>().join(".");
        Ok(self.node.borrow().properties.get(&key).cloned())
    }
}

impl StreamControl for MemoryEmbedding {
    fn send_local_response(&mut self, response: LocalResponse) -> HostResult<()> {
        self.exchange()?.local_response = Some(response);
        Ok(())
    }
    fn continue_stream(&mut self, stream: StreamType) -> HostResult<()> {
        self.exchange()?.continued.push(stream);
        Ok(())
    }
    fn close_stream(&mut self, stream: StreamType) -> HostResult<()> {
        self.exchange()?.closed.push(stream);
        Ok(())
    }
}

impl HttpCalls for MemoryEmbedding {
    fn http_call(&mut self, token: u32, request: HttpCallRequest) -> HostResult<()> {
        if request.upstream.is_empty() {
            return Err(Status::BadArgument);
        }
        self.node.borrow_mut().http_calls.push((token, request));
        Ok(())
    }
}

impl GrpcCalls for MemoryEmbedding {}

impl Timers for MemoryEmbedding {
    fn set_tick_period(&mut self, period: Duration) -> HostResult<()> {
        self.node.borrow_mut().tick_period = (!period.is_zero()).then_some(period);
        Ok(())
    }
}

impl SharedData for MemoryEmbedding {
    fn get_shared_data(&mut self, key: &[u8]) -> HostResult<Option<(Vec<u8>, u32)>> {
        Ok(self.node.borrow().shared_data.get(key))
    }

    fn set_shared_data(&mut self, key: &[u8], value: &[u8], cas: u32) -> HostResult<()> {
        self.node.borrow().shared_data.set(key, value, cas)
    }
}

impl SharedQueues for MemoryEmbedding {
    fn register_shared_queue(&mut self, name: &[u8]) -> HostResult<u32> {
        Ok(self.node.borrow().queues.register(&self.vm_id, name, (), |_| true))
    }

    fn resolve_shared_queue(&mut self, vm_id: &[u8], name: &[u8]) -> HostResult<Option<u32>> {
        Ok(self.node.borrow().queues.resolve(vm_id, name))
    }

    fn enqueue_shared_queue(&mut self, queue_id: u32, value: &[u8]) -> HostResult<()> {
        self.node.borrow().queues.enqueue(queue_id, value).map(drop)
    }

    fn dequeue_shared_queue(&mut self, queue_id: u32) -> HostResult<Option<Vec<u8>>> {
        self.node.borrow().queues.dequeue(queue_id)
    }
}

impl Metrics for MemoryEmbedding {
    fn define_metric(&mut self, kind: MetricType, name: &str) -> HostResult<u32> {
        let mut node = self.node.borrow_mut();
        if let Some(id) = node.metrics.iter().position(|m| m.name == name && m.kind == Some(kind)) {
            return Ok(id as u32);
        }
        node.metrics.push(Metric { kind: Some(kind), name: name.to_string(), ..Metric::default() });
        Ok(node.metrics.len() as u32 - 1)
    }

    fn increment_metric(&mut self, metric_id: u32, offset: i64) -> HostResult<()> {
        let mut node = self.node.borrow_mut();
        let metric = node.metrics.get_mut(metric_id as usize).ok_or(Status::NotFound)?;
        match metric.kind {
            Some(MetricType::Counter) if offset <= 0 => Err(Status::BadArgument),
            Some(MetricType::Histogram) => Err(Status::BadArgument),
            _ => {
                metric.value = metric.value.wrapping_add_signed(offset);
                Ok(())
            }
        }
    }

    fn record_metric(&mut self, metric_id: u32, value: u64) -> HostResult<()> {
        let mut node = self.node.borrow_mut();
        let metric = node.metrics.get_mut(metric_id as usize).ok_or(Status::NotFound)?;
        match metric.kind {
            Some(MetricType::Histogram) => metric.recorded.push(value),
            Some(MetricType::Counter) => metric.value = metric.value.wrapping_add(value),
            _ => metric.value = value,
        }
        Ok(())
    }

    fn get_metric(&mut self, metric_id: u32) -> HostResult<u64> {
        let node = self.node.borrow();
        let metric = node.metrics.get(metric_id as usize).ok_or(Status::NotFound)?;
        match metric.kind {
            Some(MetricType::Histogram) => Err(Status::BadArgument),
            _ => Ok(metric.value),
        }
    }
}

impl ForeignFunctions for MemoryEmbedding {
    /// `echo` returns its arguments; everything else is unknown.
    fn call_foreign_function(&mut self, name: &str, args: &[u8]) -> HostResult<Vec<u8>> {
        self.node.borrow_mut().foreign_calls.push((name.to_string(), args.to_vec()));
        match name {
            "echo" => Ok(args.to_vec()),
            _ => Err(Status::NotFound),
        }
    }
}

impl Embedding for MemoryEmbedding {}
