//! Running an example's nginx.conf or envoy.yaml as a user would (from the repository
//! root), on free ports.

use std::collections::BTreeMap;

use crate::envoy::Envoy;
use crate::http::{request, Response};
use crate::nginx::Nginx;
use crate::paths::{module_path, root};
use crate::ports::free_port;

/// An example running with its ports moved, reached through the ports its file documents.
pub trait OnMovedPorts {
    /// Each documented port and where it is served in this test.
    fn moved_ports(&self) -> &BTreeMap<u16, u16>;

    /// Where the example's documented port `documented` is served in this test.
    fn port(&self, documented: u16) -> u16 {
        self.moved_ports()[&documented]
    }

    /// A request to the documented port `documented`, with extra headers and a body.
    fn request(&self, documented: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(self.port(documented), method, path, headers, body)
    }
}

/// An example's nginx, started from `examples/<name>/nginx.conf` with only what a test must
/// change: the module path (the build under test), the error log and pid file (a scratch
/// directory), and every `127.0.0.1:PORT` the file names, each moved to a free port.
pub struct Example {
    pub nginx: Nginx,
    ports: BTreeMap<u16, u16>,
}

impl Example {
    /// Starts the example and waits until its documented port `serves` answers.
    pub fn start(name: &str, serves: u16) -> Example {
        let path = root().join("examples").join(name).join("nginx.conf");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (text, ports) = nginx_config_for_test(&text);
        let port = *ports.get(&serves).unwrap_or_else(|| panic!("{} does not listen on {serves}", path.display()));
        Example { nginx: Nginx::start_config(&text, &root(), port), ports }
    }
}

impl OnMovedPorts for Example {
    fn moved_ports(&self) -> &BTreeMap<u16, u16> {
        &self.ports
    }
}

/// An example's Envoy, started from `examples/<name>/envoy.yaml` with every `port_value: N`
/// moved to a free port (the module paths in it are relative to the repository root, where
/// it starts, as the README runs it).
pub struct EnvoyExample {
    pub envoy: Envoy,
    ports: BTreeMap<u16, u16>,
}

impl EnvoyExample {
    /// Starts the example, serving on its documented port `serves`, with its admin port.
    pub fn start(name: &str, serves: u16, admin: u16) -> EnvoyExample {
        let path = root().join("examples").join(name).join("envoy.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (text, ports) = move_ports(&text, "port_value: ");
        let port = |documented: u16| {
            *ports.get(&documented).unwrap_or_else(|| panic!("{} has no port {documented}", path.display()))
        };
        let envoy = Envoy::launch(&text, &root(), port(serves), port(admin), 1)
            .unwrap_or_else(|log| panic!("{}: envoy did not start:\n{log}", path.display()));
        EnvoyExample { envoy, ports }
    }
}

impl OnMovedPorts for EnvoyExample {
    fn moved_ports(&self) -> &BTreeMap<u16, u16> {
        &self.ports
    }
}

/// A user's nginx.conf as a test runs it: the module path is the build under test, the
/// error log and pid file go to the test's scratch directory (`@DIR@`, see
/// [`Nginx::start_config`]), and every `127.0.0.1:PORT` moves to a free port (the map says
/// where each went).
pub fn nginx_config_for_test(text: &str) -> (String, BTreeMap<u16, u16>) {
    let (text, ports) = move_ports(text, "127.0.0.1:");
    let text = text
        .lines()
        .map(|line| match line.split_whitespace().next() {
            Some("load_module") => format!("load_module {};", module_path().display()),
            Some("error_log") => "error_log @DIR@/error.log info;".to_string(),
            Some("pid") => "pid @DIR@/nginx.pid;".to_string(),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    (text, ports)
}

/// Replaces the port after each `prefix` with a free port (the same one for each mention).
fn move_ports(text: &str, prefix: &str) -> (String, BTreeMap<u16, u16>) {
    let mut ports = BTreeMap::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let (before, after) = rest.split_at(at + prefix.len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<u16>() {
            Ok(documented) => {
                let port = *ports.entry(documented).or_insert_with(free_port);
                out.push_str(&port.to_string());
            }
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    (out, ports)
}
