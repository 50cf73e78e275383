//! The header-map functions. HTTP call response headers/trailers and gRPC metadata are held
//! by the host during their callback; request/response maps belong to the embedding.

use std::borrow::Cow;

use wasmtime::Linker;

use super::abi_fn;
use crate::embedding::append_first_value;
use crate::guest::{AbiResult, Guest};
use crate::serialization::serialize_map;
use crate::session::{CallData, HostState};
use crate::types::{AbiVersion, MapType, Status};
use crate::Pairs;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_get_header_map_pairs", |g, map: i32, ret_ptr: i32, ret_len: i32| {
        // An empty map is returned as (0, 0), as Envoy does.
        let bytes = with_map(&mut g, map_type(map)?, |pairs| match pairs.is_empty() {
            true => Vec::new(),
            false => serialize_map(pairs),
        })?;
        g.return_bytes(&bytes, ret_ptr, ret_len)
    });
    abi_fn!(linker, "proxy_set_header_map_pairs", |g, map: i32, ptr: i32, len: i32| {
        let map = embedding_map(map)?;
        let pairs = read_header_map(&mut g, ptr, len)?;
        Ok(g.embedding()?.set_header_map(map, pairs)?)
    });
    abi_fn!(linker, "proxy_get_header_map_size", |g, map: i32, ret_size: i32| {
        // The map's size in bytes (keys and values), as Envoy answers.
        let size = with_map(&mut g, map_type(map)?, |pairs| pairs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>())?;
        g.write_u32(ret_size, size as u32)
    });
    abi_fn!(linker, "proxy_get_header_map_value", |g,
                                                   map: i32,
                                                   key_ptr: i32,
                                                   key_len: i32,
                                                   ret_ptr: i32,
                                                   ret_len: i32| {
        let map = map_type(map)?;
        let mut value = std::mem::take(&mut g.state().header_value);
        value.clear();
        let found = g.with_bytes([(key_ptr, key_len)], |state, [key]| match host_map(&state.call, map) {
            Some(pairs) => Ok(append_first_value(pairs, key, &mut value)),
            None => Ok(state.effective()?.embedding.header_value(map, key, &mut value)?),
        });
        // ABI 0.1.0 hosts answered a missing header with an empty value.
        let returned = match found {
            Ok(true) => g.return_bytes(&value, ret_ptr, ret_len),
            Ok(false) if g.state().abi == AbiVersion::V0_1_0 => g.return_bytes(&[], ret_ptr, ret_len),
            Ok(false) => Err(Status::NotFound.into()),
            Err(e) => Err(e),
        };
        g.state().header_value = value;
        returned
    });
    abi_fn!(linker, "proxy_add_header_map_value", |g,
                                                   map: i32,
                                                   key_ptr: i32,
                                                   key_len: i32,
                                                   value_ptr: i32,
                                                   value_len: i32| {
        let map = embedding_map(map)?;
        g.with_bytes([(key_ptr, key_len), (value_ptr, value_len)], |state, [key, value]| {
            Ok(state.effective()?.embedding.add_header(map, &lowercase(key), value)?)
        })
    });
    abi_fn!(
        linker,
        "proxy_replace_header_map_value",
        |g, map: i32, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32| {
            let map = embedding_map(map)?;
            g.with_bytes([(key_ptr, key_len), (value_ptr, value_len)], |state, [key, value]| {
                Ok(state.effective()?.embedding.replace_header(map, &lowercase(key), value)?)
            })
        }
    );
    abi_fn!(linker, "proxy_remove_header_map_value", |g, map: i32, key_ptr: i32, key_len: i32| {
        let map = embedding_map(map)?;
        g.with_bytes([(key_ptr, key_len)], |state, [key]| {
            Ok(state.effective()?.embedding.remove_header(map, &lowercase(key))?)
        })
    });
    Ok(())
}

fn map_type(raw: i32) -> Result<MapType, Status> {
    MapType::from_raw(raw).ok_or(Status::BadArgument)
}

/// A map the guest may modify: only the embedding's request/response maps are writable.
fn embedding_map(raw: i32) -> Result<MapType, Status> {
    match map_type(raw)? {
        map @ (MapType::HttpRequestHeaders
        | MapType::HttpRequestTrailers
        | MapType::HttpResponseHeaders
        | MapType::HttpResponseTrailers) => Ok(map),
        _ => Err(Status::BadArgument),
    }
}

/// The maps the host holds itself during a callback.
fn host_map(call: &CallData, map: MapType) -> Option<&Pairs> {
    match map {
        MapType::HttpCallResponseHeaders => Some(&call.http_response_headers),
        MapType::HttpCallResponseTrailers => Some(&call.http_response_trailers),
        MapType::GrpcReceiveInitialMetadata | MapType::GrpcReceiveTrailingMetadata => Some(&call.grpc_metadata),
        _ => None,
    }
}

/// What `f` makes of a map: the host's own (a call's answer) or the embedding's.
fn with_map<T>(g: &mut Guest<'_, '_>, map: MapType, f: impl FnOnce(&Pairs) -> T) -> AbiResult<T> {
    match host_map(&g.state().call, map) {
        Some(pairs) => Ok(f(pairs)),
        None => Ok(f(&g.embedding()?.header_map(map)?)),
    }
}

/// A header name in lower case, copied only when it has capitals.
fn lowercase(key: &[u8]) -> Cow<'_, [u8]> {
    match key.iter().any(u8::is_ascii_uppercase) {
        true => Cow::Owned(key.to_ascii_lowercase()),
        false => Cow::Borrowed(key),
    }
}

/// A header map from the filter's memory, its names in lower case: header names a filter
/// writes are stored in lower case, as Envoy stores them.
pub(super) fn read_header_map(g: &mut Guest<'_, '_>, ptr: i32, len: i32) -> AbiResult<Pairs> {
    let mut pairs = g.read_map(ptr, len)?;
    pairs.lowercase_names();
    Ok(pairs)
}
