//! Preparing a module, once before it is compiled, so that an instance of it can be returned
//! to its state after start-up and serve another request (see `snapshot.rs`).
//!
//! A request can change an instance's memory, its globals, its tables and which of its
//! segments are dropped. Only the first two can be put back from outside, so a module
//! qualifies when its code changes no table and drops no segment (`table.set`, `table.grow`,
//! `table.fill`, `table.copy`, `table.init`, `elem.drop`, `data.drop`), it has one memory of
//! its own, not shared, and its mutable globals hold numbers. Its mutable globals are then
//! exported under [`GLOBAL_PREFIX`] (a global that is not exported cannot be read from
//! outside), and the [`MARKER`] export says that it qualified: a module loaded from the
//! compiled-code cache is known by it, without reading its code again.

use std::borrow::Cow;

use wasmparser::{BinaryReader, ExternalKind, Operator, Parser, Payload, TypeRef, ValType};

/// Exported (as the module's memory) by a module prepared for reset.
pub(crate) const MARKER: &str = "inwasm:resettable";
/// The prefix of a mutable global's export added for reset (then the global's index).
pub(crate) const GLOBAL_PREFIX: &str = "inwasm:global:";

/// Which changes the cache's entries hold (a key part: entries made before this preparation
/// existed, or by another version of it, are compiled again).
pub(crate) const PREPARATION: &[u8] = b"resettable-exports-1";

/// `bytes` (binary or text) as compiled: with the exports reset needs when the module
/// qualifies, else unchanged. A module that cannot be read is left for wasmtime to report.
pub(crate) fn prepare(bytes: &[u8]) -> Cow<'_, [u8]> {
    let binary = match bytes.starts_with(b"\0asm") {
        true => Cow::Borrowed(bytes),
        false => match wat::parse_bytes(bytes) {
            Ok(binary) => Cow::Owned(binary.into_owned()),
            Err(_) => return Cow::Borrowed(bytes),
        },
    };
    match with_reset_exports(&binary) {
        Some(prepared) => Cow::Owned(prepared),
        None => binary,
    }
}

/// The module with its mutable globals and the marker exported, if it qualifies.
fn with_reset_exports(bytes: &[u8]) -> Option<Vec<u8>> {
    let mutable_globals = qualifying_globals(bytes)?;
    let mut module = wasm_encoder::Module::new();
    let mut reader = BinaryReader::new(bytes.get(8..)?, 8);
    let mut exported = false;
    while !reader.eof() {
        let id = reader.read_u8().ok()?;
        let size = reader.read_var_u32().ok()? as usize;
        let data = reader.read_bytes(size).ok()?;
        if id == EXPORT_SECTION {
            module.section(&exports_with(data, &mutable_globals)?);
            exported = true;
        } else {
            module.section(&wasm_encoder::RawSection { id, data });
        }
    }
    // A proxy-wasm filter exports its memory and callbacks; a module without exports is
    // refused later anyway.
    exported.then(|| module.finish())
}

const EXPORT_SECTION: u8 = 7;

/// The indices of the module's mutable globals, if the module qualifies.
fn qualifying_globals(bytes: &[u8]) -> Option<Vec<u32>> {
    let (mut memories, mut imported_globals, mut globals) = (0, 0, Vec::new());
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    match import.ok()?.ty {
                        TypeRef::Memory(_) => return None,
                        TypeRef::Global(global) if global.mutable => return None,
                        TypeRef::Global(_) => imported_globals += 1,
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(section) => {
                for memory in section {
                    if memory.ok()?.shared {
                        return None;
                    }
                    memories += 1;
                }
            }
            Payload::GlobalSection(section) => {
                for (index, global) in section.into_iter().enumerate() {
                    let ty = global.ok()?.ty;
                    if !ty.mutable {
                        continue;
                    }
                    if !matches!(ty.content_type, ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64 | ValType::V128) {
                        return None;
                    }
                    globals.push(imported_globals + index as u32);
                }
            }
            Payload::ExportSection(section) => {
                for export in section {
                    if export.ok()?.name.starts_with("inwasm:") {
                        return None;
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut operators = body.get_operators_reader().ok()?;
                while !operators.eof() {
                    if changes_tables_or_segments(&operators.read().ok()?) {
                        return None;
                    }
                }
            }
            _ => {}
        }
    }
    (memories == 1).then_some(globals)
}

fn changes_tables_or_segments(operator: &Operator) -> bool {
    matches!(
        operator,
        Operator::TableSet { .. }
            | Operator::TableGrow { .. }
            | Operator::TableFill { .. }
            | Operator::TableCopy { .. }
            | Operator::TableInit { .. }
            | Operator::ElemDrop { .. }
            | Operator::DataDrop { .. }
    )
}

/// The export section `data` with the globals and the marker added.
fn exports_with(data: &[u8], mutable_globals: &[u32]) -> Option<wasm_encoder::ExportSection> {
    use wasm_encoder::ExportKind;
    let mut section = wasm_encoder::ExportSection::new();
    for export in wasmparser::ExportSectionReader::new(BinaryReader::new(data, 0)).ok()? {
        let export = export.ok()?;
        let kind = match export.kind {
            ExternalKind::Func => ExportKind::Func,
            ExternalKind::Table => ExportKind::Table,
            ExternalKind::Memory => ExportKind::Memory,
            ExternalKind::Global => ExportKind::Global,
            ExternalKind::Tag => ExportKind::Tag,
            _ => return None,
        };
        section.export(export.name, kind, export.index);
    }
    for &index in mutable_globals {
        section.export(&format!("{GLOBAL_PREFIX}{index}"), ExportKind::Global, index);
    }
    section.export(MARKER, ExportKind::Memory, 0);
    Some(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports(bytes: &[u8]) -> Vec<String> {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, bytes).unwrap();
        module.exports().map(|e| e.name().to_string()).collect()
    }

    #[test]
    fn mutable_globals_are_exported_with_the_marker() {
        let wat = r#"(module (memory (export "memory") 1)
            (global $sp (mut i32) (i32.const 1024)) (global $c i32 (i32.const 1))
            (global $n (mut i64) (i64.const 0))
            (func (export "f") (global.set $sp (i32.const 0))))"#;
        let prepared = prepare(wat.as_bytes());
        assert_eq!(exports(&prepared), ["memory", "f", "inwasm:global:0", "inwasm:global:2", "inwasm:resettable"]);
    }

    #[test]
    fn a_module_that_changes_a_table_is_left_as_it_is() {
        let wat = r#"(module (memory (export "memory") 1) (table 1 funcref) (func $g)
            (func (export "f") (table.set (i32.const 0) (ref.func $g))) (elem declare func $g))"#;
        assert_eq!(exports(&prepare(wat.as_bytes())), ["memory", "f"]);
    }

    #[test]
    fn a_module_with_a_reference_global_or_no_memory_is_left_as_it_is() {
        let reference = r#"(module (memory (export "memory") 1) (global (mut funcref) (ref.null func)))"#;
        assert_eq!(exports(&prepare(reference.as_bytes())), ["memory"]);
        let no_memory = r#"(module (global (export "g") (mut i32) (i32.const 0)))"#;
        assert_eq!(exports(&prepare(no_memory.as_bytes())), ["g"]);
    }

    #[test]
    fn what_cannot_be_read_is_passed_on() {
        assert_eq!(&*prepare(b"\0asm\x01\0\0\0\x07\xff"), b"\0asm\x01\0\0\0\x07\xff");
        assert_eq!(&*prepare(b"(module"), b"(module");
    }
}
