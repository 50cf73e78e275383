//! Header maps through Envoy's callbacks. Values are copied out: what Envoy hands over is
//! only valid until the next change to the map.

use inwasm_host::{MapType, Pairs};

use crate::abi::{self, header_type, EnvoyBuffer, EnvoyHeader, FilterEnvoyPtr, ModuleBuffer};

/// Envoy's header map type behind a proxy-wasm map, if it has one.
pub fn envoy_map(map: MapType) -> Option<u32> {
    match map {
        MapType::HttpRequestHeaders => Some(header_type::REQUEST_HEADERS),
        MapType::HttpRequestTrailers => Some(header_type::REQUEST_TRAILERS),
        MapType::HttpResponseHeaders => Some(header_type::RESPONSE_HEADERS),
        MapType::HttpResponseTrailers => Some(header_type::RESPONSE_TRAILERS),
        _ => None,
    }
}

/// Every entry of the map, in order, pseudo-headers first (as Envoy keeps them).
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn all(filter: FilterEnvoyPtr, map: u32) -> Pairs {
    // SAFETY: a live stream (per the caller).
    unsafe {
        let entries = count(filter, map);
        with_entries(filter, map, entries, |entries| {
            entries.iter().map(|h| (h.key.as_slice(), h.value.as_slice())).collect()
        })
    }
}

/// Whether the map holds `key`, found by walking Envoy's list of entries; `None` for a map of
/// more than 16 entries, where Envoy's own index (built once per map, then a hash lookup)
/// costs less over a filter's several edits than a walk at each.
///
/// # Safety
/// `filter` must be a live stream of this thread.
unsafe fn contains(filter: FilterEnvoyPtr, map: u32, key: &[u8]) -> Option<bool> {
    const MOST_WALKED: usize = 16;
    // SAFETY: a live stream (per the caller).
    unsafe {
        let entries = count(filter, map);
        (entries <= MOST_WALKED).then(|| {
            with_entries(filter, map, entries, |entries| {
                entries.iter().any(|h| h.key.as_slice().eq_ignore_ascii_case(key))
            })
        })
    }
}

/// `read` over the map's `count` entries as Envoy hands them over (none if it refuses), in
/// a buffer on the stack for a map of up to 32 entries.
///
/// # Safety
/// `filter` must be a live stream of this thread, `count` the map's number of entries, and
/// `read` must not change the map (the entries point into it).
unsafe fn with_entries<R>(filter: FilterEnvoyPtr, map: u32, count: usize, read: impl FnOnce(&[EnvoyHeader]) -> R) -> R {
    const ON_STACK: usize = 32;
    // SAFETY: a live stream (per the caller); `entries` has room for `count` headers, which
    // Envoy fills in and which are read before anything changes the map (per the caller).
    unsafe {
        let empty = EnvoyHeader { key: EnvoyBuffer::EMPTY, value: EnvoyBuffer::EMPTY };
        let mut on_stack = [empty; ON_STACK];
        let mut on_heap = Vec::new();
        let entries = if count <= ON_STACK {
            &mut on_stack[..count]
        } else {
            on_heap.resize(count, empty);
            &mut on_heap[..]
        };
        let filled =
            count > 0 && abi::envoy_dynamic_module_callback_http_get_headers(filter, map, entries.as_mut_ptr());
        read(if filled { entries } else { &[] })
    }
}

/// The number of entries in the map.
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn count(filter: FilterEnvoyPtr, map: u32) -> usize {
    // SAFETY: a live stream (per the caller).
    unsafe { abi::envoy_dynamic_module_callback_http_get_headers_size(filter, map) }
}

/// The first value of `key`, in Envoy's own memory.
///
/// # Safety
/// `filter` must be a live stream of this thread, and the value is read before anything
/// changes the map.
pub unsafe fn value<'a>(filter: FilterEnvoyPtr, map: u32, key: &[u8]) -> Option<&'a [u8]> {
    let mut result = EnvoyBuffer::EMPTY;
    let mut values = 0usize;
    // SAFETY: a live stream (per the caller); `key` outlives the call, `result` and `values`
    // are valid places to write, and the value found is read before the map changes (per the
    // caller).
    unsafe {
        let found = abi::envoy_dynamic_module_callback_http_get_header(
            filter,
            map,
            ModuleBuffer::of(key),
            &mut result,
            0,
            &mut values,
        );
        (found && values > 0).then(|| result.as_slice())
    }
}

/// Adds a value for `key`. Envoy refuses to add an empty value but sets one, so an empty
/// value for a header not yet there is set instead.
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn add(filter: FilterEnvoyPtr, map: u32, key: &[u8], value: &[u8]) -> bool {
    // SAFETY: a live stream (per the caller); `key` and `value` outlive the calls, which copy
    // them.
    unsafe {
        if value.is_empty() && self::value(filter, map, key).is_none() {
            return set(filter, map, key, Some(value));
        }
        abi::envoy_dynamic_module_callback_http_add_header(filter, map, ModuleBuffer::of(key), ModuleBuffer::of(value))
    }
}

/// Sets `key` to `value` alone (`None` removes it), as `set`, for one header a filter sets
/// or removes. Envoy looks up a header outside its fixed set (any header a filter makes up) by
/// first building a hash index of the whole map, once the map has three entries or more; that
/// costs a request more than walking a short list. So a header a map of up to 16 entries does
/// not hold is added (or, to be removed, left alone) without Envoy's lookup.
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn set_one(filter: FilterEnvoyPtr, map: u32, key: &[u8], value: Option<&[u8]>) -> bool {
    // SAFETY: a live stream (per the caller); `key` and `value` outlive the calls, which copy
    // them.
    unsafe {
        match value {
            Some(value) if !value.is_empty() && contains(filter, map, key) == Some(false) => {
                add(filter, map, key, value)
            }
            None if contains(filter, map, key) == Some(false) => true,
            _ => set(filter, map, key, value),
        }
    }
}

/// Sets `key` to `value` alone (`None` removes it).
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn set(filter: FilterEnvoyPtr, map: u32, key: &[u8], value: Option<&[u8]>) -> bool {
    let value = value.map_or(ModuleBuffer::NULL, ModuleBuffer::of);
    // SAFETY: a live stream (per the caller); `key` and `value` outlive the call, which copies
    // them (a null value removes the header).
    unsafe { abi::envoy_dynamic_module_callback_http_set_header(filter, map, ModuleBuffer::of(key), value) }
}

/// Makes the map hold exactly `pairs`.
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn replace_all(filter: FilterEnvoyPtr, map: u32, pairs: &Pairs) -> bool {
    // SAFETY: a live stream (per the caller), for each read and write of the map.
    unsafe {
        let current = all(filter, map);
        let mut keys: Vec<&[u8]> = current.iter().map(|(k, _)| k).collect();
        keys.dedup();
        let kept = |key: &[u8]| pairs.iter().any(|(k, _)| k.eq_ignore_ascii_case(key));
        let removed = keys.iter().filter(|k| !kept(k)).all(|k| set(filter, map, k, None));
        let mut written: Vec<&[u8]> = Vec::new();
        let stored = pairs.iter().all(|(key, value)| {
            if written.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                add(filter, map, key, value)
            } else {
                written.push(key);
                set(filter, map, key, Some(value))
            }
        });
        removed && stored
    }
}
