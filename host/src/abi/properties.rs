//! proxy_get_property, proxy_set_property.
//!
//! Lookup order: values the filter set on this context, the plugin's own properties
//! (`plugin_name`, `plugin_root_id`, `plugin_vm_id`), then the embedding.

use wasmtime::Linker;

use super::abi_fn;
use crate::guest::{AbiResult, Guest};
use crate::serialization::split_property_path;
use crate::session::HostState;
use crate::types::Status;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_get_property", |g, path_ptr: i32, path_len: i32, ret_ptr: i32, ret_len: i32| {
        let path = g.read(path_ptr, path_len)?;
        let value = property(&mut g, &path)?.ok_or(Status::NotFound)?;
        g.return_bytes(&value, ret_ptr, ret_len)
    });
    abi_fn!(linker, "proxy_set_property", |g, path_ptr: i32, path_len: i32, value_ptr: i32, value_len: i32| {
        let path = g.read(path_ptr, path_len)?;
        let value = g.read(value_ptr, value_len)?;
        let context = g.effective_context()?;
        match context.embedding.set_property(&split_property_path(&path), &value) {
            Err(Status::NotFound) => {
                context.properties.insert(normalize(&path).to_vec(), value);
                Ok(())
            }
            other => Ok(other?),
        }
    });
    Ok(())
}

fn normalize(path: &[u8]) -> &[u8] {
    path.strip_suffix(b"\0").unwrap_or(path)
}

fn property(g: &mut Guest<'_, '_>, path: &[u8]) -> AbiResult<Option<Vec<u8>>> {
    let path = normalize(path);
    if let Some(value) = g.effective_context()?.properties.get(path) {
        return Ok(Some(value.clone()));
    }
    let state = g.state();
    if let Some(plugin) = state.effective_plugin() {
        let known = match path {
            b"plugin_name" => Some(plugin.name.as_bytes()),
            b"plugin_root_id" => Some(plugin.root_id.as_bytes()),
            b"plugin_vm_id" => Some(state.vm.vm_id.as_bytes()),
            _ => None,
        };
        if let Some(value) = known {
            return Ok(Some(value.to_vec()));
        }
    }
    Ok(g.embedding()?.property(&split_property_path(path))?)
}
