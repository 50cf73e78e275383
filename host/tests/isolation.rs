//! Nothing of one instance reaches another: not its linear memory (even through a reused
//! pooling slot, reset in place), not the properties it set. Two modules or two instances
//! of one module alike.

mod common;

use std::sync::Arc;

use common::*;
use inwasm_host::*;

/// What both probes have: the host functions they call, a bump allocator and their strings.
macro_rules! probe_common {
    () => {
        r#"
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $size i32) (result i32)
    (global.get $heap) (global.set $heap (i32.add (global.get $heap) (local.get $size))))
  (data (i32.const 1000) "x-dirty")
  (data (i32.const 1010) "x-secret-status")
  (data (i32.const 1030) "secret")
  (data (i32.const 1040) "s3cret")
"#
    };
}

/// Looks at memory a fresh instance must see as zeros (page 0, page 1 and 3 MiB in, past
/// what a freed slot keeps resident) and at property `secret`, reports both as request
/// headers `x-dirty` (0 or 1) and `x-secret-status`, then leaves a secret in all of them.
const SNOOP: &str = concat!(
    "(module",
    probe_common!(),
    r#"  (memory (export "memory") 1)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $dirty i64)
    (if (i32.lt_u (memory.size) (i32.const 64)) (then (drop (memory.grow (i32.sub (i32.const 64) (memory.size))))))
    (local.set $dirty (i64.or (i64.load (i32.const 60000))
      (i64.or (i64.load (i32.const 70000)) (i64.load (i32.const 3145728)))))
    (i32.store8 (i32.const 1100) (select (i32.const 49) (i32.const 48) (i64.ne (local.get $dirty) (i64.const 0))))
    (drop (call $add (i32.const 0) (i32.const 1000) (i32.const 7) (i32.const 1100) (i32.const 1)))
    (i32.store8 (i32.const 1101)
      (i32.add (i32.const 48) (call $get_property (i32.const 1030) (i32.const 6) (i32.const 2000) (i32.const 2004))))
    (drop (call $add (i32.const 0) (i32.const 1010) (i32.const 15) (i32.const 1101) (i32.const 1)))
    (i64.store (i32.const 60000) (i64.const 0x5ec7e7))
    (i64.store (i32.const 70000) (i64.const 0x5ec7e7))
    (i64.store (i32.const 3145728) (i64.const 0x5ec7e7))
    (drop (call $set_property (i32.const 1030) (i32.const 6) (i32.const 1040) (i32.const 6)))
    (i32.const 0))
)"#
);

const NOT_FOUND: &str = "1";

/// An engine with a single pooling slot, so every new instance reuses the last one's.
fn one_slot_engine() -> Engine {
    let pooling = PoolingConfig { max_instances: 1, ..PoolingConfig::default() };
    Engine::new(EngineConfig { deadlines: false, pooling: Some(pooling), ..EngineConfig::default() }).expect("engine")
}

/// One request through a fresh VM of `module`: what it saw (`x-dirty`, `x-secret-status`).
fn snoop(module: &Arc<Module>) -> (String, String) {
    let mut h = Harness::new(module.clone(), "");
    let (stream, exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(stream, true).unwrap();
    let seen = (request_header(&exchange, "x-dirty").unwrap(), request_header(&exchange, "x-secret-status").unwrap());
    // A second request on the same instance sees its memory (one instance's own), but not
    // the first request's property.
    let (stream, exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(stream, true).unwrap();
    assert_eq!(request_header(&exchange, "x-dirty").as_deref(), Some("1"), "the probe wrote its secret");
    assert_eq!(request_header(&exchange, "x-secret-status").as_deref(), Some(NOT_FOUND), "properties are per stream");
    seen
}

#[test]
fn a_reused_slot_shows_nothing_of_its_last_instance() {
    let engine = one_slot_engine();
    let tenant_a = Module::new(&engine, "tenant-a", SNOOP.as_bytes(), None).unwrap();
    let tenant_b = Module::new(&engine, "tenant-b", SNOOP.as_bytes(), None).unwrap();
    for (round, module) in [&tenant_a, &tenant_b, &tenant_a, &tenant_a, &tenant_b].into_iter().enumerate() {
        assert_eq!(snoop(module), ("0".to_string(), NOT_FOUND.to_string()), "instance {round} ({})", module.name());
    }
}

#[test]
fn two_modules_alive_at_once_see_only_their_own() {
    let tenant_a = wat("tenant-a", SNOOP);
    let tenant_b = wat("tenant-b", SNOOP);
    let mut a = Harness::new(tenant_a, "");
    let mut b = Harness::new(tenant_b, "");
    for h in [&mut a, &mut b] {
        let (stream, exchange) = h.stream(&get_request_headers());
        h.vm.on_request_headers(stream, true).unwrap();
        assert_eq!(request_header(&exchange, "x-dirty").as_deref(), Some("0"), "{}", h.vm.module().name());
    }
}

/// As [`SNOOP`] with room from the start (a reset needs the memory not to grow), a global
/// each request bumps (`x-count`: its value before), a mark its configuration leaves in
/// memory (`x-configured`: 1 while it is there), and one more page probed and written that
/// depends on the request (its number of headers: 2 MiB + 64 KiB each).
const RESET_SNOOP: &str = concat!(
    "(module",
    probe_common!(),
    r#"  (memory (export "memory") 64)
  (global $count (mut i32) (i32.const 0))
  (data (i32.const 1050) "x-count")
  (data (i32.const 1060) "x-configured")
  (func $report (param $name i32) (param $length i32) (param $digit i32)
    (i32.store8 (i32.const 1100) (i32.add (i32.const 48) (local.get $digit)))
    (drop (call $add (i32.const 0) (local.get $name) (local.get $length) (i32.const 1100) (i32.const 1))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (i32.store8 (i32.const 200000) (i32.const 0x77)) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $own i32)
    (local.set $own (i32.add (i32.const 2097152) (i32.mul (local.get 1) (i32.const 65536))))
    (call $report (i32.const 1000) (i32.const 7) (i64.ne (i64.const 0) (i64.or (i64.load (i32.const 60000))
      (i64.or (i64.load (i32.const 70000)) (i64.or (i64.load (local.get $own)) (i64.load (i32.const 3145728)))))))
    (call $report (i32.const 1010) (i32.const 15)
      (call $get_property (i32.const 1030) (i32.const 6) (i32.const 2000) (i32.const 2004)))
    (call $report (i32.const 1050) (i32.const 7) (global.get $count))
    (call $report (i32.const 1060) (i32.const 12) (i32.eq (i32.load8_u (i32.const 200000)) (i32.const 0x77)))
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i64.store (i32.const 60000) (i64.const 0x5ec7e7))
    (i64.store (i32.const 70000) (i64.const 0x5ec7e7))
    (i64.store (i32.const 3145728) (i64.const 0x5ec7e7))
    (i64.store (local.get $own) (i64.const 0x5ec7e7))
    (i32.store8 (i32.const 200000) (i32.const 0))
    (drop (call $set_property (i32.const 1030) (i32.const 6) (i32.const 1040) (i32.const 6)))
    (i32.const 0))
)"#
);

/// One request's view: `x-dirty`, `x-secret-status`, `x-count`, `x-configured`.
fn reset_snoop(h: &mut Harness) -> [String; 4] {
    reset_snoop_with(h, &get_request_headers())
}

fn reset_snoop_with(h: &mut Harness, headers: &[(&str, &str)]) -> [String; 4] {
    let (stream, exchange) = h.stream(headers);
    h.vm.on_request_headers(stream, true).unwrap();
    h.vm.finish_stream(stream).unwrap();
    ["x-dirty", "x-secret-status", "x-count", "x-configured"].map(|name| request_header(&exchange, name).unwrap())
}

/// [`RESET_SNOOP`] whose configuration writes 400 KiB (its mark among them), as a runtime
/// that sets up its heap at start-up does: each reset copies those pages back as well.
fn big_start_snoop() -> String {
    RESET_SNOOP.replace(
        "(i32.store8 (i32.const 200000) (i32.const 0x77))",
        "(memory.fill (i32.const 131072) (i32.const 0x77) (i32.const 409600))",
    )
}

#[test]
fn a_reset_vm_is_as_it_was_after_start_up() {
    for text in [RESET_SNOOP.to_string(), big_start_snoop()] {
        reset_vm_is_as_after_start_up(&text);
    }
}

fn reset_vm_is_as_after_start_up(text: &str) {
    let mut h = Harness::new(wat("reset-snoop", text), "");
    h.vm.keep_reset_point().expect("a module of memory and numeric globals can be reset");
    let fresh = ["0", NOT_FOUND, "0", "1"].map(String::from);
    for round in 0..3 {
        assert_eq!(reset_snoop(&mut h), fresh, "request {round}");
        h.vm.reset().unwrap();
    }
    // Without a reset the next request sees the last one's memory and global (so the probe
    // does look where a request leaves things).
    assert_eq!(reset_snoop(&mut h), fresh);
    assert_eq!(reset_snoop(&mut h), ["1", NOT_FOUND, "1", "0"].map(String::from));
    h.vm.reset().unwrap();
    assert_eq!(reset_snoop(&mut h), fresh);
    h.vm.reset().unwrap();
    // A request that writes a page none wrote before, after the pages written so far were
    // found: that page is put back too (a reset looks again after a page fault).
    let mut five = get_request_headers();
    five.push(("x-more", "1"));
    for round in 0..2 {
        assert_eq!(reset_snoop_with(&mut h, &five), fresh, "five headers, request {round}");
        h.vm.reset().unwrap();
    }
    assert_eq!(h.vm.stats().instances_created, 1);
}

#[test]
fn a_vm_is_not_reset_when_its_memory_grew_or_a_stream_is_open() {
    let mut grows = Harness::new(wat("snoop", SNOOP), "");
    grows.vm.keep_reset_point().unwrap();
    reset_snoop_once(&mut grows);
    assert_eq!(grows.vm.reset(), Err(NotResettable::MemoryGrew));

    let mut open = Harness::new(wat("reset-snoop", RESET_SNOOP), "");
    open.vm.keep_reset_point().unwrap();
    let (stream, _exchange) = open.stream(&get_request_headers());
    assert_eq!(open.vm.reset(), Err(NotResettable::Changed));
    open.vm.finish_stream(stream).unwrap();
    assert_eq!(open.vm.reset(), Ok(()));
}

fn reset_snoop_once(h: &mut Harness) {
    let (stream, _exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(stream, true).unwrap();
    h.vm.finish_stream(stream).unwrap();
}

/// [`RESET_SNOOP`] that sets its table when a stream starts.
fn table_setter() -> Arc<Module> {
    let text = RESET_SNOOP.replace(
        "(func (export \"proxy_on_context_create\") (param i32 i32))",
        "(table 1 funcref) (elem declare func $report)
         (func (export \"proxy_on_context_create\") (param i32 i32) (table.set (i32.const 0) (ref.func $report)))",
    );
    wat("table-setter", &text)
}

#[test]
fn a_module_that_changes_its_table_cannot_be_reset() {
    let mut h = Harness::new(table_setter(), "");
    assert_eq!(h.vm.keep_reset_point(), Err(NotResettable::Module));
    assert_eq!(h.vm.reset(), Err(NotResettable::Changed));
}

#[test]
fn kept_instances_come_back_reset_and_a_filter_that_cannot_be_reset_is_told_once() {
    let mut kept = KeptInstances::new(false);
    let mut h = Harness::new(wat("reset-snoop", RESET_SNOOP), "");
    assert_eq!(kept.prepare(&mut h.vm), None);
    for round in 0..3 {
        assert_eq!(reset_snoop(&mut h), ["0", NOT_FOUND, "0", "1"].map(String::from), "request {round}");
        assert_eq!(kept.give_back(h, |h| h.vm.reset()), None);
        h = kept.take().expect("the instance was kept");
    }
    assert!(kept.take().is_none());

    // Its memory grows during requests: the instance is dropped, and why is told once; the
    // filter's next instances are left as they start (no reset point), and not kept.
    let mut grows = KeptInstances::new(false);
    let mut h = Harness::new(wat("snoop", SNOOP), "");
    assert_eq!(grows.prepare(&mut h.vm), None);
    reset_snoop_once(&mut h);
    assert_eq!(grows.give_back(h, |h| h.vm.reset()), Some(NotResettable::MemoryGrew));
    assert!(grows.is_empty());
    let mut h = Harness::new(wat("snoop", SNOOP), "");
    assert_eq!(grows.prepare(&mut h.vm), None);
    assert_eq!(h.vm.reset(), Err(NotResettable::Changed));
    assert_eq!(grows.give_back(h, |h| h.vm.reset()), None);
    assert!(grows.is_empty());

    // Its module changes its table: found when the first instance is prepared.
    let mut table_setter_kept = KeptInstances::<Harness>::new(false);
    let mut h = Harness::new(table_setter(), "");
    assert_eq!(table_setter_kept.prepare(&mut h.vm), Some(NotResettable::Module));
    assert_eq!(table_setter_kept.prepare(&mut h.vm), None);

    // A filter kept fresh-only from the start is never prepared; and no more than LIMIT are kept.
    let mut background = KeptInstances::<Harness>::new(true);
    let mut h = Harness::new(wat("reset-snoop", RESET_SNOOP), "");
    assert_eq!(background.prepare(&mut h.vm), None);
    assert_eq!(h.vm.reset(), Err(NotResettable::Changed));
    let mut many = KeptInstances::new(false);
    for instance in 0..KeptInstances::<u32>::LIMIT + 5 {
        assert_eq!(many.give_back(instance, |_| Ok(())), None);
    }
    assert_eq!(many.len(), KeptInstances::<u32>::LIMIT);
}
