//! Metadata properties: `metadata` (the stream's dynamic metadata), `xds.route_metadata`,
//! `xds.cluster_metadata` and `xds.upstream_host_metadata`, read through Envoy's metadata
//! callbacks and encoded as Envoy's Wasm filter encodes them:
//!
//! - the whole property: an `envoy.config.core.v3.Metadata` message (protobuf);
//! - `.filter_metadata`: pairs of namespace and its fields (each in pairs);
//! - `.filter_metadata.<ns>`: pairs of field name and value;
//! - `.filter_metadata.<ns>.<key>`: the value: a string raw, a number as an 8-byte
//!   little-endian double, a bool as one byte, a list as pairs with the elements as keys;
//! - `.filter_metadata.<ns>.<key>.<i>`: the list's `i`th element.
//!
//! The ABI reads strings, numbers, bools and lists of them; a field holding a struct or null
//! reads as absent.

use inwasm_host::serialization::property;
use prost::Message;

use crate::abi::{self, metadata_source, EnvoyBuffer, FilterEnvoyPtr, ModuleBuffer};

/// A field value the ABI can read.
enum Value {
    Text(Vec<u8>),
    Number(f64),
    Bool(bool),
    List(Vec<Value>),
}

impl Value {
    fn encode(&self) -> Vec<u8> {
        match self {
            Value::Text(text) => text.clone(),
            Value::Number(number) => number.to_le_bytes().to_vec(),
            Value::Bool(flag) => property::boolean(*flag),
            Value::List(items) => property::map(&items.iter().map(|item| (item.encode(), b"")).collect()),
        }
    }

    fn to_proto(&self) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match self {
            Value::Text(text) => Kind::StringValue(String::from_utf8_lossy(text).into_owned()),
            Value::Number(number) => Kind::NumberValue(*number),
            Value::Bool(flag) => Kind::BoolValue(*flag),
            Value::List(items) => {
                Kind::ListValue(prost_types::ListValue { values: items.iter().map(Value::to_proto).collect() })
            }
        };
        prost_types::Value { kind: Some(kind) }
    }
}

/// `envoy.config.core.v3.Metadata`, as far as the ABI can fill it.
#[derive(Clone, PartialEq, Message)]
struct MetadataProto {
    #[prost(btree_map = "string, message", tag = "1")]
    filter_metadata: std::collections::BTreeMap<String, prost_types::Struct>,
}

/// The metadata source a property path names, and the rest of the path.
fn source<'p>(path: &'p [&'p [u8]]) -> Option<(u32, &'p [&'p [u8]])> {
    match path {
        [b"metadata", rest @ ..] => Some((metadata_source::DYNAMIC, rest)),
        [b"xds", b"route_metadata", rest @ ..] => Some((metadata_source::ROUTE, rest)),
        [b"xds", b"cluster_metadata", rest @ ..] => Some((metadata_source::CLUSTER, rest)),
        [b"xds", b"upstream_host_metadata", rest @ ..] => Some((metadata_source::HOST, rest)),
        _ => None,
    }
}

/// Whether `path` is a metadata property.
pub fn is_metadata(path: &[&[u8]]) -> bool {
    source(path).is_some()
}

/// A metadata property's value, or `None` when absent.
///
/// # Safety
/// `filter` must be a live stream of this thread.
pub unsafe fn get(filter: FilterEnvoyPtr, path: &[&[u8]]) -> Option<Vec<u8>> {
    let (source, rest) = source(path)?;
    let reader = Reader { filter, source };
    // SAFETY: (for each read) a live stream, per the caller.
    unsafe {
        match rest {
            [] => {
                let filter_metadata = reader
                    .namespaces()
                    .into_iter()
                    .map(|ns| {
                        let fields = reader.fields(&ns).into_iter();
                        let fields = fields.map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v.to_proto()));
                        (String::from_utf8_lossy(&ns).into_owned(), prost_types::Struct { fields: fields.collect() })
                    })
                    .collect();
                Some(MetadataProto { filter_metadata }.encode_to_vec())
            }
            [b"filter_metadata"] => {
                let namespaces = reader.namespaces().into_iter().map(|ns| {
                    let fields = encode_fields(reader.fields(&ns));
                    (ns, fields)
                });
                Some(property::map(&namespaces.collect()))
            }
            [b"filter_metadata", ns] => {
                reader.namespaces().iter().any(|known| known == ns).then(|| encode_fields(reader.fields(ns)))
            }
            [b"filter_metadata", ns, key] => reader.value(ns, key).map(|value| value.encode()),
            [b"filter_metadata", ns, key, index] => match reader.value(ns, key)? {
                Value::List(items) => {
                    let index: usize = std::str::from_utf8(index).ok()?.parse().ok()?;
                    items.get(index).map(Value::encode)
                }
                _ => None,
            },
            _ => None,
        }
    }
}

fn encode_fields(fields: Vec<(Vec<u8>, Value)>) -> Vec<u8> {
    property::map(&fields.into_iter().map(|(k, v)| (k, v.encode())).collect())
}

/// Reads of one metadata source of one stream. What Envoy hands over is copied at once (a
/// host's metadata is only valid until the next read).
struct Reader {
    filter: FilterEnvoyPtr,
    source: u32,
}

impl Reader {
    /// # Safety
    /// The stream must be live.
    unsafe fn namespaces(&self) -> Vec<Vec<u8>> {
        // SAFETY: a live stream (per the caller); `names` has room for `count` buffers.
        unsafe {
            let count = abi::envoy_dynamic_module_callback_http_get_metadata_namespaces_count(self.filter, self.source);
            let mut names = vec![EnvoyBuffer::EMPTY; count];
            if count == 0
                || !abi::envoy_dynamic_module_callback_http_get_metadata_namespaces(
                    self.filter,
                    self.source,
                    names.as_mut_ptr(),
                )
            {
                return Vec::new();
            }
            names.iter().map(|name| name.as_slice().to_vec()).collect()
        }
    }

    /// Every readable field of namespace `ns`.
    ///
    /// # Safety
    /// The stream must be live.
    unsafe fn fields(&self, ns: &[u8]) -> Vec<(Vec<u8>, Value)> {
        // SAFETY: a live stream (per the caller); `keys` has room for `count` buffers.
        let keys = unsafe {
            let namespace = ModuleBuffer::of(ns);
            let count =
                abi::envoy_dynamic_module_callback_http_get_metadata_keys_count(self.filter, self.source, namespace);
            let mut keys = vec![EnvoyBuffer::EMPTY; count];
            if count == 0
                || !abi::envoy_dynamic_module_callback_http_get_metadata_keys(
                    self.filter,
                    self.source,
                    namespace,
                    keys.as_mut_ptr(),
                )
            {
                return Vec::new();
            }
            keys.iter().map(|key| key.as_slice().to_vec()).collect::<Vec<_>>()
        };
        // SAFETY: as above.
        keys.into_iter().filter_map(|key| Some((key.clone(), unsafe { self.value(ns, &key) }?))).collect()
    }

    /// Field `key` of namespace `ns`, tried as each type the ABI reads (a string first: most
    /// metadata is text).
    ///
    /// # Safety
    /// The stream must be live.
    unsafe fn value(&self, ns: &[u8], key: &[u8]) -> Option<Value> {
        let (filter, source, ns, key) = (self.filter, self.source, ModuleBuffer::of(ns), ModuleBuffer::of(key));
        // SAFETY: a live stream (per the caller); each result is a valid place to write.
        unsafe {
            let mut text = EnvoyBuffer::EMPTY;
            if abi::envoy_dynamic_module_callback_http_get_metadata_string(filter, source, ns, key, &mut text) {
                return Some(Value::Text(text.as_slice().to_vec()));
            }
            let mut number = 0f64;
            if abi::envoy_dynamic_module_callback_http_get_metadata_number(filter, source, ns, key, &mut number) {
                return Some(Value::Number(number));
            }
            let mut flag = false;
            if abi::envoy_dynamic_module_callback_http_get_metadata_bool(filter, source, ns, key, &mut flag) {
                return Some(Value::Bool(flag));
            }
            let mut size = 0usize;
            if !abi::envoy_dynamic_module_callback_http_get_metadata_list_size(filter, source, ns, key, &mut size) {
                return None;
            }
            let items = (0..size).filter_map(|index| {
                let mut text = EnvoyBuffer::EMPTY;
                if abi::envoy_dynamic_module_callback_http_get_metadata_list_string(
                    filter, source, ns, key, index, &mut text,
                ) {
                    return Some(Value::Text(text.as_slice().to_vec()));
                }
                let mut number = 0f64;
                if abi::envoy_dynamic_module_callback_http_get_metadata_list_number(
                    filter,
                    source,
                    ns,
                    key,
                    index,
                    &mut number,
                ) {
                    return Some(Value::Number(number));
                }
                let mut flag = false;
                abi::envoy_dynamic_module_callback_http_get_metadata_list_bool(
                    filter, source, ns, key, index, &mut flag,
                )
                .then_some(Value::Bool(flag))
            });
            Some(Value::List(items.collect()))
        }
    }
}
