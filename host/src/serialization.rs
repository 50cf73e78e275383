//! Wire formats of the ABI: header maps, property paths and property values, as Envoy
//! encodes them.

use crate::types::Status;
use crate::Pairs;

/// The largest serialized map Envoy accepts from a guest.
pub const MAX_MAP_BYTES: usize = 1 << 20;
/// The most pairs Envoy accepts in one serialized map.
pub const MAX_MAP_PAIRS: usize = 1024;

/// Serializes pairs: u32 count; per pair (u32 key length, u32 value length); then per pair
/// key, NUL, value, NUL. All integers little endian.
pub fn serialize_map(pairs: &Pairs) -> Vec<u8> {
    let (data, lengths) = pairs.serialized_parts();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data.len());
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (key, value) in lengths {
        out.extend_from_slice(&(key as u32).to_le_bytes());
        out.extend_from_slice(&(value as u32).to_le_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Parses a serialized map from a guest. An empty buffer is an empty map. Anything else must
/// be well formed, within the caps, and consumed exactly; otherwise `SerializationFailure`.
pub fn deserialize_map(bytes: &[u8]) -> Result<Pairs, Status> {
    if bytes.is_empty() {
        return Ok(Pairs::new());
    }
    if bytes.len() > MAX_MAP_BYTES {
        return Err(Status::SerializationFailure);
    }
    let bad = Status::SerializationFailure;
    let count = read_u32(bytes, 0).ok_or(bad)? as usize;
    if count > MAX_MAP_PAIRS {
        return Err(bad);
    }
    let data = 4 + count * 8;
    if data > bytes.len() {
        return Err(bad);
    }
    let length = |at: usize| read_u32(bytes, at).expect("within the lengths table") as usize;
    let lengths = (0..count).map(|i| (length(4 + i * 8), length(8 + i * 8)));
    Pairs::from_serialized_parts(&bytes[data..], lengths).ok_or(bad)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

/// Splits a property path (`request\0path`) into its segments. A trailing NUL is ignored.
pub fn split_property_path(path: &[u8]) -> Vec<&[u8]> {
    let path = path.strip_suffix(b"\0").unwrap_or(path);
    path.split(|b| *b == 0).collect()
}

/// Property value encodings, for embeddings.
pub mod property {
    /// Integers are 8 bytes little endian.
    pub fn int(value: i64) -> Vec<u8> {
        value.to_le_bytes().to_vec()
    }
    /// Booleans are one byte, 0 or 1.
    pub fn boolean(value: bool) -> Vec<u8> {
        vec![value as u8]
    }
    /// Durations and timestamps are nanoseconds, as integers.
    pub fn nanos(nanos: u128) -> Vec<u8> {
        int(nanos.min(i64::MAX as u128) as i64)
    }
    /// Maps (e.g. `request.headers`) use the header-map serialization.
    pub fn map(pairs: &crate::Pairs) -> Vec<u8> {
        super::serialize_map(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Pairs {
        items.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn map_layout_matches_envoy() {
        let bytes = serialize_map(&pairs(&[("a", "bc"), ("", "")]));
        let expected: Vec<u8> = [
            &2u32.to_le_bytes()[..],
            &1u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            b"a\0bc\0\0\0",
        ]
        .concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn map_round_trips_binary_values() {
        let original: Pairs =
            [(b"k\xff".to_vec(), vec![1, 2, 3]), (b":path".to_vec(), b"/".to_vec())].into_iter().collect();
        assert_eq!(deserialize_map(&serialize_map(&original)).unwrap(), original);
    }

    #[test]
    fn empty_buffer_is_empty_map() {
        assert_eq!(deserialize_map(&[]).unwrap(), Pairs::new());
        assert_eq!(deserialize_map(&serialize_map(&Pairs::new())).unwrap(), Pairs::new());
    }

    #[test]
    fn malformed_maps_are_rejected() {
        let good = serialize_map(&pairs(&[("key", "value")]));
        let mut trailing = good.clone();
        trailing.push(0);
        let mut no_nul = good.clone();
        no_nul[4 + 8 + 3] = b'x';
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut huge_len = good.clone();
        huge_len[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        for bad in [&good[..good.len() - 1], &trailing, &no_nul, &huge_count, &huge_len, &good[..3]] {
            assert_eq!(deserialize_map(bad), Err(Status::SerializationFailure), "{bad:?}");
        }
    }

    #[test]
    fn map_caps_are_enforced() {
        let many: Pairs = (0..=MAX_MAP_PAIRS).map(|i| (i.to_string().into_bytes(), vec![])).collect();
        assert_eq!(deserialize_map(&serialize_map(&many)), Err(Status::SerializationFailure));
        let big: Pairs = [(b"k".to_vec(), vec![b'v'; MAX_MAP_BYTES])].into_iter().collect();
        assert_eq!(deserialize_map(&serialize_map(&big)), Err(Status::SerializationFailure));
    }

    #[test]
    fn property_paths_split_on_nul() {
        assert_eq!(split_property_path(b"request\0path"), vec![&b"request"[..], b"path"]);
        assert_eq!(split_property_path(b"plugin_name\0"), vec![&b"plugin_name"[..]]);
    }
}
