//! Request and response bodies as a filter sees them, over Envoy's two buffers: what earlier
//! body events buffered (because a filter paused them) and what the current event received.
//! A filter sees both joined, as in Envoy's own Wasm filter, where a filter that pauses the
//! body gets everything so far again with the next piece.

use crate::abi::{self, body_type, EnvoyBuffer, FilterEnvoyPtr, ModuleBuffer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    pub fn index(self) -> usize {
        self as usize
    }

    fn buffered(self) -> u32 {
        match self {
            Direction::Request => body_type::BUFFERED_REQUEST,
            Direction::Response => body_type::BUFFERED_RESPONSE,
        }
    }

    fn received(self) -> u32 {
        match self {
            Direction::Request => body_type::RECEIVED_REQUEST,
            Direction::Response => body_type::RECEIVED_RESPONSE,
        }
    }

    /// Whether the current event's data is the buffered body itself (an earlier filter
    /// paused and then let it go), so it must not be counted twice.
    ///
    /// # Safety
    /// `filter` must be a live stream of this thread.
    unsafe fn received_is_buffered(self, filter: FilterEnvoyPtr) -> bool {
        // SAFETY: a live stream of this thread (per the caller).
        unsafe {
            match self {
                Direction::Request => abi::envoy_dynamic_module_callback_http_received_buffered_request_body(filter),
                Direction::Response => abi::envoy_dynamic_module_callback_http_received_buffered_response_body(filter),
            }
        }
    }
}

/// The body so far. `in_event`: during this direction's body event (only then does the
/// received data exist).
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn read(filter: FilterEnvoyPtr, direction: Direction, in_event: bool) -> Vec<u8> {
    let mut body = Vec::new();
    // SAFETY: a live stream of this thread (per the caller).
    unsafe {
        let received_is_buffered = in_event && direction.received_is_buffered(filter);
        if !received_is_buffered {
            append_chunks(filter, direction.buffered(), &mut body);
        }
        if in_event {
            append_chunks(filter, direction.received(), &mut body);
        }
    }
    body
}

/// The size of [`read`]'s answer, without copying.
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn size(filter: FilterEnvoyPtr, direction: Direction, in_event: bool) -> usize {
    // SAFETY: a live stream of this thread (per the caller).
    unsafe {
        let received = if in_event {
            abi::envoy_dynamic_module_callback_http_get_body_size(filter, direction.received())
        } else {
            0
        };
        if in_event && direction.received_is_buffered(filter) {
            return received;
        }
        abi::envoy_dynamic_module_callback_http_get_body_size(filter, direction.buffered()) + received
    }
}

/// Replaces the body so far with `bytes`.
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn write(filter: FilterEnvoyPtr, direction: Direction, in_event: bool, bytes: &[u8]) -> bool {
    let buffered = direction.buffered();
    // SAFETY: a live stream of this thread (per the caller); `bytes` outlives the append,
    // which copies it.
    unsafe {
        let drained = abi::envoy_dynamic_module_callback_http_drain_body(filter, buffered, usize::MAX)
            || abi::envoy_dynamic_module_callback_http_get_body_chunks_size(filter, buffered) == 0;
        let target = if in_event {
            abi::envoy_dynamic_module_callback_http_drain_body(filter, direction.received(), usize::MAX);
            direction.received()
        } else {
            buffered
        };
        drained
            && (bytes.is_empty()
                || abi::envoy_dynamic_module_callback_http_append_body(filter, target, ModuleBuffer::of(bytes)))
    }
}

/// Appends the chunks of Envoy's body `body` to `out`.
///
/// # Safety
/// `filter` must be a live stream of this thread.
unsafe fn append_chunks(filter: FilterEnvoyPtr, body: u32, out: &mut Vec<u8>) {
    // SAFETY: a live stream (per the caller); `chunks` has room for `count` buffers, and the
    // ones Envoy fills in are copied before anything changes the body.
    unsafe {
        let count = abi::envoy_dynamic_module_callback_http_get_body_chunks_size(filter, body);
        if count == 0 {
            return;
        }
        let mut chunks = vec![EnvoyBuffer::EMPTY; count];
        if abi::envoy_dynamic_module_callback_http_get_body_chunks(filter, body, chunks.as_mut_ptr()) {
            chunks.iter().for_each(|chunk| out.extend_from_slice(chunk.as_slice()));
        }
    }
}
