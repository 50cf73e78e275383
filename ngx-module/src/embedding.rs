//! The host's embedding for nginx: what a filter reaches, for a root context (logging) and
//! for a request (headers, bodies, properties, local responses).
//!
//! The host calls these while the guest runs, so nothing here sends output or resumes the
//! request: local responses and bodies are recorded in the request's [`Exchange`] and the
//! request driver acts on them when the callback has returned.

use std::cell::RefCell;
use std::rc::Rc;

use inwasm_host::*;
use ngx::ffi::{
    ngx_http_request_t, ngx_log_t, ngx_uint_t, NGX_LOG_CRIT, NGX_LOG_DEBUG, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_WARN,
};

use crate::ffi::log_error;
use crate::{headers, properties};

/// What a request's filters share with the request driver.
#[derive(Default)]
pub struct Exchange {
    /// The request body a filter sees (the whole body, read before `on_request_body`).
    pub request_body: Vec<u8>,
    pub request_body_changed: bool,
    /// The response body a filter sees: the bytes of the current call.
    pub response_body: Vec<u8>,
    pub local_response: Option<LocalResponse>,
}

pub type SharedExchange = Rc<RefCell<Exchange>>;

fn nginx_level(level: LogLevel) -> ngx_uint_t {
    (match level {
        LogLevel::Trace | LogLevel::Debug => NGX_LOG_DEBUG,
        LogLevel::Info => NGX_LOG_INFO,
        LogLevel::Warn => NGX_LOG_WARN,
        LogLevel::Error => NGX_LOG_ERR,
        LogLevel::Critical => NGX_LOG_CRIT,
    }) as ngx_uint_t
}

/// The lowest proxy-wasm level the nginx log lets through.
fn level_of(log: *mut ngx_log_t) -> LogLevel {
    let level = if log.is_null() { 0 } else { unsafe { (*log).log_level } };
    match level as u32 {
        l if l >= NGX_LOG_DEBUG => LogLevel::Trace,
        l if l >= NGX_LOG_INFO => LogLevel::Info,
        l if l >= NGX_LOG_WARN => LogLevel::Warn,
        l if l >= NGX_LOG_ERR => LogLevel::Error,
        _ => LogLevel::Critical,
    }
}

fn log_line(log: *mut ngx_log_t, filter: &str, level: LogLevel, message: &str) {
    log_error(nginx_level(level), log, &format!("[wasm] filter \"{filter}\": {message}"));
}

/// A plugin's root context.
pub struct RootEmbedding {
    filter: String,
    log: *mut ngx_log_t,
}

impl RootEmbedding {
    pub fn new(filter: &str, log: *mut ngx_log_t) -> RootEmbedding {
        RootEmbedding { filter: filter.to_string(), log }
    }
}

impl Logging for RootEmbedding {
    fn log(&mut self, level: LogLevel, message: &str) {
        log_line(self.log, &self.filter, level, message);
    }
    fn log_level(&self) -> LogLevel {
        level_of(self.log)
    }
}

impl Clock for RootEmbedding {}
impl HeaderMaps for RootEmbedding {}
impl Buffers for RootEmbedding {}
impl Properties for RootEmbedding {}
impl StreamControl for RootEmbedding {}
impl HttpCalls for RootEmbedding {}
impl GrpcCalls for RootEmbedding {}
impl Timers for RootEmbedding {}
impl SharedData for RootEmbedding {}
impl SharedQueues for RootEmbedding {}
impl Metrics for RootEmbedding {}
impl ForeignFunctions for RootEmbedding {}
impl Embedding for RootEmbedding {}

/// A request's stream context.
pub struct StreamEmbedding {
    r: *mut ngx_http_request_t,
    filter: String,
    exchange: SharedExchange,
}

impl StreamEmbedding {
    pub fn new(r: *mut ngx_http_request_t, filter: &str, exchange: &SharedExchange) -> StreamEmbedding {
        StreamEmbedding { r, filter: filter.to_string(), exchange: exchange.clone() }
    }

    fn request_log(&self) -> *mut ngx_log_t {
        unsafe { (*(*self.r).connection).log }
    }
}

impl Logging for StreamEmbedding {
    fn log(&mut self, level: LogLevel, message: &str) {
        log_line(self.request_log(), &self.filter, level, message);
    }
    fn log_level(&self) -> LogLevel {
        level_of(self.request_log())
    }
}

impl Clock for StreamEmbedding {}

impl HeaderMaps for StreamEmbedding {
    fn header_map(&mut self, map: MapType) -> HostResult<Pairs> {
        Ok(match map {
            MapType::HttpRequestHeaders => unsafe { headers::request_headers(self.r) },
            MapType::HttpResponseHeaders => unsafe { headers::response_headers(self.r) },
            // nginx hands trailers to no filter yet.
            _ => Vec::new(),
        })
    }

    fn set_header_map(&mut self, map: MapType, pairs: Pairs) -> HostResult<()> {
        let done = match map {
            MapType::HttpRequestHeaders => unsafe { headers::set_request_headers(self.r, &pairs) },
            MapType::HttpResponseHeaders => unsafe { headers::set_response_headers(self.r, &pairs) },
            _ => return Err(Status::BadArgument),
        };
        done.ok_or(Status::InternalFailure)
    }
}

impl Buffers for StreamEmbedding {
    fn buffer(&mut self, buffer: BufferType) -> HostResult<Vec<u8>> {
        let exchange = self.exchange.borrow();
        match buffer {
            BufferType::HttpRequestBody => Ok(exchange.request_body.clone()),
            BufferType::HttpResponseBody => Ok(exchange.response_body.clone()),
            _ => Ok(Vec::new()),
        }
    }

    fn set_buffer(&mut self, buffer: BufferType, bytes: Vec<u8>) -> HostResult<()> {
        let mut exchange = self.exchange.borrow_mut();
        match buffer {
            BufferType::HttpRequestBody => {
                exchange.request_body = bytes;
                exchange.request_body_changed = true;
            }
            BufferType::HttpResponseBody => exchange.response_body = bytes,
            _ => return Err(Status::BadArgument),
        }
        Ok(())
    }
}

impl Properties for StreamEmbedding {
    fn property(&mut self, path: &[&[u8]]) -> HostResult<Option<Vec<u8>>> {
        Ok(unsafe { properties::get(self.r, path) })
    }

    fn set_property(&mut self, path: &[&[u8]], value: &[u8]) -> HostResult<()> {
        unsafe { properties::set(self.r, path, value) }.map_err(|()| Status::NotFound)
    }
}

impl StreamControl for StreamEmbedding {
    fn send_local_response(&mut self, response: LocalResponse) -> HostResult<()> {
        let mut exchange = self.exchange.borrow_mut();
        if exchange.local_response.is_some() {
            return Err(Status::BadArgument);
        }
        exchange.local_response = Some(response);
        Ok(())
    }
}

impl HttpCalls for StreamEmbedding {}
impl GrpcCalls for StreamEmbedding {}
impl Timers for StreamEmbedding {}
impl SharedData for StreamEmbedding {}
impl SharedQueues for StreamEmbedding {}
impl Metrics for StreamEmbedding {}
impl ForeignFunctions for StreamEmbedding {}
impl Embedding for StreamEmbedding {}
