//! The module's callbacks (its `proxy_on_*` exports), resolved once per instance.
//!
//! Callbacks are called with as many arguments as the export declares, so the shapes of every
//! ABI version work unchanged (e.g. 0.1.0's `on_request_headers(ctx, n)` against 0.2.x's
//! `(ctx, n, end_of_stream)`).

use wasmtime::{AsContextMut, Func, Instance, Val, ValType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Callback {
    ContextCreate,
    VmStart,
    Configure,
    Tick,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    Done,
    Log,
    Delete,
    HttpCallResponse,
    GrpcReceiveInitialMetadata,
    GrpcReceive,
    GrpcReceiveTrailingMetadata,
    GrpcClose,
    QueueReady,
    ForeignFunction,
}

impl Callback {
    const ALL: [Callback; 20] = [
        Callback::ContextCreate,
        Callback::VmStart,
        Callback::Configure,
        Callback::Tick,
        Callback::RequestHeaders,
        Callback::RequestBody,
        Callback::RequestTrailers,
        Callback::ResponseHeaders,
        Callback::ResponseBody,
        Callback::ResponseTrailers,
        Callback::Done,
        Callback::Log,
        Callback::Delete,
        Callback::HttpCallResponse,
        Callback::GrpcReceiveInitialMetadata,
        Callback::GrpcReceive,
        Callback::GrpcReceiveTrailingMetadata,
        Callback::GrpcClose,
        Callback::QueueReady,
        Callback::ForeignFunction,
    ];

    pub fn export_name(self) -> &'static str {
        match self {
            Callback::ContextCreate => "proxy_on_context_create",
            Callback::VmStart => "proxy_on_vm_start",
            Callback::Configure => "proxy_on_configure",
            Callback::Tick => "proxy_on_tick",
            Callback::RequestHeaders => "proxy_on_request_headers",
            Callback::RequestBody => "proxy_on_request_body",
            Callback::RequestTrailers => "proxy_on_request_trailers",
            Callback::ResponseHeaders => "proxy_on_response_headers",
            Callback::ResponseBody => "proxy_on_response_body",
            Callback::ResponseTrailers => "proxy_on_response_trailers",
            Callback::Done => "proxy_on_done",
            Callback::Log => "proxy_on_log",
            Callback::Delete => "proxy_on_delete",
            Callback::HttpCallResponse => "proxy_on_http_call_response",
            Callback::GrpcReceiveInitialMetadata => "proxy_on_grpc_receive_initial_metadata",
            Callback::GrpcReceive => "proxy_on_grpc_receive",
            Callback::GrpcReceiveTrailingMetadata => "proxy_on_grpc_receive_trailing_metadata",
            Callback::GrpcClose => "proxy_on_grpc_close",
            Callback::QueueReady => "proxy_on_queue_ready",
            Callback::ForeignFunction => "proxy_on_foreign_function",
        }
    }
}

struct Export {
    func: Func,
    params: usize,
    returns_value: bool,
}

/// The callbacks one instance exports (absent ones are skipped when called).
pub(crate) struct Callbacks {
    exports: Vec<Option<Export>>,
}

impl Callbacks {
    pub fn resolve(instance: &Instance, mut store: impl AsContextMut) -> Callbacks {
        let exports = Callback::ALL
            .iter()
            .map(|callback| {
                let func = instance.get_func(&mut store, callback.export_name())?;
                let ty = func.ty(&store);
                let all_i32 = ty.params().all(|p| matches!(p, ValType::I32));
                all_i32.then(|| Export {
                    func,
                    params: ty.params().len(),
                    returns_value: matches!(ty.results().next(), Some(ValType::I32)),
                })
            })
            .collect();
        Callbacks { exports }
    }

    /// Calls `callback` with the first `args` it declares (missing ones are 0). `Ok(None)`
    /// when the module does not export it or it returns nothing.
    pub fn call(
        &self,
        mut store: impl AsContextMut,
        callback: Callback,
        args: &[u32],
    ) -> wasmtime::Result<Option<i32>> {
        let Some(export) = &self.exports[callback as usize] else {
            return Ok(None);
        };
        let params: Vec<Val> = (0..export.params).map(|i| Val::I32(args.get(i).copied().unwrap_or(0) as i32)).collect();
        let mut result = [Val::I32(0)];
        let results = if export.returns_value { &mut result[..] } else { &mut [] };
        export.func.call(&mut store, &params, results)?;
        Ok(export.returns_value.then(|| result[0].unwrap_i32()))
    }
}
