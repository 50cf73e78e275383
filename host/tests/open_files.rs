//! Each module a process instantiates keeps one open file (its copy-on-write memory image),
//! so many live modules need more than the usual soft limit on open files: the engine
//! raises it to the hard limit. Alone in its test binary, since it changes the process limit.

mod common;

use common::*;
use inwasm_host::*;

const MODULES: usize = 100;
const LOW_SOFT_LIMIT: libc::rlim_t = 64;

/// A filter whose memory starts with a data segment of its own (so it has a memory image).
fn tenant(n: usize) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (data (i32.const 4096) "tenant {n}")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 8192))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1)))"#
    )
}

fn open_file_limit() -> libc::rlimit {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    limit
}

#[test]
fn a_hundred_live_modules_fit_under_a_soft_limit_of_64_open_files() {
    let hard = open_file_limit().rlim_max;
    assert!(hard >= 1024, "this test needs a hard limit on open files of at least 1024, not {hard}");
    let low = libc::rlimit { rlim_cur: LOW_SOFT_LIMIT, rlim_max: hard };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);

    let engine = Engine::new(EngineConfig { deadlines: false, ..EngineConfig::default() }).expect("engine");
    assert_eq!(open_file_limit().rlim_cur, hard, "the engine raised the soft limit");
    let live: Vec<Harness> = (0..MODULES)
        .map(|n| {
            let module = Module::new(&engine, &format!("tenant-{n}"), tenant(n).as_bytes(), None).unwrap();
            Harness::try_new(module, "", VmConfig::default()).unwrap_or_else(|e| panic!("tenant {n}: {e}"))
        })
        .collect();
    assert_eq!(live.len(), MODULES);
}
