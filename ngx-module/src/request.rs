//! Runs a location's filter chain over one request: request headers (rewrite phase), the
//! request body (read in full before `on_request_body`), response headers (header filter),
//! the response body (body filter, buffered while a filter pauses) and the end of the stream
//! (log phase). Request callbacks run in chain order, response callbacks in reverse, as in
//! Envoy. A failed filter answers 500 and its instance is rebuilt for the next request.

use std::cell::RefCell;
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;

use inwasm_host::{Action, FilterError, LocalResponse, PluginId, StreamId};
use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_create_temp_buf, ngx_http_core_run_phases, ngx_http_filter_finalize_request,
    ngx_http_finalize_request, ngx_http_output_body_filter_pt, ngx_http_output_filter,
    ngx_http_output_header_filter_pt, ngx_http_read_client_request_body, ngx_http_request_t, ngx_http_send_header,
    ngx_int_t, ngx_pool_cleanup_add, ngx_read_file, ngx_uint_t, NGX_DECLINED, NGX_DONE, NGX_ERROR,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_ERR, NGX_OK,
};
use ngx::http::HttpModuleLocationConf;

use crate::embedding::{Exchange, RootEmbedding, SharedExchange, StreamEmbedding};
use crate::ffi::{guard_status, log_error};
use crate::headers;
use crate::http_module::{ngx_http_inwasm_module, Isolation, LocConf, Module};
use crate::wasm_block::WasmConf;
use crate::worker::{fresh_instance, record_failure, shared_instance, SharedVm};

pub static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;
pub static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

struct ActiveFilter {
    vm: SharedVm,
    stream: StreamId,
    /// Failed with fail-open on: skipped for the rest of the request.
    skipped: bool,
}

/// A request's state, kept in its module context (freed with the request pool).
struct RequestCtx {
    filters: Vec<ActiveFilter>,
    exchange: SharedExchange,
    /// Request headers and body have been through every filter.
    request_done: bool,
    /// A filter failed: the rest of the chain is skipped.
    failed: bool,
    /// `proxy_wasm_fail_open`: a failed filter is skipped instead of failing the request.
    fail_open: bool,
    /// Response bytes held back while a filter pauses the response body.
    held_body: Vec<u8>,
    /// The body of a local response sent during the response headers, replacing the original.
    replacement_body: Option<Vec<u8>>,
    finished: bool,
}

impl RequestCtx {
    /// Ends every stream (`on_done`, `on_log`, `on_delete`) once.
    fn finish(&mut self, log: *mut ngx::ffi::ngx_log_t) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        for filter in &self.filters {
            if let Err(error) = filter.vm.borrow_mut().finish_stream(filter.stream) {
                log_error(NGX_LOG_ERR as ngx_uint_t, log, &format!("inwasm: {error}"));
            }
        }
    }
}

unsafe fn ctx<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut RequestCtx> {
    let slot = *(*r).ctx.add(ngx_http_inwasm_module.ctx_index);
    (slot as *mut RequestCtx).as_mut()
}

unsafe extern "C" fn drop_ctx(data: *mut c_void) {
    let ctx = Box::from_raw(data as *mut RequestCtx);
    drop(ctx);
}

/// Per-request instances of a request (isolation `stream`), by module index.
type RequestInstances = Vec<(usize, SharedVm)>;

/// The instance and plugin a filter runs on for this request, per the isolation mode.
fn instance_for(
    conf: &WasmConf,
    filter: usize,
    isolation: Isolation,
    per_request: &mut RequestInstances,
    log: *mut ngx::ffi::ngx_log_t,
) -> Result<(SharedVm, PluginId), String> {
    let decl = &conf.filters[filter];
    match isolation {
        Isolation::None => {
            shared_instance(filter).ok_or_else(|| format!("filter \"{}\" is not running", decl.plugin.name))
        }
        Isolation::Stream => match per_request.iter().find(|(module, _)| *module == decl.module) {
            Some((_, vm)) => {
                let embedding = Box::new(RootEmbedding::new(&decl.plugin.name, log));
                let plugin = vm.borrow_mut().add_plugin(decl.plugin.clone(), embedding).map_err(|e| e.to_string())?;
                Ok((vm.clone(), plugin))
            }
            None => {
                let (vm, plugin) = fresh_instance(&conf.modules[decl.module], decl, log)?;
                per_request.push((decl.module, vm.clone()));
                Ok((vm, plugin))
            }
        },
        Isolation::Filter => fresh_instance(&conf.modules[decl.module], decl, log),
    }
}

/// Creates the request's streams for the location's chain. A filter that cannot start fails
/// the request, or is left out of it with fail-open.
unsafe fn start(r: *mut ngx_http_request_t, loc: &LocConf) -> Result<*mut RequestCtx, String> {
    let chain = loc.chain.as_deref().unwrap_or_default();
    let conf = WasmConf::of_cycle(ngx::ffi::ngx_cycle).ok_or("no wasm configuration")?;
    let log = (*(*r).connection).log;
    let exchange = Rc::new(RefCell::new(Exchange::default()));
    let mut per_request = RequestInstances::new();
    let mut filters = Vec::with_capacity(chain.len());
    for &index in chain {
        let name = &conf.filters[index].plugin.name;
        let opened = instance_for(conf, index, loc.isolation.unwrap_or(Isolation::None), &mut per_request, log)
            .and_then(|(vm, plugin)| {
                let embedding = Box::new(StreamEmbedding::new(r, name, &exchange));
                let stream = vm.borrow_mut().new_stream(plugin, embedding).map_err(|e| e.to_string())?;
                vm.borrow_mut().set_stream_timeout(stream, Some(loc.timeout()));
                Ok(ActiveFilter { vm, stream, skipped: false })
            });
        match opened {
            Ok(filter) => filters.push(filter),
            Err(message) if loc.fail_open() => {
                log_error(NGX_LOG_ERR as ngx_uint_t, log, &format!("inwasm: {message}; skipped (fail-open)"));
            }
            Err(message) => return Err(message),
        }
    }
    let ctx = Box::into_raw(Box::new(RequestCtx {
        filters,
        exchange,
        request_done: false,
        failed: false,
        fail_open: loc.fail_open(),
        held_body: Vec::new(),
        replacement_body: None,
        finished: false,
    }));
    let cleanup = ngx_pool_cleanup_add((*r).pool, 0);
    if cleanup.is_null() {
        drop(Box::from_raw(ctx));
        return Err("out of memory".into());
    }
    (*cleanup).handler = Some(drop_ctx);
    (*cleanup).data = ctx as *mut c_void;
    *(*r).ctx.add(ngx_http_inwasm_module.ctx_index) = ctx as *mut c_void;
    Ok(ctx)
}

/// Logs a filter failure with the filter's failure counts in this worker.
fn report(r: *mut ngx_http_request_t, error: &FilterError, fail_open: bool) {
    let counts = record_failure(error);
    let outcome = if fail_open { "skipped (fail-open)" } else { "request failed" };
    let message = format!("inwasm: {error}; {outcome}; this worker: {counts}");
    unsafe { log_error(NGX_LOG_ERR as ngx_uint_t, (*(*r).connection).log, &message) };
}

/// Runs `call` on each filter (in order, or reversed for response callbacks) until one fails
/// or answers locally. `Ok(true)` when a local response is pending. With fail-open, a filter
/// that fails is skipped from then on and the chain goes on.
fn run_chain(
    r: *mut ngx_http_request_t,
    ctx: &mut RequestCtx,
    reverse: bool,
    mut call: impl FnMut(&ActiveFilter) -> Result<Action, FilterError>,
) -> Result<bool, ()> {
    let order: Vec<usize> =
        if reverse { (0..ctx.filters.len()).rev().collect() } else { (0..ctx.filters.len()).collect() };
    for index in order {
        if ctx.filters[index].skipped {
            continue;
        }
        match call(&ctx.filters[index]) {
            Ok(_) if ctx.exchange.borrow().local_response.is_some() => return Ok(true),
            Ok(_) => {}
            Err(error) => {
                report(r, &error, ctx.fail_open);
                if ctx.fail_open {
                    ctx.filters[index].skipped = true;
                    continue;
                }
                ctx.failed = true;
                return Err(());
            }
        }
    }
    Ok(false)
}

fn has_body(r: &ngx_http_request_t) -> bool {
    r.headers_in.content_length_n > 0 || r.headers_in.chunked() != 0
}

pub unsafe extern "C" fn rewrite_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard_status((*(*r).connection).log, || {
        if r != (*r).main {
            return NGX_DECLINED as ngx_int_t;
        }
        let Some(loc) = Module::location_conf(&*r) else {
            return NGX_DECLINED as ngx_int_t;
        };
        if loc.chain.as_ref().is_none_or(|c| c.is_empty()) {
            return NGX_DECLINED as ngx_int_t;
        }
        if let Some(ctx) = ctx(r) {
            return if ctx.failed { NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t } else { NGX_DECLINED as ngx_int_t };
        }
        let ctx = match start(r, loc) {
            Ok(ctx) => &mut *ctx,
            Err(message) => {
                log_error(NGX_LOG_ERR as ngx_uint_t, (*(*r).connection).log, &format!("inwasm: {message}"));
                return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
            }
        };
        let end_of_stream = !has_body(&*r);
        match run_chain(r, ctx, false, |f| f.vm.borrow_mut().on_request_headers(f.stream, end_of_stream)) {
            Err(()) => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
            Ok(true) => return send_local_response(r, ctx),
            Ok(false) => {}
        }
        if end_of_stream {
            ctx.request_done = true;
            return NGX_DECLINED as ngx_int_t;
        }
        let rc = ngx_http_read_client_request_body(r, Some(request_body_read));
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return rc;
        }
        ngx_http_finalize_request(r, NGX_DONE as ngx_int_t);
        NGX_DONE as ngx_int_t
    })
}

/// Called once the whole request body is in: runs `on_request_body`, then resumes the phases.
unsafe extern "C" fn request_body_read(r: *mut ngx_http_request_t) {
    let log = (*(*r).connection).log;
    let rc = guard_status(log, || {
        let Some(ctx) = ctx(r) else {
            return NGX_ERROR as ngx_int_t;
        };
        let Some(body) = read_request_body(r) else {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        };
        let size = body.len();
        ctx.exchange.borrow_mut().request_body = body;
        match run_chain(r, ctx, false, |f| f.vm.borrow_mut().on_request_body(f.stream, size, true)) {
            Err(()) => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
            Ok(true) => return send_local_response(r, ctx),
            Ok(false) => {}
        }
        if ctx.exchange.borrow().request_body_changed
            && replace_request_body(r, &ctx.exchange.borrow().request_body).is_none()
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        ctx.request_done = true;
        NGX_DECLINED as ngx_int_t
    });
    if rc == NGX_DECLINED as ngx_int_t {
        (*r).set_preserve_body(1);
        (*r).write_event_handler = Some(ngx_http_core_run_phases);
        ngx_http_core_run_phases(r);
    } else {
        ngx_http_finalize_request(r, rc);
    }
}

/// The buffered request body, from memory or nginx's temporary file.
unsafe fn read_request_body(r: *mut ngx_http_request_t) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let Some(request_body) = (*r).request_body.as_ref() else {
        return Some(body);
    };
    chain_bytes(request_body.bufs, &mut body)?;
    Some(body)
}

/// Appends a chain's bytes (in memory or in a file) to `out`.
unsafe fn chain_bytes(mut chain: *mut ngx_chain_t, out: &mut Vec<u8>) -> Option<()> {
    while let Some(link) = chain.as_ref() {
        let b = &*link.buf;
        if b.in_file() != 0 && b.in_file() != 0 && !b.file.is_null() && b.pos.is_null() {
            let len = (b.file_last - b.file_pos) as usize;
            let start = out.len();
            out.resize(start + len, 0);
            let read = ngx_read_file(b.file, out[start..].as_mut_ptr(), len, b.file_pos);
            if read != len as isize {
                return None;
            }
        } else if !b.pos.is_null() {
            out.extend_from_slice(std::slice::from_raw_parts(b.pos, b.last.offset_from(b.pos) as usize));
        }
        chain = link.next;
    }
    Some(())
}

/// Makes `body` the request body upstream modules send, with a matching Content-Length.
unsafe fn replace_request_body(r: *mut ngx_http_request_t, body: &[u8]) -> Option<()> {
    let chain = memory_chain(r, body, false)?;
    let request_body = (*r).request_body.as_mut()?;
    request_body.bufs = chain;
    request_body.temp_file = ptr::null_mut();
    let mut pairs = headers::request_headers(r);
    pairs.retain(|(k, _)| k != b"content-length" && k != b"transfer-encoding");
    pairs.push((b"content-length".to_vec(), body.len().to_string().into_bytes()));
    headers::set_request_headers(r, &pairs)?;
    (*r).headers_in.set_chunked(0);
    Some(())
}

/// A one-buffer chain holding a copy of `data` (or an empty buffer marking the end).
unsafe fn memory_chain(r: *mut ngx_http_request_t, data: &[u8], last: bool) -> Option<*mut ngx_chain_t> {
    let pool = (*r).pool;
    let b: *mut ngx_buf_t = ngx_create_temp_buf(pool, data.len().max(1));
    let link = ngx::ffi::ngx_alloc_chain_link(pool);
    if b.is_null() || link.is_null() {
        return None;
    }
    ptr::copy_nonoverlapping(data.as_ptr(), (*b).last, data.len());
    (*b).last = (*b).last.add(data.len());
    if data.is_empty() {
        (*b).set_temporary(0);
        (*b).set_sync(1);
    }
    if last {
        (*b).set_last_buf(1);
        (*b).set_last_in_chain(1);
    }
    (*link).buf = b;
    (*link).next = ptr::null_mut();
    Some(link)
}

/// Makes the pending local response the request's response status and headers (with its
/// own Content-Length); returns its body. `None` when there is none or nginx is out of memory.
unsafe fn apply_local_response(r: *mut ngx_http_request_t, ctx: &mut RequestCtx) -> Option<Vec<u8>> {
    let LocalResponse { status, body, headers: extra, .. } = ctx.exchange.borrow_mut().local_response.take()?;
    let mut pairs = vec![(b":status".to_vec(), status.to_string().into_bytes())];
    pairs.extend(extra);
    if !pairs.iter().any(|(k, _)| k.eq_ignore_ascii_case(b"content-type")) && !body.is_empty() {
        pairs.push((b"content-type".to_vec(), b"text/plain".to_vec()));
    }
    pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(b"content-length"));
    pairs.push((b"content-length".to_vec(), body.len().to_string().into_bytes()));
    headers::set_response_headers(r, &pairs)?;
    Some(body)
}

/// Sends the pending local response (status, headers, body); the response filters, ours
/// included, see it like any other response.
unsafe fn send_local_response(r: *mut ngx_http_request_t, ctx: &mut RequestCtx) -> ngx_int_t {
    ctx.request_done = true;
    let Some(body) = apply_local_response(r, ctx) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    if body.is_empty() || (*r).method == ngx::ffi::NGX_HTTP_HEAD as ngx_uint_t {
        (*r).set_header_only(1);
    }
    let rc = ngx_http_send_header(r);
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
        return rc;
    }
    match memory_chain(r, &body, true) {
        Some(chain) => ngx_http_output_filter(r, chain),
        None => NGX_ERROR as ngx_int_t,
    }
}

pub unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    let next = NEXT_HEADER_FILTER.expect("next header filter");
    let rc = guard_status((*(*r).connection).log, || {
        let Some(ctx) = ctx(r) else {
            return NGX_DECLINED as ngx_int_t;
        };
        if ctx.failed || r != (*r).main {
            return NGX_DECLINED as ngx_int_t;
        }
        let end_of_stream = (*r).header_only() != 0;
        match run_chain(r, ctx, true, |f| f.vm.borrow_mut().on_response_headers(f.stream, end_of_stream)) {
            Err(()) => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
            // A local response instead of the upstream's: its headers now, its body in place
            // of the original one (which the body filter swallows).
            Ok(true) => match apply_local_response(r, ctx) {
                Some(body) => ctx.replacement_body = Some(body),
                None => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
            },
            Ok(false) => {}
        }
        // Filters may rewrite the body, so its length is only known at its end.
        if !end_of_stream && ctx.replacement_body.is_none() {
            (*r).headers_out.content_length_n = -1;
            if let Some(length) = (*r).headers_out.content_length.as_mut() {
                length.hash = 0;
            }
            (*r).headers_out.content_length = ptr::null_mut();
        }
        NGX_DECLINED as ngx_int_t
    });
    match rc {
        rc if rc == NGX_DECLINED as ngx_int_t => next(r),
        rc if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t => {
            ngx_http_filter_finalize_request(r, ptr::addr_of_mut!(ngx_http_inwasm_module), rc)
        }
        rc => rc,
    }
}

pub unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, input: *mut ngx_chain_t) -> ngx_int_t {
    let next = NEXT_BODY_FILTER.expect("next body filter");
    let log = (*(*r).connection).log;
    let mut output = input;
    let rc = guard_status(log, || {
        let Some(ctx) = ctx(r) else {
            return NGX_DECLINED as ngx_int_t;
        };
        if ctx.failed || r != (*r).main || input.is_null() {
            return NGX_DECLINED as ngx_int_t;
        }
        if let Some(replacement) = &ctx.replacement_body {
            if !consume(input) {
                return NGX_OK as ngx_int_t;
            }
            return match memory_chain(r, replacement, true) {
                Some(chain) => {
                    output = chain;
                    NGX_DECLINED as ngx_int_t
                }
                None => NGX_ERROR as ngx_int_t,
            };
        }
        let mut chunk = std::mem::take(&mut ctx.held_body);
        if chain_bytes(input, &mut chunk).is_none() {
            return NGX_ERROR as ngx_int_t;
        }
        let end_of_stream = consume(input);
        ctx.exchange.borrow_mut().response_body = chunk;
        let mut paused = false;
        let size = ctx.exchange.borrow().response_body.len();
        let result = run_chain(r, ctx, true, |f| {
            let action = f.vm.borrow_mut().on_response_body(f.stream, size, end_of_stream)?;
            paused |= action == Action::Pause;
            Ok(action)
        });
        if result.is_err() {
            // Headers are gone: all that is left is to cut the response short.
            return NGX_ERROR as ngx_int_t;
        }
        let body = std::mem::take(&mut ctx.exchange.borrow_mut().response_body);
        if paused && !end_of_stream {
            ctx.held_body = body;
            return NGX_OK as ngx_int_t;
        }
        match memory_chain(r, &body, end_of_stream) {
            Some(chain) => {
                output = chain;
                NGX_DECLINED as ngx_int_t
            }
            None => NGX_ERROR as ngx_int_t,
        }
    });
    if rc == NGX_DECLINED as ngx_int_t {
        next(r, output)
    } else {
        rc
    }
}

/// Marks a chain's buffers as sent (their bytes were copied) and tells whether it ends the body.
unsafe fn consume(mut chain: *mut ngx_chain_t) -> bool {
    let mut last = false;
    while let Some(link) = chain.as_ref() {
        let b = &mut *link.buf;
        last |= b.last_buf() != 0 || b.last_in_chain() != 0;
        b.pos = b.last;
        b.file_pos = b.file_last;
        chain = link.next;
    }
    last
}

pub unsafe extern "C" fn log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let log = (*(*r).connection).log;
    guard_status(log, || {
        if let Some(ctx) = ctx(r) {
            ctx.finish(log);
        }
        NGX_OK as ngx_int_t
    })
}
