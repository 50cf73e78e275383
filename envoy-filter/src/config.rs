//! The filter configuration Envoy hands over (`filter_config`, a `google.protobuf.Struct`
//! that arrives as JSON), checked key by key so a mistake is reported at config load:
//!
//! ```yaml
//! filter_name: proxy_wasm
//! filter_config:
//!   "@type": type.googleapis.com/google.protobuf.Struct
//!   value:
//!     module: /path/filter.wasm     # required; .wasm or .wat
//!     configuration: "..."          # plugin configuration (on_configure); JSON values are passed as JSON text
//!     vm_configuration: "..."       # VM configuration (on_vm_start)
//!     name: my_filter               # plugin_name, and the name in logs (default: the file's stem)
//!     root_id: ""                   # plugin_root_id
//!     vm_id: ""                     # namespace of shared data and queues (default: the module path)
//!     timeout: 50ms                 # budget of each callback (default 100ms)
//!     request_timeout: 250ms        # budget of all of a request's callbacks (default 5 x timeout)
//!     background_timeout: 20ms      # budget of each callback a root runs on its own (20ms)
//!     start_timeout: 10s            # budget of each start-up step (default 10s)
//!     memory_limit: 16m             # cap on the instance's linear memory (default and most: 128m)
//!     isolation: none               # none: one instance per worker; stream: one per request
//!     fail_open: false              # true: a failed filter is skipped instead of answering 500
//!     environment: {TENANT: acme}   # environment variables the module sees (default: none)
//!     cache_dir: /var/cache/inwasm  # compiled-code cache, or "off" (default: see `default_cache_dir`)
//! ```

use std::path::PathBuf;
use std::time::Duration;

use inwasm_host::{
    default_request_budget, PluginConfig, StreamLimits, VmConfig, DEFAULT_BACKGROUND_TIMEOUT, DEFAULT_MEMORY_LIMIT,
    DEFAULT_START_TIMEOUT, DEFAULT_TIMEOUT,
};
use serde_json::{Map, Value};

/// The only filter this module provides.
pub const FILTER_NAME: &str = "proxy_wasm";

const KEYS: [&str; 15] = [
    "module",
    "configuration",
    "vm_configuration",
    "name",
    "root_id",
    "vm_id",
    "timeout",
    "request_timeout",
    "background_timeout",
    "start_timeout",
    "memory_limit",
    "isolation",
    "fail_open",
    "environment",
    "cache_dir",
];

/// How instances are shared among requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// One instance per worker thread, shared by its requests.
    None,
    /// A fresh instance per request.
    Stream,
}

#[derive(Clone, Debug)]
pub struct FilterSettings {
    pub module: PathBuf,
    pub vm: VmConfig,
    pub plugin: PluginConfig,
    /// What each request's stream may spend.
    pub stream: StreamLimits,
    /// Where compiled code is kept between starts; `None`: nowhere.
    pub cache_dir: Option<PathBuf>,
    pub isolation: Isolation,
    pub fail_open: bool,
}

/// Parses `filter_config` for the filter named `filter_name`.
pub fn parse(filter_name: &[u8], config: &[u8]) -> Result<FilterSettings, String> {
    if filter_name != FILTER_NAME.as_bytes() {
        return Err(format!(
            "unknown filter_name \"{}\": this module provides \"{FILTER_NAME}\"",
            String::from_utf8_lossy(filter_name)
        ));
    }
    let value: Value = serde_json::from_slice(config)
        .map_err(|e| format!("filter_config must be a google.protobuf.Struct (JSON object): {e}"))?;
    let Value::Object(map) = value else {
        return Err("filter_config must be a google.protobuf.Struct with at least \"module\"".into());
    };
    if let Some(unknown) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key \"{unknown}\" in filter_config (known: {})", KEYS.join(", ")));
    }
    let module = PathBuf::from(string(&map, "module")?.ok_or("filter_config needs \"module\": the .wasm file")?);
    let stem = module.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let vm = VmConfig {
        vm_id: string(&map, "vm_id")?.unwrap_or_else(|| module.display().to_string()),
        configuration: text(&map, "vm_configuration")?,
        environment: environment(&map)?,
        memory_limit: match map.get("memory_limit") {
            None => DEFAULT_MEMORY_LIMIT,
            Some(value) => size(value)
                .filter(|&bytes| bytes <= DEFAULT_MEMORY_LIMIT)
                .ok_or_else(|| invalid("memory_limit", value, "a size such as 16m, at most 128m"))?,
        },
        background_timeout: Some(time(&map, "background_timeout", DEFAULT_BACKGROUND_TIMEOUT)?),
        start_timeout: Some(time(&map, "start_timeout", DEFAULT_START_TIMEOUT)?),
        ..VmConfig::default()
    };
    let timeout = time(&map, "timeout", DEFAULT_TIMEOUT)?;
    let request_budget = time(&map, "request_timeout", default_request_budget(timeout))?;
    let stream = StreamLimits { timeout: None, request_budget: Some(request_budget) };
    let plugin = PluginConfig {
        name: string(&map, "name")?.unwrap_or(stem),
        root_id: string(&map, "root_id")?.unwrap_or_default(),
        configuration: text(&map, "configuration")?,
        timeout: Some(timeout),
    };
    let isolation = match string(&map, "isolation")?.as_deref() {
        None | Some("none") => Isolation::None,
        Some("stream") => Isolation::Stream,
        Some(_) => return Err(invalid("isolation", &map["isolation"], "none or stream")),
    };
    let fail_open = match map.get("fail_open") {
        None => false,
        Some(Value::Bool(on)) => *on,
        Some(other) => return Err(invalid("fail_open", other, "true or false")),
    };
    let cache_dir = match string(&map, "cache_dir")?.as_deref() {
        Some("off") => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => default_cache_dir(),
    };
    Ok(FilterSettings { module, vm, plugin, stream, cache_dir, isolation, fail_open })
}

/// The compiled-code cache when `cache_dir` does not say: `$XDG_CACHE_HOME/inwasm`, else
/// `$HOME/.cache/inwasm`, else none.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("inwasm"))
}

/// The time at `key` (`default` when absent), at most an hour.
fn time(map: &Map<String, Value>, key: &str, default: Duration) -> Result<Duration, String> {
    match map.get(key) {
        None => Ok(default),
        Some(value) => duration(value)
            .filter(|time| *time <= Duration::from_secs(3600))
            .ok_or_else(|| invalid(key, value, "a time such as 50ms or 1s, at most 1h")),
    }
}

fn invalid(key: &str, value: &Value, expected: &str) -> String {
    format!("invalid \"{key}\" {value}: use {expected}")
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(key, other, "a string")),
    }
}

/// A configuration buffer: a string as is, any other JSON value as JSON text.
fn text(map: &Map<String, Value>, key: &str) -> Result<Vec<u8>, String> {
    Ok(match map.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    })
}

fn environment(map: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    match map.get("environment") {
        None => Ok(Vec::new()),
        Some(Value::Object(vars)) => vars
            .iter()
            .map(|(name, value)| match value {
                Value::String(s) => Ok((name.clone(), s.clone())),
                other => Err(invalid(&format!("environment.{name}"), other, "a string")),
            })
            .collect(),
        Some(other) => Err(invalid("environment", other, "an object of NAME: value strings")),
    }
}

/// `16m`, `64k`, `1g`, plain bytes, or a JSON number of bytes.
fn size(value: &Value) -> Option<usize> {
    let (digits, unit) = number_and_unit(value)?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    digits.checked_mul(scale).filter(|&n| n > 0).map(|n| n as usize)
}

/// `50ms`, `2s`, `1m`, or a JSON number of milliseconds.
fn duration(value: &Value) -> Option<Duration> {
    let (digits, unit) = number_and_unit(value)?;
    let millis = match unit {
        "" | "ms" => digits,
        "s" => digits.checked_mul(1000)?,
        "m" => digits.checked_mul(60_000)?,
        _ => return None,
    };
    (millis > 0).then(|| Duration::from_millis(millis))
}

fn number_and_unit(value: &Value) -> Option<(u64, &str)> {
    match value {
        Value::Number(n) => Some((n.as_u64()?, "")),
        Value::String(s) => {
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            Some((s[..split].parse().ok()?, &s[split..]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<FilterSettings, String> {
        parse(FILTER_NAME.as_bytes(), json.as_bytes())
    }

    #[test]
    fn full_configuration_is_read() {
        let s = settings(
            r#"{"module":"/f/auth.wasm","configuration":{"a":1},"vm_configuration":"vm","timeout":"50ms",
                "memory_limit":"16m","isolation":"stream","fail_open":true,"environment":{"T":"x"},
                "vm_id":"shared","root_id":"r"}"#,
        )
        .unwrap();
        assert_eq!(s.plugin.name, "auth");
        assert_eq!(s.plugin.configuration, br#"{"a":1}"#);
        assert_eq!(s.plugin.timeout, Some(Duration::from_millis(50)));
        assert_eq!(
            (s.vm.memory_limit, s.vm.vm_id.as_str(), s.vm.configuration.as_slice()),
            (16 << 20, "shared", &b"vm"[..])
        );
        assert_eq!(s.vm.environment, vec![("T".to_string(), "x".to_string())]);
        assert_eq!((s.isolation, s.fail_open, s.plugin.root_id.as_str()), (Isolation::Stream, true, "r"));
    }

    #[test]
    fn defaults_apply() {
        let s = settings(r#"{"module":"m.wasm"}"#).unwrap();
        assert_eq!((s.vm.memory_limit, s.plugin.timeout), (DEFAULT_MEMORY_LIMIT, Some(DEFAULT_TIMEOUT)));
        assert_eq!((s.isolation, s.fail_open, s.vm.vm_id.as_str()), (Isolation::None, false, "m.wasm"));
        assert!(s.vm.environment.is_empty() && s.plugin.configuration.is_empty());
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (r#"{"module":"m","timeot":"1s"}"#, "unknown key \"timeot\""),
            (r#"{}"#, "needs \"module\""),
            (r#"{"module":"m","timeout":"fast"}"#, "invalid \"timeout\" \"fast\""),
            (r#"{"module":"m","memory_limit":"12q"}"#, "invalid \"memory_limit\""),
            (r#"{"module":"m","isolation":"filter"}"#, "use none or stream"),
            (r#"{"module":"m","fail_open":"yes"}"#, "invalid \"fail_open\""),
            (r#"{"module":"m","environment":{"A":1}}"#, "environment.A"),
            ("[1]", "google.protobuf.Struct"),
            ("not json", "JSON object"),
        ];
        for (json, expected) in cases {
            let error = settings(json).unwrap_err();
            assert!(error.contains(expected), "{json}: {error}");
        }
        assert!(parse(b"other", b"{}").unwrap_err().contains("unknown filter_name \"other\""));
    }
}
