//! TLS for http calls whose `:scheme` is `https` and gRPC calls to `grpcs://`, on nginx's own
//! TLS layer: one client context per configuration (the `wasm {}` block's
//! `tls_trusted_certificate` and `tls_verify`), SNI from the call's `:authority`, the session
//! kept by the upstream block's balancer, the server's certificate checked against the
//! trusted ones and the authority's host name, and for gRPC `h2` negotiated (ALPN).

use std::ffi::{c_void, CStr, CString};
use std::ptr;

use ngx::ffi::{
    ngx_conf_t, ngx_connection_t, ngx_int_t, ngx_pcalloc, ngx_peer_connection_t, ngx_pool_cleanup_add,
    ngx_ssl_check_host, ngx_ssl_cleanup_ctx, ngx_ssl_create, ngx_ssl_create_connection, ngx_ssl_handshake, ngx_ssl_t,
    ngx_ssl_trusted_certificate, ngx_str_t, NGX_SSL_TLSv1_2, NGX_SSL_TLSv1_3, SSL_CTX_set_default_verify_paths,
    SSL_ctrl, SSL_get0_alpn_selected, SSL_get_servername, SSL_get_verify_result, SSL_set_alpn_protos,
    TLSEXT_NAMETYPE_host_name, X509_verify_cert_error_string, NGX_AGAIN, NGX_OK, NGX_SSL_BUFFER, NGX_SSL_CLIENT,
    SSL_CTRL_SET_TLSEXT_HOSTNAME,
};

use crate::ffi::pool_str;

/// The ALPN protocol a gRPC call negotiates: HTTP/2.
pub const HTTP2: &[u8] = b"h2";

/// How deep a server's certificate chain may be.
const VERIFY_DEPTH: ngx_int_t = 4;

/// The configuration's TLS client context.
pub struct TlsClient {
    ssl: *mut ngx_ssl_t,
    verify: bool,
}

/// Makes the client context while the configuration is read: it trusts the CA certificates
/// in `trusted` (PEM), or the system's when not given; `verify` off takes any certificate.
///
/// # Safety
/// `cf` must be nginx's configuration being parsed.
pub unsafe fn client(cf: *mut ngx_conf_t, trusted: Option<&[u8]>, verify: bool) -> Result<TlsClient, String> {
    // SAFETY: the configuration's pool outlives the context, which its cleanup frees.
    unsafe {
        let ssl = ngx_pcalloc((*cf).pool, size_of::<ngx_ssl_t>()) as *mut ngx_ssl_t;
        if ssl.is_null() {
            return Err("out of memory".into());
        }
        (*ssl).log = (*cf).log;
        let protocols = (NGX_SSL_TLSv1_2 | NGX_SSL_TLSv1_3) as usize;
        if ngx_ssl_create(ssl, protocols, ptr::null_mut()) != NGX_OK as ngx_int_t {
            return Err("cannot make the TLS context of http calls".into());
        }
        let cleanup = ngx_pool_cleanup_add((*cf).pool, 0);
        if cleanup.is_null() {
            return Err("out of memory".into());
        }
        (*cleanup).handler = Some(ngx_ssl_cleanup_ctx);
        (*cleanup).data = ssl as *mut c_void;
        match trusted {
            Some(path) => {
                let mut path = pool_str((*cf).pool, path).ok_or("out of memory")?;
                if ngx_ssl_trusted_certificate(cf, ssl, &mut path, VERIFY_DEPTH) != NGX_OK as ngx_int_t {
                    return Err("cannot load tls_trusted_certificate (see the error above)".into());
                }
            }
            None => {
                SSL_CTX_set_default_verify_paths((*ssl).ctx);
            }
        }
        Ok(TlsClient { ssl, verify })
    }
}

/// The SNI name a connection to `host` asks for: none for an address.
fn server_name(host: &str) -> Option<&str> {
    host.parse::<std::net::IpAddr>().is_err().then_some(host)
}

/// Whether a kept TLS connection was made for `host` (its SNI, none for an address).
///
/// # Safety
/// `c` must be a live connection with a TLS layer.
pub unsafe fn serves(c: *mut ngx_connection_t, host: &str) -> bool {
    // SAFETY: a live TLS connection; OpenSSL returns its SNI name or null.
    unsafe {
        let name = SSL_get_servername((*(*c).ssl).connection, TLSEXT_NAMETYPE_host_name as _);
        let name = if name.is_null() { "" } else { CStr::from_ptr(name).to_str().unwrap_or_default() };
        name == server_name(host).unwrap_or_default()
    }
}

impl TlsClient {
    /// Starts the handshake on `c` for `host` (SNI unless an address), offering `protocol`
    /// (ALPN) if given, resuming the session `pc`'s balancer kept. `Ok(true)`: done;
    /// `Ok(false)`: `on_done` runs when it is.
    ///
    /// # Safety
    /// `c` must be `pc`'s live connection, with a pool.
    pub unsafe fn handshake(
        &self,
        pc: *mut ngx_peer_connection_t,
        c: *mut ngx_connection_t,
        host: &str,
        protocol: Option<&[u8]>,
        on_done: unsafe extern "C" fn(*mut ngx_connection_t),
    ) -> Result<bool, String> {
        // SAFETY: a live connection with a pool (the caller's contract); the context lives
        // as long as the configuration that made it.
        unsafe {
            let flags = (NGX_SSL_BUFFER | NGX_SSL_CLIENT) as usize;
            if ngx_ssl_create_connection(self.ssl, c, flags) != NGX_OK as ngx_int_t {
                return Err("TLS failed".into());
            }
            if let Some(host) = server_name(host) {
                let name = CString::new(host).map_err(|_| "invalid TLS server name")?;
                let (command, kind) = (SSL_CTRL_SET_TLSEXT_HOSTNAME as i32, TLSEXT_NAMETYPE_host_name as _);
                SSL_ctrl((*(*c).ssl).connection, command, kind, name.as_ptr() as *mut c_void);
            }
            if let Some(protocol) = protocol {
                // ALPN's wire form: each protocol name after its length.
                let offer = [&[protocol.len() as u8][..], protocol].concat();
                if SSL_set_alpn_protos((*(*c).ssl).connection, offer.as_ptr(), offer.len() as _) != 0 {
                    return Err("TLS failed to offer ALPN".into());
                }
            }
            if let Some(set_session) = (*pc).set_session {
                set_session(pc, (*pc).data);
            }
            match ngx_ssl_handshake(c) {
                rc if rc == NGX_AGAIN as ngx_int_t => {
                    (*(*c).ssl).handler = Some(on_done);
                    Ok(false)
                }
                _ => Ok(true),
            }
        }
    }

    /// After the handshake: whether it succeeded, the server is `host`'s (unless
    /// `tls_verify off`) and chose `protocol` when one was offered; then keeps the session
    /// for the next call to that peer.
    ///
    /// # Safety
    /// `c` must be `pc`'s live connection, after its handshake.
    pub unsafe fn established(
        &self,
        pc: *mut ngx_peer_connection_t,
        c: *mut ngx_connection_t,
        host: &str,
        protocol: Option<&[u8]>,
    ) -> Result<(), String> {
        // SAFETY: a live connection whose TLS layer `handshake` made.
        unsafe {
            if (*c).ssl.is_null() || (*(*c).ssl).handshaked() == 0 {
                return Err("TLS handshake failed".into());
            }
            if self.verify {
                let result = SSL_get_verify_result((*(*c).ssl).connection);
                if result != 0 {
                    let reason = CStr::from_ptr(X509_verify_cert_error_string(result)).to_string_lossy();
                    return Err(format!("TLS certificate verify error: ({result}:{reason})"));
                }
                let mut name = ngx_str_t { len: host.len(), data: host.as_ptr() as *mut u8 };
                if ngx_ssl_check_host(c, &mut name) != NGX_OK as ngx_int_t {
                    return Err(format!("TLS certificate does not match \"{host}\""));
                }
            }
            if let Some(protocol) = protocol {
                let (mut chosen, mut len) = (ptr::null::<u8>(), 0);
                SSL_get0_alpn_selected((*(*c).ssl).connection, &mut chosen, &mut len);
                if chosen.is_null() || std::slice::from_raw_parts(chosen, len as usize) != protocol {
                    let wanted = String::from_utf8_lossy(protocol);
                    return Err(format!("the TLS server did not agree to speak {wanted} (ALPN)"));
                }
            }
            if let Some(save_session) = (*pc).save_session {
                save_session(pc, (*pc).data);
            }
            Ok(())
        }
    }
}
