//! Reloads under load: nginx reloads again and again while clients keep sending requests,
//! the module file changing on disk between reloads (and once broken): no request fails,
//! each reload's module serves, and a broken module leaves the last good one serving.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// What identifies each module in a response from the echo upstream behind it.
fn marker(response: &Response) -> Option<&'static str> {
    if response.header("x-inwasm") == Some("hello") {
        Some("headers")
    } else if response.text().contains("x-misbehave-ok: 1") {
        Some("misbehave")
    } else {
        None
    }
}

#[test]
fn reloads_under_load_lose_no_request_and_serve_each_new_module() {
    let upstream = EchoUpstream::start();
    let dir = std::env::temp_dir().join(format!("inwasm-reload-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("tenant.wasm");
    std::fs::copy(filter("headers"), &module).unwrap();
    let block = format!("wasm {{ module tenant {}; }}", module.display());
    let location = format!("location / {{ proxy_wasm tenant ok; proxy_pass http://127.0.0.1:{}; }}", upstream.port);
    let nginx = Nginx::start_with(2, &block, &location, "");
    nginx.started_workers(2);

    let (stop, sent, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let port = nginx.port;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match try_request(port, "GET", "/", &[], b"") {
                        Ok(response) if response.status == 200 && marker(&response).is_some() => {}
                        _ => drop(failed.fetch_add(1, Ordering::Relaxed)),
                    }
                }
            })
        })
        .collect();

    for round in 0..6 {
        let (source, expected) = if round % 2 == 0 { ("misbehave", "misbehave") } else { ("headers", "headers") };
        std::fs::copy(filter(source), &module).unwrap();
        nginx.reload_with(2, &block, &location);
        let deadline = Instant::now() + Duration::from_secs(5);
        while marker(&nginx.get("/")) != Some(expected) {
            assert!(Instant::now() < deadline, "round {round}: {expected} never served: {}", nginx.error_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // A broken module: the reload fails, the last good module goes on serving.
    std::fs::write(&module, b"not wasm at all").unwrap();
    let pid = nginx.master_pid();
    Command::new("kill").arg("-HUP").arg(pid.to_string()).status().unwrap();
    assert_eq!(nginx.wait_log("not a WebAssembly module", 1), 1, "{}", nginx.error_log());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(marker(&nginx.get("/")), Some("headers"), "the old configuration serves");

    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 100, "load ran: {sent} requests");
    assert_eq!(failed, 0, "of {sent} requests, {failed} failed: {}", nginx.error_log());
    let _ = std::fs::remove_dir_all(&dir);
}
