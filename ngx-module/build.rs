//! Passes the nginx build's version on as a `cfg`, where nginx's structures differ between
//! the versions the module is built for (`nginx1_23`: duplicates of a request header are
//! chained through `next`, where 1.22 kept some of them in arrays).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(nginx1_23)");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    let version: u64 = std::env::var("DEP_NGINX_VERSION_NUMBER").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if version >= 1_023_000 {
        println!("cargo::rustc-cfg=nginx1_23");
    }
}
