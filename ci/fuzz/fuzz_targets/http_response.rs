//! The bytes an upstream answers an http call with, as they arrive in pieces: reading never
//! panics, whether the connection stays open or closes, a complete response has a status,
//! and its body is never larger than the reader allows.
#![no_main]

use inwasm_host::http1_client::{Progress, ResponseReader};
use libfuzzer_sys::fuzz_target;

const MAX_BODY: usize = 1 << 16;

fuzz_target!(|input: &[u8]| {
    // The first byte chooses where the bytes are cut into pieces, the second a HEAD request.
    let (Some(&step), Some(&head)) = (input.first(), input.get(1)) else { return };
    let bytes = &input[2..];
    let mut reader = ResponseReader::new(head & 1 == 1, MAX_BODY);
    let mut progress = Ok(Progress::Reading);
    for piece in bytes.chunks(usize::from(step.max(1))) {
        progress = reader.read(piece);
        if progress != Ok(Progress::Reading) {
            break;
        }
    }
    if progress == Ok(Progress::Reading) {
        progress = reader.closed();
    }
    if progress == Ok(Progress::Complete) {
        let (response, _) = reader.take();
        assert!(response.headers.iter().any(|(k, _)| k == b":status"));
        assert!(response.body.len() <= MAX_BODY);
    }
});
