//! A property path from a guest (segments joined by NUL): splitting never panics, and the
//! segments joined again give the path back (without its trailing NUL).
#![no_main]

use inwasm_host::serialization::split_property_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &[u8]| {
    let segments = split_property_path(path);
    let joined = segments.join(&0u8);
    assert_eq!(joined.as_slice(), path.strip_suffix(b"\0").unwrap_or(path));
});
