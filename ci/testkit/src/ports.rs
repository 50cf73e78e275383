//! Ports for test servers.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};

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
