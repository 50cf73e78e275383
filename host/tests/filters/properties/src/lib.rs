//! Properties: the plugin configuration lists dotted property paths
//! (`request.path,plugin_name,source.port`); each is read on request headers and returned
//! as response header `x-prop-<path with dots as dashes>`. 8-byte values of paths whose
//! last segment is an integer property (port, code, size, ...) are shown as decimal u64
//! (little-endian), others as UTF-8 (lossy), missing ones as `<none>`. A request header
//! `x-set-prop: name=value` sets property `name` and reads it back into `x-prop-readback`.
//! `response.*` and `upstream.*` paths are read again on response headers.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, Bytes, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

const INTEGER_PROPERTIES: [&str; 6] = ["port", "code", "size", "total_size", "id", "duration"];

#[derive(Default)]
struct Root {
    paths: Vec<String>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.paths = String::from_utf8_lossy(&config)
            .split(',')
            .map(str::trim)
            .filter(|path| !path.is_empty())
            .map(String::from)
            .collect();
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Properties { paths: self.paths.clone(), headers: Vec::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Properties {
    paths: Vec<String>,
    /// Response headers to add, collected on request headers.
    headers: Vec<(String, String)>,
}

fn render(path: &str, value: Option<Bytes>) -> String {
    let last = path.rsplit('.').next().unwrap_or(path);
    match value {
        None => "<none>".to_string(),
        Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
            Ok(le) if INTEGER_PROPERTIES.contains(&last) => u64::from_le_bytes(le).to_string(),
            _ => String::from_utf8_lossy(&v).into_owned(),
        },
    }
}

impl Context for Properties {}

impl HttpContext for Properties {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.headers = self
            .paths
            .iter()
            .map(|path| {
                let value = self.get_property(path.split('.').collect());
                (format!("x-prop-{}", path.replace('.', "-")), render(path, value))
            })
            .collect();
        let assignment = self.get_http_request_header("x-set-prop").unwrap_or_default();
        if let Some((name, value)) = assignment.split_once('=') {
            self.set_property(vec![name], Some(value.as_bytes()));
            let readback = render(name, self.get_property(vec![name]));
            self.headers.push(("x-prop-readback".to_string(), readback));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for (name, value) in &self.headers {
            self.set_http_response_header(name, Some(value));
        }
        // Properties only known once the response is there (`response.*`, `upstream.*`).
        for path in self.paths.iter().filter(|p| p.starts_with("response.") || p.starts_with("upstream.")) {
            let value = render(path, self.get_property(path.split('.').collect()));
            self.set_http_response_header(&format!("x-prop-{}", path.replace('.', "-")), Some(&value));
        }
        Action::Continue
    }
}
