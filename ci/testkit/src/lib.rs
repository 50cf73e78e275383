//! What the integration tests share: real servers (nginx with the module, Envoy with the
//! module or with its own Wasm filter), started on generated configurations on free loopback
//! ports, a minimal HTTP client, and an upstream that echoes what it received.

mod certs;
mod dns;
mod envoy;
mod example;
mod http;
mod nginx;
mod paths;
mod ports;
mod upstream;

pub use certs::TestCertificates;
pub use dns::DnsServer;
pub use envoy::{inwasm_filter, v8_filter, Envoy, EnvoySetup};
pub use example::{nginx_config_for_test, EnvoyExample, Example, OnMovedPorts};
pub use http::*;
pub use nginx::*;
pub use paths::*;
pub use ports::free_port;
pub use upstream::{AuthService, ChunkedUpstream, EchoUpstream, Received, SilentUpstream};
