//! Header-like pairs (headers, trailers, gRPC metadata) as the ABI carries them: raw bytes,
//! order kept, duplicates allowed.
//!
//! All names and values live in one buffer, laid out as the data section of the ABI's
//! serialized map (`name NUL value NUL` per pair), with where each pair ends beside it. A map
//! of any size is then two allocations instead of two per pair, and serializing it for a guest
//! or reading one from a guest copies the buffer whole.

use std::fmt;

#[derive(Clone, Default)]
pub struct Pairs {
    /// `name NUL value NUL` for each pair, back to back.
    bytes: Vec<u8>,
    /// For each pair, where its name ends and where its value ends (each at its NUL).
    ends: Vec<(usize, usize)>,
}

impl Pairs {
    pub fn new() -> Pairs {
        Pairs::default()
    }

    /// Room for `pairs` pairs whose names and values take `bytes` bytes in all.
    pub fn with_capacity(pairs: usize, bytes: usize) -> Pairs {
        Pairs { bytes: Vec::with_capacity(bytes + 2 * pairs), ends: Vec::with_capacity(pairs) }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Room for `pairs` more pairs whose names and values take `bytes` more bytes in all.
    pub fn reserve(&mut self, pairs: usize, bytes: usize) {
        self.bytes.reserve(bytes + 2 * pairs);
        self.ends.reserve(pairs);
    }

    pub fn push(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        self.push_with(name.as_ref(), value.len(), |bytes| bytes.extend_from_slice(value));
    }

    /// Adds a pair whose value is `value` in decimal (a status, a length), written in place.
    pub fn push_number(&mut self, name: impl AsRef<[u8]>, value: u64) {
        use std::io::Write;
        self.push_with(name.as_ref(), 20, |bytes| {
            let _ = write!(bytes, "{value}");
        });
    }

    /// Adds a pair named `name` whose value `write_value` appends (about `value_len` bytes).
    fn push_with(&mut self, name: &[u8], value_len: usize, write_value: impl FnOnce(&mut Vec<u8>)) {
        self.bytes.reserve(name.len() + value_len + 2);
        self.bytes.extend_from_slice(name);
        let name_end = self.bytes.len();
        self.bytes.push(0);
        write_value(&mut self.bytes);
        self.ends.push((name_end, self.bytes.len()));
        self.bytes.push(0);
    }

    /// The pair at `index`, as (name, value).
    pub fn get(&self, index: usize) -> Option<(&[u8], &[u8])> {
        let (name_end, value_end) = *self.ends.get(index)?;
        let start = self.start(index);
        Some((&self.bytes[start..name_end], &self.bytes[name_end + 1..value_end]))
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter { pairs: self, next: 0, end: self.len() }
    }

    /// The value of the first pair whose name is `name` in any ASCII case.
    pub fn first_value(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The value of the first pair named exactly `name`.
    pub fn exact_value(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Where the first pair named `name` in any ASCII case is.
    pub fn position(&self, name: &[u8]) -> Option<usize> {
        self.iter().position(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Replaces the name of the pair at `index`.
    pub fn set_name(&mut self, index: usize, name: &[u8]) {
        let start = self.start(index);
        let name_end = self.ends[index].0;
        self.splice(index, start..name_end, name, true);
    }

    /// Replaces the value of the pair at `index`.
    pub fn set_value(&mut self, index: usize, value: &[u8]) {
        let (name_end, value_end) = self.ends[index];
        self.splice(index, name_end + 1..value_end, value, false);
    }

    /// Keeps the pairs for which `keep(index, name, value)` holds, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(usize, &[u8], &[u8]) -> bool) {
        let mut write = 0;
        let mut kept = 0;
        for index in 0..self.len() {
            let (name, value) = self.get(index).expect("in range");
            if !keep(index, name, value) {
                continue;
            }
            let start = self.start(index);
            let (name_end, value_end) = self.ends[index];
            self.bytes.copy_within(start..value_end + 1, write);
            let shift = start - write;
            self.ends[kept] = (name_end - shift, value_end - shift);
            write += value_end + 1 - start;
            kept += 1;
        }
        self.bytes.truncate(write);
        self.ends.truncate(kept);
    }

    /// Lower-cases every name in place (the values are left as they are).
    pub fn lowercase_names(&mut self) {
        for index in 0..self.len() {
            let start = self.start(index);
            self.bytes[start..self.ends[index].0].make_ascii_lowercase();
        }
    }

    /// The data section of the serialized map, and each pair's name and value lengths.
    pub fn serialized_parts(&self) -> (&[u8], impl Iterator<Item = (usize, usize)> + '_) {
        (&self.bytes, self.iter().map(|(name, value)| (name.len(), value.len())))
    }

    /// Pairs from a serialized map's data section and its (name, value) lengths, or `None`
    /// when the lengths do not describe `data` exactly (each field followed by a NUL).
    pub fn from_serialized_parts(data: &[u8], lengths: impl ExactSizeIterator<Item = (usize, usize)>) -> Option<Pairs> {
        let mut ends = Vec::with_capacity(lengths.len());
        let mut cursor = 0usize;
        for (name_len, value_len) in lengths {
            let name_end = cursor.checked_add(name_len)?;
            let value_end = name_end.checked_add(1)?.checked_add(value_len)?;
            if *data.get(name_end)? != 0 || *data.get(value_end)? != 0 {
                return None;
            }
            ends.push((name_end, value_end));
            cursor = value_end + 1;
        }
        (cursor == data.len()).then(|| Pairs { bytes: data.to_vec(), ends })
    }

    fn start(&self, index: usize) -> usize {
        match index {
            0 => 0,
            _ => self.ends[index - 1].1 + 1,
        }
    }

    /// Puts `with` where `range` (a name, or a value, of the pair at `index`) was, and moves
    /// the ends after it.
    fn splice(&mut self, index: usize, range: std::ops::Range<usize>, with: &[u8], is_name: bool) {
        let old_len = range.len();
        self.bytes.splice(range, with.iter().copied());
        let moved = |at: usize| at + with.len() - old_len;
        if is_name {
            self.ends[index].0 = moved(self.ends[index].0);
        }
        self.ends[index].1 = moved(self.ends[index].1);
        for end in &mut self.ends[index + 1..] {
            *end = (moved(end.0), moved(end.1));
        }
    }
}

/// Pairs are equal when they hold the same pairs in the same order.
impl PartialEq for Pairs {
    fn eq(&self, other: &Pairs) -> bool {
        self.ends.len() == other.ends.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Pairs {}

impl fmt::Debug for Pairs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        f.debug_list().entries(self.iter().map(|(name, value)| (text(name), text(value)))).finish()
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Pairs {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Pairs {
        let mut pairs = Pairs::new();
        pairs.extend(iter);
        pairs
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> Extend<(K, V)> for Pairs {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (name, value) in iter {
            self.push(name, value);
        }
    }
}

impl<'a> IntoIterator for &'a Pairs {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The pairs in order, as (name, value).
#[derive(Clone)]
pub struct Iter<'a> {
    pairs: &'a Pairs,
    next: usize,
    end: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.end {
            return None;
        }
        self.next += 1;
        self.pairs.get(self.next - 1)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.end - self.next, Some(self.end - self.next))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.next == self.end {
            return None;
        }
        self.end -= 1;
        self.pairs.get(self.end)
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(pairs: &Pairs) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (String::from_utf8_lossy(k).into(), String::from_utf8_lossy(v).into())).collect()
    }

    fn owned(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keeps_order_duplicates_and_empty_fields() {
        let pairs: Pairs = [("a", "1"), ("", ""), ("a", "2")].into_iter().collect();
        assert_eq!(pairs.len(), 3);
        assert_eq!(listed(&pairs), owned(&[("a", "1"), ("", ""), ("a", "2")]));
        assert_eq!(pairs.iter().next_back(), Some((&b"a"[..], &b"2"[..])));
        assert_eq!(pairs.first_value(b"A"), Some(&b"1"[..]));
        assert_eq!(pairs.exact_value(b"A"), None);
        assert_eq!(pairs.get(3), None);
    }

    #[test]
    fn edits_move_the_pairs_after_them() {
        let mut pairs: Pairs = [("host", "x"), ("b", "22"), ("c", "3")].into_iter().collect();
        pairs.set_name(0, b":authority");
        pairs.set_value(1, b"");
        pairs.set_value(2, b"three");
        assert_eq!(listed(&pairs), owned(&[(":authority", "x"), ("b", ""), ("c", "three")]));
        pairs.retain(|index, name, _| index != 0 && name != b"x");
        assert_eq!(listed(&pairs), owned(&[("b", ""), ("c", "three")]));
        pairs.push("D", "4");
        pairs.lowercase_names();
        assert_eq!(listed(&pairs), owned(&[("b", ""), ("c", "three"), ("d", "4")]));
        let rebuilt: Pairs = [("b", ""), ("c", "three"), ("d", "4")].into_iter().collect();
        assert_eq!(pairs, rebuilt);
    }

    #[test]
    fn numbers_are_written_in_decimal_in_the_layout_of_any_pair() {
        let mut pairs = Pairs::new();
        pairs.reserve(2, 8);
        pairs.push_number(":status", 200);
        pairs.push_number("content-length", 0);
        pairs.push("a", "b");
        assert_eq!(listed(&pairs), owned(&[(":status", "200"), ("content-length", "0"), ("a", "b")]));
        assert_eq!(pairs.serialized_parts().0, b":status\x00200\x00content-length\x000\x00a\x00b\x00");
    }

    #[test]
    fn serialized_parts_round_trip_and_bad_lengths_are_refused() {
        let pairs: Pairs = [("a", "bc"), ("", "")].into_iter().collect();
        let (data, lengths) = pairs.serialized_parts();
        assert_eq!(data, b"a\0bc\0\0\0");
        let lengths: Vec<_> = lengths.collect();
        assert_eq!(Pairs::from_serialized_parts(data, lengths.iter().copied()), Some(pairs.clone()));
        assert_eq!(Pairs::from_serialized_parts(data, [(1, 1), (0, 0)].into_iter()), None);
        assert_eq!(Pairs::from_serialized_parts(data, [(1, 2)].into_iter()), None);
        assert_eq!(Pairs::from_serialized_parts(b"a\0b", [(1, 1)].into_iter()), None);
    }
}
