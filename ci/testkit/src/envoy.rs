//! A real Envoy 1.40 on a generated configuration: HTTP filters in front of an upstream (or
//! a direct response), running proxy-wasm filters either on this project's module
//! (`build/libinwasm.so`) or on Envoy's own Wasm filter (V8), as the reference.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::{request, try_request, Response};
use crate::paths::{envoy_binary, envoy_module_dir, root, scratch_dir};
use crate::ports::free_port;

/// The `http_filters` entry that runs a filter on this project's module; `settings` is the
/// filter configuration as a JSON object (`{"module": "...", ...}`).
pub fn inwasm_filter(settings: &str) -> String {
    format!(
        r#"- name: inwasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
    dynamic_module_config: {{name: inwasm}}
    filter_name: proxy_wasm
    filter_config:
      "@type": type.googleapis.com/google.protobuf.Struct
      value: {settings}
"#
    )
}

/// The `http_filters` entry that runs `wasm` on Envoy's built-in Wasm filter (V8).
pub fn v8_filter(name: &str, wasm: &str, configuration: &str) -> String {
    format!(
        r#"- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: {name}
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: {configuration}
      vm_config:
        vm_id: {name}
        runtime: envoy.wasm.runtime.v8
        code: {{local: {{filename: {wasm}}}}}
"#,
        configuration = json_string(configuration),
    )
}

/// A JSON (and so YAML) string literal.
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What an Envoy under test runs.
#[derive(Clone, Debug, Default)]
pub struct EnvoySetup {
    /// `http_filters` entries, in order (the router is appended).
    pub filters: Vec<String>,
    /// Where requests go; `None` answers every request with 200 "direct\n".
    pub upstream: Option<u16>,
    /// More clusters (name, port on 127.0.0.1), e.g. for http calls.
    pub clusters: Vec<(String, u16)>,
    /// Clusters that speak HTTP/2 (plaintext), e.g. for gRPC calls.
    pub grpc_clusters: Vec<(String, u16)>,
    /// Worker threads (default 1).
    pub workers: u32,
    /// Routes tried before the default one, each a YAML route entry (`- match: ...`).
    pub routes: Vec<String>,
    /// The default route's metadata, a YAML flow mapping (`{filter_metadata: {...}}`).
    pub route_metadata: Option<String>,
}

pub struct Envoy {
    pub dir: PathBuf,
    pub port: u16,
    pub admin: u16,
    child: Option<Child>,
    /// The listener's file, when Envoy reads it from there (LDS).
    lds: Option<PathBuf>,
}

impl Envoy {
    pub fn start(setup: &EnvoySetup) -> Envoy {
        Envoy::try_start(setup).unwrap_or_else(|log| panic!("envoy did not start:\n{log}"))
    }

    /// Starts Envoy; `Err` holds its log when it refused the configuration or exited.
    pub fn try_start(setup: &EnvoySetup) -> Result<Envoy, String> {
        let (port, admin) = (free_port(), free_port());
        Envoy::launch(&config(setup, port, admin), &root(), port, admin, setup.workers.max(1))
    }

    /// Starts Envoy with its listener read from a file (LDS), which [`update_listener`]
    /// rewrites while Envoy runs, as a control plane would send a new one.
    ///
    /// [`update_listener`]: Envoy::update_listener
    pub fn start_with_listener_updates(setup: &EnvoySetup) -> Envoy {
        let (port, admin) = (free_port(), free_port());
        let lds = scratch_dir().join("lds.yaml");
        let whole = config(setup, port, admin);
        let (head, listener, clusters) = parts(&whole);
        write_listener(&lds, listener);
        let bootstrap = format!(
            "{head}node: {{id: test, cluster: test}}
dynamic_resources:
  lds_config: {{path_config_source: {{path: {}}}, resource_api_version: V3}}
static_resources:
{clusters}",
            lds.display()
        );
        let mut envoy = Envoy::launch(&bootstrap, &root(), port, admin, setup.workers.max(1))
            .unwrap_or_else(|log| panic!("envoy did not start:\n{log}"));
        envoy.lds = Some(lds);
        envoy
    }

    /// Gives Envoy (started by [`start_with_listener_updates`]) the listener of `setup` and
    /// waits until it has taken it.
    ///
    /// [`start_with_listener_updates`]: Envoy::start_with_listener_updates
    pub fn update_listener(&self, setup: &EnvoySetup) {
        let lds = self.lds.as_ref().expect("started with listener updates");
        let updates = || self.stat("listener_manager.lds.update_success");
        let before = updates();
        write_listener(lds, parts(&config(setup, self.port, self.admin)).1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while updates() == before {
            assert!(Instant::now() < deadline, "the listener update was not taken in 30 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One counter or gauge of Envoy's stats (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        let prefix = format!("{name}: ");
        self.stats().lines().find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok()).unwrap_or(0)
    }

    /// Starts Envoy on a whole configuration `yaml`, from `cwd` (where relative paths in it
    /// start), serving on `port`, with its admin on `admin`.
    pub fn launch(yaml: &str, cwd: &Path, port: u16, admin: u16, workers: u32) -> Result<Envoy, String> {
        let dir = scratch_dir();
        std::fs::write(dir.join("envoy.yaml"), yaml).unwrap();
        let child = Command::new(envoy_binary())
            .current_dir(cwd)
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", envoy_module_dir())
            .arg("-c")
            .arg(dir.join("envoy.yaml"))
            .args([
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--component-log-level",
                "wasm:trace,dynamic_modules:trace",
                // What a listener update replaces is drained for a second (default: 10 minutes).
                "--drain-time-s",
                "1",
            ])
            .arg("--concurrency")
            .arg(workers.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("envoy.log")).unwrap()))
            .spawn()
            .expect("envoy starts");
        let mut envoy = Envoy { dir, port, admin, child: Some(child), lds: None };
        envoy.wait_ready()?;
        Ok(envoy)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        // Generous: a busy machine compiles modules slowly.
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Some(_status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(self.log());
            }
            let ready = try_request(self.admin, "GET", "/ready", &[], b"").is_ok_and(|r| r.text().trim() == "LIVE");
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("not ready in 90 s:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Waits until the log holds `needle` at least `count` times; returns the final count.
    pub fn wait_log(&self, needle: &str, count: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = self.log().matches(needle).count();
            if seen >= count || Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(self.port, method, path, headers, body)
    }

    /// Envoy's stats (admin `/stats`), one `name: value` per line.
    pub fn stats(&self) -> String {
        request(self.admin, "GET", "/stats", &[], b"").text()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
            if let Some(lds_dir) = self.lds.as_ref().and_then(|lds| lds.parent()) {
                let _ = std::fs::remove_dir_all(lds_dir);
            }
        }
    }
}

fn config(setup: &EnvoySetup, port: u16, admin: u16) -> String {
    let mut route = match setup.upstream {
        Some(_) => "route: {cluster: upstream, timeout: 30s}".to_string(),
        None => r#"direct_response: {status: 200, body: {inline_string: "direct\n"}}"#.to_string(),
    };
    if let Some(metadata) = &setup.route_metadata {
        route.push_str(&format!("\n                metadata: {metadata}"));
    }
    let routes: String = setup.routes.iter().map(|r| indent(r, "              ")).collect();
    let mut clusters: Vec<(String, u16)> = setup.upstream.map(|p| ("upstream".to_string(), p)).into_iter().collect();
    clusters.extend(setup.clusters.iter().cloned());
    let http2 = setup.grpc_clusters.iter().map(|(name, _)| name);
    let http2: Vec<&String> = http2.collect();
    let clusters: String = clusters
        .iter()
        .chain(&setup.grpc_clusters)
        .map(|(name, port)| {
            let options = if http2.contains(&name) { HTTP2_OPTIONS } else { "" };
            format!(
                "  - name: {name}
    type: STATIC
    connect_timeout: 1s
{options}    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"
            )
        })
        .collect();
    let filters: String = setup.filters.iter().map(|f| indent(f, "          ")).collect();
    let values = [
        ("ADMIN", admin.to_string()),
        ("PORT", port.to_string()),
        ("STAT_PREFIX", "ingress".to_string()),
        ("ROUTES", routes),
        ("ROUTE", route),
        ("FILTERS", filters),
        ("CLUSTERS", clusters),
    ];
    values.iter().fold(LISTENER.to_string(), |text, (name, value)| text.replace(&format!("@{name}@"), value))
}

/// A configuration's three parts: what comes before its `static_resources` (the admin), its
/// listener (the list under `listeners:`) and its clusters (from `clusters:` on).
fn parts(config: &str) -> (&str, &str, &str) {
    let (head, rest) = config.split_once("static_resources:\n").expect("the skeleton has static resources");
    let (listener, clusters) = rest.split_at(rest.find("  clusters:").unwrap_or(rest.len()));
    let listener = listener.strip_prefix("  listeners:\n").expect("the skeleton has a listener first");
    (head, listener, clusters)
}

/// Writes `listener` (a configuration's list under `listeners:`) to `path` as an LDS resource
/// file, whole at once (Envoy watches for the file being moved into place).
fn write_listener(path: &Path, listener: &str) {
    let resource = listener.replacen(
        "  - name:",
        "  - \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n    name:",
        1,
    );
    let written = path.with_extension("new");
    std::fs::write(&written, format!("resources:\n{resource}")).unwrap();
    std::fs::rename(&written, path).unwrap();
}

/// A cluster's options to speak HTTP/2 without TLS (gRPC upstreams).
const HTTP2_OPTIONS: &str = "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
";

/// The configuration's skeleton, shared with the benchmarks.
const LISTENER: &str = include_str!("../../envoy-listener.yaml");

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|line| format!("{by}{line}\n")).collect()
}
