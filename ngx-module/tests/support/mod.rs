//! Integration-test support: a real nginx started with `load_module` on a generated config,
//! a minimal HTTP/1.1 client, and an upstream that echoes what it received.
#![allow(dead_code)] // each test binary uses its own part

mod example;
#[allow(unused_imports)] // only the example tests use it
pub use example::Example;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Which nginx the module was built for: `debian` (default) or `1.28`.
fn flavor() -> String {
    std::env::var("INWASM_NGINX").unwrap_or_else(|_| "debian".into())
}

/// The nginx under test: Debian's by default, or the nginx 1.28 build.
pub fn nginx_binary() -> PathBuf {
    match flavor().as_str() {
        "1.28" => root().join("target/nginx/1.28/objs/nginx"),
        _ => PathBuf::from("/usr/sbin/nginx"),
    }
}

pub fn module_path() -> PathBuf {
    let name = match flavor().as_str() {
        "1.28" => "ngx_http_inwasm_module-1.28.so",
        _ => "ngx_http_inwasm_module.so",
    };
    let path = root().join("build").join(name);
    assert!(path.exists(), "{} is missing: run `make build`", path.display());
    path
}

pub fn filter(name: &str) -> String {
    let path = root().join(format!("build/filters/filter_{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make build`", path.display());
    path.display().to_string()
}

/// A port for a server to listen on. Taken below the kernel's ephemeral range (32768 and
/// up), where no client socket or `bind(0)` lands, so a port handed out here cannot be taken
/// meanwhile (or self-connected to) by another test's connections; each test process walks
/// its own stretch, and ports found busy are skipped.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed) as u32) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "inwasm-nginx-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Wraps `main` (what goes in the main context: wasm{} and the like) and `http` (the body of
/// the http{} block) into a whole configuration that loads the module.
pub fn config(dir: &Path, workers: u32, main: &str, http: &str) -> String {
    format!(
        "load_module {module};
daemon off;
master_process on;
worker_processes {workers};
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
{main}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    {http}
}}
",
        module = module_path().display(),
        dir = dir.display(),
    )
}

pub struct Nginx {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Nginx {
    /// Starts nginx with `server` (the body of a server{} block listening on `port`) plus
    /// `extra_http`, and waits until it answers.
    pub fn start(main: &str, server: &str) -> Nginx {
        Nginx::start_with(1, main, server, "")
    }

    pub fn start_with(workers: u32, main: &str, server: &str, extra_http: &str) -> Nginx {
        let dir = scratch_dir();
        let port = free_port();
        let http = format!("server {{ listen 127.0.0.1:{port}; {server} }}\n{extra_http}");
        std::fs::write(dir.join("nginx.conf"), config(&dir, workers, main, &http)).unwrap();
        Nginx::spawn(dir.clone(), &dir, port)
    }

    /// Starts nginx on a whole configuration (where `@DIR@` stands for a scratch directory,
    /// the place for error.log and the pid file), with `prefix` as nginx's prefix (-p).
    pub fn start_config(text: &str, prefix: &Path, port: u16) -> Nginx {
        let dir = scratch_dir();
        std::fs::write(dir.join("nginx.conf"), text.replace("@DIR@", &dir.display().to_string())).unwrap();
        Nginx::spawn(dir, prefix, port)
    }

    fn spawn(dir: PathBuf, prefix: &Path, port: u16) -> Nginx {
        let child = Command::new(nginx_binary())
            .env_remove("NGINX") // nginx reads it as a list of inherited sockets
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("stderr.log")).unwrap()))
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx { dir, port, child: Some(child) };
        nginx.wait_ready();
        nginx
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nginx exited ({status}): {}\n{}", self.stderr(), self.error_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx did not start: {}", self.error_log());
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Waits until the error log holds `needle` at least `count` times (log-phase lines may
    /// land just after the client has its response); returns the final count.
    pub fn wait_log(&self, needle: &str, count: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = self.error_log().matches(needle).count();
            if seen >= count || Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(self.port, method, path, headers, body)
    }

    /// Rewrites the configuration and reloads (SIGHUP), waiting for new workers to serve.
    pub fn reload(&self, main: &str, server: &str) {
        let http = format!("server {{ listen 127.0.0.1:{}; {server} }}", self.port);
        std::fs::write(self.dir.join("nginx.conf"), config(&self.dir, 1, main, &http)).unwrap();
        let before = self.error_log().matches("start worker process").count();
        let pid = self.child.as_ref().unwrap().id();
        Command::new("kill").arg("-HUP").arg(pid.to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.error_log().matches("start worker process").count() == before {
            assert!(Instant::now() < deadline, "no reload: {}", self.error_log());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    /// The worker pids once `count` workers have started (from the error log).
    pub fn started_workers(&self, count: usize) -> Vec<u32> {
        assert_eq!(self.wait_log("start worker process ", count), count, "{}", self.error_log());
        self.worker_pids()
    }

    /// The worker pids, from the error log's "start worker process N" lines.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.error_log().lines().filter_map(|l| l.split("start worker process ").nth(1)?.trim().parse().ok()).collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `nginx -t` on a configuration; returns (success, what nginx printed).
pub fn nginx_test(main: &str, http: &str) -> (bool, String) {
    let dir = scratch_dir();
    std::fs::write(dir.join("nginx.conf"), config(&dir, 1, main, http)).unwrap();
    let output = Command::new(nginx_binary())
        .env_remove("NGINX")
        .arg("-t")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
    let _ = std::fs::remove_dir_all(&dir);
    (output.status.success(), text)
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (Connection: close).
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    try_request(port, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `request`, with a connection the server closed or reset as an error.
pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    read_response(BufReader::new(stream))
}

fn read_response(mut reader: BufReader<TcpStream>) -> std::io::Result<Response> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let status = status.ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (k, v) = trimmed.split_once(':').ok_or_else(|| invalid(format!("bad header {trimmed:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|e| invalid(e.to_string()))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response { status, headers, body })
}

/// A POST whose chunked body is sent in `pieces`, `gap` apart (so the server reads them
/// separately).
pub fn chunked_request(port: u16, path: &str, pieces: &[&[u8]], gap: Duration) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    for piece in pieces {
        stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
        stream.write_all(piece)?;
        stream.write_all(b"\r\n")?;
        stream.flush()?;
        std::thread::sleep(gap);
    }
    stream.write_all(b"0\r\n\r\n")?;
    read_response(BufReader::new(stream))
}

/// An upstream on a free port that answers every request with 200 and a body describing
/// what it received: `method path`, then each header as `name: value`, a blank line, the body.
pub struct EchoUpstream {
    pub port: u16,
}

impl EchoUpstream {
    pub fn start() -> EchoUpstream {
        EchoUpstream::start_slow(Duration::ZERO)
    }

    /// An echo upstream that waits `delay` before answering (to keep requests in flight).
    pub fn start_slow(delay: Duration) -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || echo(stream, delay));
            }
        });
        EchoUpstream { port }
    }
}

fn echo(stream: TcpStream, delay: Duration) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut report = String::new();
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut words = line.split_whitespace();
    report.push_str(&format!("{} {}\n", words.next().unwrap_or(""), words.next().unwrap_or("")));
    let mut length = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            report.push_str(&format!("{}: {}\n", k.to_ascii_lowercase(), v.trim()));
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    report.push('\n');
    let mut payload = report.into_bytes();
    payload.extend_from_slice(&body);
    std::thread::sleep(delay);
    let mut stream = stream;
    let head =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nServer: echo\r\nConnection: close\r\n\r\n", payload.len());
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&payload);
}
