//! proxy_call_foreign_function: the host's own functions (`compress` and `uncompress`, zlib
//! streams as in Envoy's Wasm filter), then whatever the proxy offers.

use std::io::Read;

use flate2::read::{ZlibDecoder, ZlibEncoder};
use flate2::Compression;
use wasmtime::Linker;

use super::abi_fn;
use crate::session::HostState;
use crate::types::Status;

/// The most `compress` takes: host work runs outside the callback's deadline, so its size is
/// what bounds its time (about 50 ms at this size).
pub const MAX_COMPRESS_INPUT: usize = 4 << 20;
/// The most `uncompress` gives (less if the instance's memory limit is lower).
pub const MAX_UNCOMPRESSED: usize = 16 << 20;

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    abi_fn!(linker, "proxy_call_foreign_function", |g,
                                                    name_ptr: i32,
                                                    name_len: i32,
                                                    args_ptr: i32,
                                                    args_len: i32,
                                                    ret_ptr: i32,
                                                    ret_len: i32| {
        let name = g.read_string(name_ptr, name_len)?;
        let args = g.read(args_ptr, args_len)?;
        let result = match name.as_str() {
            "compress" => compress(&args)?,
            "uncompress" => uncompress(&args, MAX_UNCOMPRESSED.min(g.state().vm.memory_limit))?,
            _ => g.embedding()?.call_foreign_function(&name, &args)?,
        };
        g.return_bytes(&result, ret_ptr, ret_len)
    });
    Ok(())
}

/// `input` as a zlib stream at the default level.
fn compress(input: &[u8]) -> Result<Vec<u8>, Status> {
    if input.len() > MAX_COMPRESS_INPUT {
        return Err(Status::BadArgument);
    }
    let mut output = Vec::new();
    ZlibEncoder::new(input, Compression::default()).read_to_end(&mut output).map_err(|_| Status::SerializationFailure)?;
    Ok(output)
}

/// The bytes of zlib stream `input`, at most `limit` of them (`BAD_ARGUMENT` beyond; a
/// stream that is not zlib: `SERIALIZATION_FAILURE`).
fn uncompress(input: &[u8], limit: usize) -> Result<Vec<u8>, Status> {
    let mut output = Vec::new();
    let read = ZlibDecoder::new(input).take(limit as u64 + 1).read_to_end(&mut output);
    read.map_err(|_| Status::SerializationFailure)?;
    if output.len() > limit {
        return Err(Status::BadArgument);
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let text = b"hello world, hello world, hello world".repeat(100);
        let packed = compress(&text).unwrap();
        assert_eq!(&packed[..2], &[0x78, 0x9c], "a zlib stream at the default level");
        assert_eq!(uncompress(&packed, 1 << 20).unwrap(), text);
        assert_eq!(uncompress(&packed, 100), Err(Status::BadArgument), "a bomb is cut at the limit");
        assert_eq!(uncompress(b"not zlib", 1 << 20), Err(Status::SerializationFailure));
        assert_eq!(compress(&vec![0; MAX_COMPRESS_INPUT + 1]), Err(Status::BadArgument));
    }
}
