//! A serialized header map from a guest: parsing never panics, and what parses serializes
//! back to a map that parses to the same pairs.
#![no_main]

use inwasm_host::serialization::{deserialize_map, serialize_map};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(pairs) = deserialize_map(bytes) {
        assert_eq!(deserialize_map(&serialize_map(&pairs)).expect("a serialized map parses"), pairs);
    }
});
