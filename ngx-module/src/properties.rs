//! Envoy's attribute names mapped to nginx request data, with Envoy's encodings, plus
//! `ngx.<variable>` for any nginx variable (read, and set where the variable is writable).

use inwasm_host::serialization::property;
use inwasm_host::Pairs;
use ngx::ffi::{
    ngx_connection_local_sockaddr, ngx_hash_find, ngx_hash_key, ngx_http_get_variable, ngx_http_request_t,
    ngx_http_variable_t, ngx_inet_get_port, ngx_palloc, ngx_sock_ntop, ngx_str_t, ngx_uint_t, ngx_variable_value_t,
    NGX_HTTP_VAR_CHANGEABLE, NGX_HTTP_VAR_INDEXED,
};
use ngx::http::{HttpModuleMainConf, NgxHttpCoreModule};

use crate::ffi::{bytes, pool_str};
use crate::headers::{request_headers, response_headers};
use crate::request_line::{authority, scheme};

/// Room for any socket address as text (nginx's NGX_SOCKADDR_STRLEN).
const SOCKADDR_TEXT_LEN: usize = 128;

/// The value of a property, or `None` when nginx has no such thing.
pub unsafe fn get(r: *mut ngx_http_request_t, path: &[&[u8]]) -> Option<Vec<u8>> {
    // SAFETY: a live request (the caller's contract): its strings, connection and header shortcuts
    // are valid, and nginx's variable and socket functions take it.
    unsafe {
        let req = &*r;
        let c = &*req.connection;
        let header = |name: *mut ngx::ffi::ngx_table_elt_t| name.as_ref().map(|e| bytes(&e.value).to_vec());
        Some(match path {
            [b"request", b"path"] => bytes(&req.unparsed_uri).to_vec(),
            [b"request", b"url_path"] => bytes(&req.uri).to_vec(),
            [b"request", b"host"] => authority(req).to_vec(),
            [b"request", b"scheme"] => scheme(req).to_vec(),
            [b"request", b"method"] => bytes(&req.method_name).to_vec(),
            [b"request", b"headers"] => property::map(&without_pseudo(request_headers(r))),
            [b"request", b"referer"] => header(req.headers_in.referer)?,
            [b"request", b"useragent"] => header(req.headers_in.user_agent)?,
            [b"request", b"query"] => bytes(&req.args).to_vec(),
            [b"request", b"protocol"] => bytes(&req.http_protocol).to_vec(),
            [b"request", b"id"] => variable(r, b"request_id")?,
            [b"request", b"time"] => {
                property::nanos(req.start_sec as u128 * 1_000_000_000 + req.start_msec as u128 * 1_000_000)
            }
            [b"request", b"size"] => property::int(req.headers_in.content_length_n.max(0)),
            [b"request", b"total_size"] => property::int(req.request_length),
            [b"response", b"code"] => property::int(req.headers_out.status as i64),
            [b"response", b"headers"] => property::map(&without_pseudo(response_headers(r))),
            [b"response", b"total_size"] => property::int(c.sent),
            [b"source", b"address"] => {
                let mut address = bytes(&c.addr_text).to_vec();
                address.extend_from_slice(format!(":{}", ngx_inet_get_port(c.sockaddr)).as_bytes());
                address
            }
            [b"source", b"port"] => property::int(ngx_inet_get_port(c.sockaddr) as i64),
            [b"destination", b"address"] => local_address(r)?,
            [b"destination", b"port"] => {
                local_address(r)?;
                property::int(ngx_inet_get_port((*req.connection).local_sockaddr) as i64)
            }
            [b"connection", b"id"] => property::int(c.number as i64),
            [b"connection", b"mtls"] => property::boolean(false),
            [b"upstream", b"address"] => last_upstream_address(r)?,
            [b"upstream", b"port"] => {
                let address = last_upstream_address(r)?;
                let port = address.rsplit(|b| *b == b':').next()?;
                property::int(std::str::from_utf8(port).ok()?.parse().ok()?)
            }
            [b"request", b"duration"] => {
                let now = ngx::ffi::ngx_timeofday();
                let millis = (now.sec - req.start_sec) as i64 * 1000 + now.msec as i64 - req.start_msec as i64;
                property::nanos(millis.max(0) as u128 * 1_000_000)
            }
            [b"ngx", name] => variable(r, name)?,
            _ => return None,
        })
    }
}

/// Sets `ngx.<variable>` when the variable is changeable (e.g. declared with `set`);
/// `Err(())` for anything else, which the host then keeps as a filter-local property.
pub unsafe fn set(r: *mut ngx_http_request_t, path: &[&[u8]], value: &[u8]) -> Result<(), ()> {
    // SAFETY: a live request; the variable found in the core module's hash is nginx's, and its value
    // is allocated in the request's pool, as nginx's `set` does.
    unsafe {
        let [b"ngx", name] = path else { return Err(()) };
        let mut lower = name.to_ascii_lowercase();
        let hash = ngx_hash_key(lower.as_mut_ptr(), lower.len());
        let cmcf = NgxHttpCoreModule::main_conf(&*r).ok_or(())?;
        let hash_table = &cmcf.variables_hash as *const _ as *mut _;
        let v = ngx_hash_find(hash_table, hash, lower.as_mut_ptr(), lower.len()) as *mut ngx_http_variable_t;
        let Some(v) = v.as_ref() else { return Err(()) };
        if v.flags & NGX_HTTP_VAR_CHANGEABLE as ngx_uint_t == 0 {
            return Err(());
        }
        let data = pool_str((*r).pool, value).ok_or(())?;
        let mut vv: ngx_variable_value_t = std::mem::zeroed();
        vv.data = data.data;
        vv.set_len(value.len() as u32);
        vv.set_valid(1);
        if let Some(set_handler) = v.set_handler {
            let slot = ngx_palloc((*r).pool, std::mem::size_of::<ngx_variable_value_t>()) as *mut ngx_variable_value_t;
            if slot.is_null() {
                return Err(());
            }
            slot.write(vv);
            set_handler(r, slot, v.data);
        } else if v.flags & NGX_HTTP_VAR_INDEXED as ngx_uint_t != 0 {
            *(*r).variables.add(v.index) = vv;
        } else {
            return Err(());
        }
        Ok(())
    }
}

/// A header map without its pseudo-headers, as Envoy's `request.headers` and
/// `response.headers` are.
fn without_pseudo(mut pairs: Pairs) -> Pairs {
    pairs.retain(|_, name, _| !crate::headers::is_pseudo(name));
    pairs
}

/// The address of the last upstream server tried. `$upstream_addr` lists every one, as
/// `a, b` for retries and `a : b` across internal redirects.
///
/// # Safety
/// `r` must be a live request.
unsafe fn last_upstream_address(r: *mut ngx_http_request_t) -> Option<Vec<u8>> {
    // SAFETY: a live request.
    unsafe {
        let all = String::from_utf8(variable(r, b"upstream_addr")?).ok()?;
        let last = all.rsplit([',', ' ']).find(|part| !part.is_empty() && *part != ":")?;
        (last != "-").then(|| last.as_bytes().to_vec())
    }
}

/// # Safety
/// `r` must be a live request.
unsafe fn variable(r: *mut ngx_http_request_t, name: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: a live request; nginx's variable functions return null or a value valid while the request
    // lives, whose `len` bytes at `data` are readable when found.
    unsafe {
        let mut lower = name.to_ascii_lowercase();
        let mut key = ngx_str_t { len: lower.len(), data: lower.as_mut_ptr() };
        let hash = ngx_hash_key(key.data, key.len);
        let value = ngx_http_get_variable(r, &mut key, hash);
        if value.is_null() || (*value).not_found() != 0 {
            return None;
        }
        Some(std::slice::from_raw_parts((*value).data, (*value).len() as usize).to_vec())
    }
}

/// # Safety
/// `r` must be a live request.
unsafe fn local_address(r: *mut ngx_http_request_t) -> Option<Vec<u8>> {
    // SAFETY: a live request on a live connection; `text` has room for any address (NGX_SOCKADDR_STRLEN).
    unsafe {
        let c = (*r).connection;
        let mut text = [0u8; SOCKADDR_TEXT_LEN];
        let mut s = ngx_str_t { len: text.len(), data: text.as_mut_ptr() };
        if ngx_connection_local_sockaddr(c, &mut s, 0) != 0 {
            return None;
        }
        let len = ngx_sock_ntop((*c).local_sockaddr, (*c).local_socklen, text.as_mut_ptr(), text.len(), 1);
        Some(text[..len].to_vec())
    }
}
