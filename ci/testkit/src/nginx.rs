//! A real nginx started with `load_module` on a generated configuration.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::{try_request, Response};
use crate::paths::{module_path, nginx_binary, scratch_dir};
use crate::ports::free_port;

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

    /// Waits until nginx answers on its port: generously (a busy machine compiles slowly, and
    /// an AddressSanitizer build of the compiler several times slower), failing with its logs.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nginx exited ({status}): {}\n{}", self.stderr(), self.error_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx did not start within 180 s: {}\n{}", self.stderr(), self.error_log());
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Waits until the error log holds `needle` at least `count` times (log-phase lines may
    /// land just after the client has its response); returns the final count.
    pub fn wait_log(&self, needle: &str, count: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
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

    /// One request; a connection closed without an answer fails with the server's error log.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        try_request(self.port, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nnginx's error log:\n{}", self.error_log()))
    }

    /// Rewrites the configuration and reloads (SIGHUP), waiting for new workers to serve.
    pub fn reload(&self, main: &str, server: &str) {
        self.reload_with(1, main, server)
    }

    /// `reload` with `workers` worker processes.
    pub fn reload_with(&self, workers: u32, main: &str, server: &str) {
        let http = format!("server {{ listen 127.0.0.1:{}; {server} }}", self.port);
        std::fs::write(self.dir.join("nginx.conf"), config(&self.dir, workers, main, &http)).unwrap();
        let before = self.error_log().matches("start worker process").count();
        Command::new("kill").arg("-HUP").arg(self.master_pid().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.error_log().matches("start worker process").count() < before + workers as usize {
            assert!(Instant::now() < deadline, "no reload: {}", self.error_log());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Rewrites the configuration and reloads, expecting nginx to refuse the new one: waits
    /// for the master's "reconfiguring" line and returns once the old workers serve on.
    pub fn reload_expecting_failure(&self, main: &str, server: &str) {
        let http = format!("server {{ listen 127.0.0.1:{}; {server} }}", self.port);
        std::fs::write(self.dir.join("nginx.conf"), config(&self.dir, 1, main, &http)).unwrap();
        let before = self.error_log().matches("reconfiguring").count();
        Command::new("kill").arg("-HUP").arg(self.master_pid().to_string()).status().unwrap();
        assert!(self.wait_log("reconfiguring", before + 1) > before, "no reload: {}", self.error_log());
        std::thread::sleep(Duration::from_millis(300));
    }

    pub fn master_pid(&self) -> u32 {
        self.child.as_ref().expect("nginx runs").id()
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
