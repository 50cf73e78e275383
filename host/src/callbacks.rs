//! The module's callbacks (its `proxy_on_*` exports), resolved once per instance.
//!
//! Callbacks are called with as many arguments as the export declares, so the shapes of every
//! ABI version work unchanged (e.g. 0.1.0's `on_request_headers(ctx, n)` against 0.2.x's
//! `(ctx, n, end_of_stream)`).

use wasmtime::{AsContext, AsContextMut, ExternType, Func, Instance, ModuleExport, TypedFunc, ValType};

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

/// How an export is called: its parameter count (all i32) and whether it returns an i32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    params: usize,
    returns: bool,
}

/// The callbacks a module exports, found once when it is compiled: where each export is and
/// its shape; and where its allocator and memory are.
#[derive(Clone)]
pub(crate) struct CallbackIndex {
    exports: Vec<Option<(ModuleExport, Shape)>>,
    allocator: Option<ModuleExport>,
    memory: Option<ModuleExport>,
}

impl CallbackIndex {
    pub fn new(module: &wasmtime::Module) -> CallbackIndex {
        let allocator = crate::module::ALLOCATORS.iter().find_map(|name| match module.get_export(name) {
            Some(ExternType::Func(_)) => module.get_export_index(name),
            _ => None,
        });
        let memory = module.get_export_index("memory");
        let exports = Callback::ALL
            .iter()
            .map(|callback| {
                let name = callback.export_name();
                let Some(ExternType::Func(ty)) = module.get_export(name) else { return None };
                let all_i32 = ty.params().all(|p| matches!(p, ValType::I32));
                let returns = match ty.results().collect::<Vec<_>>().as_slice() {
                    [] => false,
                    [ValType::I32] => true,
                    _ => return None,
                };
                let shape = Shape { params: ty.params().len(), returns };
                (all_i32 && shape.params <= 5).then(|| (module.get_export_index(name).expect("exported"), shape))
            })
            .collect();
        CallbackIndex { exports, allocator, memory }
    }

    /// The instance's allocator (checked to be `(i32) -> i32` when the module was vetted).
    pub fn allocator(&self, instance: &Instance, mut store: impl AsContextMut) -> Option<TypedFunc<i32, i32>> {
        let func = instance.get_module_export(&mut store, self.allocator.as_ref()?)?.into_func()?;
        // SAFETY: `Module::new` refuses a module whose allocator has another type.
        Some(unsafe { TypedFunc::new_unchecked(&store, func) })
    }

    pub fn memory(&self, instance: &Instance, mut store: impl AsContextMut) -> Option<wasmtime::Memory> {
        instance.get_module_export(&mut store, self.memory.as_ref()?)?.into_memory()
    }
}

/// A callback with its type known, so calls need no checks (i32 parameters, optional i32
/// result).
enum Typed {
    P0(TypedFunc<(), ()>),
    P1(TypedFunc<i32, ()>),
    P2(TypedFunc<(i32, i32), ()>),
    P3(TypedFunc<(i32, i32, i32), ()>),
    P4(TypedFunc<(i32, i32, i32, i32), ()>),
    P5(TypedFunc<(i32, i32, i32, i32, i32), ()>),
    R0(TypedFunc<(), i32>),
    R1(TypedFunc<i32, i32>),
    R2(TypedFunc<(i32, i32), i32>),
    R3(TypedFunc<(i32, i32, i32), i32>),
    R4(TypedFunc<(i32, i32, i32, i32), i32>),
    R5(TypedFunc<(i32, i32, i32, i32, i32), i32>),
}

impl Typed {
    /// # Safety
    /// `func` must have `shape` (checked against the module's export type when indexed).
    unsafe fn new(store: impl AsContext, func: Func, shape: Shape) -> Typed {
        use Typed::*;
        match (shape.params, shape.returns) {
            (0, false) => P0(TypedFunc::new_unchecked(store, func)),
            (1, false) => P1(TypedFunc::new_unchecked(store, func)),
            (2, false) => P2(TypedFunc::new_unchecked(store, func)),
            (3, false) => P3(TypedFunc::new_unchecked(store, func)),
            (4, false) => P4(TypedFunc::new_unchecked(store, func)),
            (5, false) => P5(TypedFunc::new_unchecked(store, func)),
            (0, true) => R0(TypedFunc::new_unchecked(store, func)),
            (1, true) => R1(TypedFunc::new_unchecked(store, func)),
            (2, true) => R2(TypedFunc::new_unchecked(store, func)),
            (3, true) => R3(TypedFunc::new_unchecked(store, func)),
            (4, true) => R4(TypedFunc::new_unchecked(store, func)),
            _ => R5(TypedFunc::new_unchecked(store, func)),
        }
    }

    /// Calls with the first arguments the export declares (missing ones are 0).
    fn call(&self, mut store: impl AsContextMut, args: &[u32]) -> wasmtime::Result<Option<i32>> {
        use Typed::*;
        let a = |i: usize| args.get(i).copied().unwrap_or(0) as i32;
        let store = &mut store;
        Ok(match self {
            P0(f) => f.call(store, ()).map(|()| None)?,
            P1(f) => f.call(store, a(0)).map(|()| None)?,
            P2(f) => f.call(store, (a(0), a(1))).map(|()| None)?,
            P3(f) => f.call(store, (a(0), a(1), a(2))).map(|()| None)?,
            P4(f) => f.call(store, (a(0), a(1), a(2), a(3))).map(|()| None)?,
            P5(f) => f.call(store, (a(0), a(1), a(2), a(3), a(4))).map(|()| None)?,
            R0(f) => Some(f.call(store, ())?),
            R1(f) => Some(f.call(store, a(0))?),
            R2(f) => Some(f.call(store, (a(0), a(1)))?),
            R3(f) => Some(f.call(store, (a(0), a(1), a(2)))?),
            R4(f) => Some(f.call(store, (a(0), a(1), a(2), a(3)))?),
            R5(f) => Some(f.call(store, (a(0), a(1), a(2), a(3), a(4)))?),
        })
    }
}

/// The callbacks one instance exports, each looked up on its first call (absent ones are
/// skipped). A fresh instance per request uses about half of them, and looking one up
/// (wasmtime makes its function reference) was a quarter of what a fresh instance cost.
pub(crate) struct Callbacks {
    instance: Instance,
    exports: [Lookup; Callback::ALL.len()],
}

enum Lookup {
    NotYet,
    Absent,
    Found(Typed),
}

impl Callbacks {
    pub fn new(instance: Instance) -> Callbacks {
        Callbacks { instance, exports: std::array::from_fn(|_| Lookup::NotYet) }
    }

    /// Calls `callback` with the first `args` it declares (missing ones are 0). `Ok(None)`
    /// when the module does not export it or it returns nothing.
    pub fn call(
        &mut self,
        mut store: impl AsContextMut,
        index: &CallbackIndex,
        callback: Callback,
        args: &[u32],
    ) -> wasmtime::Result<Option<i32>> {
        let slot = &mut self.exports[callback as usize];
        if let Lookup::NotYet = slot {
            *slot = match Self::find(self.instance, &mut store, index, callback) {
                Some(typed) => Lookup::Found(typed),
                None => Lookup::Absent,
            };
        }
        match slot {
            Lookup::Found(typed) => typed.call(store, args),
            _ => Ok(None),
        }
    }

    fn find(instance: Instance, mut store: impl AsContextMut, index: &CallbackIndex, callback: Callback) -> Option<Typed> {
        let (export, shape) = index.exports[callback as usize].as_ref()?;
        let func = instance.get_module_export(&mut store, export)?.into_func()?;
        // SAFETY: the shape was read from this module's export type.
        Some(unsafe { Typed::new(&store, func, *shape) })
    }
}
