//! nginx buffer chains as bytes: reading a chain (memory or file buffers) or its size, building a
//! one-buffer chain, marking input as consumed, and swapping in a new request body.

use std::ptr;

use ngx::ffi::{ngx_alloc_chain_link, ngx_buf_t, ngx_chain_t, ngx_create_temp_buf, ngx_http_request_t, ngx_read_file};

use inwasm_host::{HostResult, Status};

use crate::framing;

/// Appends a chain's bytes (in memory or in a file) to `out`.
///
/// # Safety
/// `chain` must be null or a valid nginx chain.
pub unsafe fn chain_bytes(mut chain: *mut ngx_chain_t, out: &mut Vec<u8>) -> Option<()> {
    // SAFETY: each link of a valid chain (the caller's contract) has a valid buffer whose memory
    // bytes (`pos..last`) or file range (`file_pos..file_last` of a live file) are readable.
    unsafe {
        while let Some(link) = chain.as_ref() {
            let b = &*link.buf;
            if b.in_file() != 0 && !b.file.is_null() && b.pos.is_null() {
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
}

/// The number of bytes in a chain (memory or file buffers).
///
/// # Safety
/// `chain` must be null or a valid nginx chain.
pub unsafe fn chain_size(mut chain: *mut ngx_chain_t) -> usize {
    // SAFETY: as above: each link's buffer describes its bytes by `pos..last` or its file range.
    unsafe {
        let mut size = 0;
        while let Some(link) = chain.as_ref() {
            let b = &*link.buf;
            size += if b.in_file() != 0 && b.pos.is_null() {
                (b.file_last - b.file_pos) as usize
            } else {
                b.last.offset_from(b.pos) as usize
            };
            chain = link.next;
        }
        size
    }
}

/// A one-buffer chain holding a copy of `data` (or an empty buffer marking the end).
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn memory_chain(r: *mut ngx_http_request_t, data: &[u8], last: bool) -> Option<*mut ngx_chain_t> {
    // SAFETY: a valid request's pool hands out a buffer of at least `data.len()` bytes and a link, or
    // null; both are initialised before the chain is returned.
    unsafe {
        let pool = (*r).pool;
        let b: *mut ngx_buf_t = ngx_create_temp_buf(pool, data.len().max(1));
        let link = ngx_alloc_chain_link(pool);
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
}

/// Marks a chain's buffers as sent (their bytes were copied) and tells whether it ends the body.
///
/// # Safety
/// `chain` must be null or a valid nginx chain the caller may consume.
pub unsafe fn consume(mut chain: *mut ngx_chain_t) -> bool {
    // SAFETY: each link of a valid chain has a valid buffer, which nginx lets a filter mark consumed.
    unsafe {
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
}

/// The whole request body nginx has read (memory or its temporary file).
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn request_body(r: *mut ngx_http_request_t) -> Option<Vec<u8>> {
    // SAFETY: a valid request's body, when it has one, is a valid chain (`chain_bytes`).
    unsafe {
        let mut body = Vec::new();
        if let Some(request_body) = (*r).request_body.as_ref() {
            chain_bytes(request_body.bufs, &mut body)?;
        }
        Some(body)
    }
}

/// Makes `body` the request body upstream modules send, with framing that matches it.
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn replace_request_body(r: *mut ngx_http_request_t, body: &[u8]) -> HostResult<()> {
    // SAFETY: a valid request (the caller's contract), whose body, when it has one, takes a chain from
    // its own pool.
    unsafe {
        let chain = memory_chain(r, body, false).ok_or(Status::InternalFailure)?;
        let request_body = (*r).request_body.as_mut().ok_or(Status::InternalFailure)?;
        request_body.bufs = chain;
        request_body.temp_file = ptr::null_mut();
        framing::settle(r, Some(body.len()))
    }
}
