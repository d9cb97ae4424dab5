//! Loading a filter ([`WasmFilter`], compiled once, shared by every
//! thread) and running it ([`FilterInstance`], one per worker thread).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use header_policy::Headers;
use wasmtime::{Config, Engine, InstancePre, Linker, Module, Store, Trap, TypedFunc};

use crate::abi::{ACTION_CONTINUE, ACTION_PAUSE};
use crate::props::StreamInfo;
use crate::state::{HostState, MemoryLimitHit, Metric, Phase, Shared};

/// How often the engine's epoch advances: the granularity of call time
/// limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Memory a filter instance may grow to.
pub const DEFAULT_MEMORY_BYTES: usize = 32 << 20;
/// Time one callback may run.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// Bytes of names and values in one header map.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 256 << 10;
/// After a failed start, how long new streams fail fast before the host
/// tries again (a module that crashes while starting is not restarted per
/// request).
pub const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// Per-instance limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: usize,
    pub call_timeout: Duration,
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// How the embedder configures one filter.
#[derive(Debug, Clone, Default)]
pub struct PluginSpec {
    /// For logs and the `plugin_name` property.
    pub name: String,
    /// `plugin_root_id`, `plugin_vm_id` (Envoy's `root_id` / `vm_id`).
    pub root_id: String,
    pub vm_id: String,
    /// The plugin configuration (`PLUGIN_CONFIGURATION`).
    pub configuration: Vec<u8>,
    /// `VM_CONFIGURATION`.
    pub vm_configuration: Vec<u8>,
    pub limits: Limits,
}

/// `1`: write /tmp/perf-<pid>.map, the address and name of every function
/// the filters' modules compile to (a module keeps its names unless it was
/// stripped).
pub const PERF_MAP_ENV: &str = "EDGE_WASM_PERF_MAP";

/// The wasmtime engine and the host functions, shared by every filter, and
/// the thread that advances the epoch for time limits. Cheap to clone.
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    ticker: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl WasmRuntime {
    pub fn new() -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        if std::env::var_os(PERF_MAP_ENV).is_some_and(|v| v == "1") {
            // Names the filters' compiled functions for `perf` (and for
            // `scripts/callgrind --guest`) in /tmp/perf-<pid>.map.
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        crate::hostcalls::add_to_linker(&mut linker)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| LoadError::Engine(format!("epoch thread: {e}")))?
        };
        Ok(WasmRuntime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                ticker: Mutex::new(Some(ticker)),
                stop,
            }),
        })
    }
}

/// Why a module was refused at load: what `check-config` reports.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the wasm engine could not start: {0}")]
    Engine(String),
    #[error("not a valid WebAssembly module: {0}")]
    Compile(String),
    #[error("{0}")]
    Abi(String),
    #[error("imports what this host does not provide: {}", .0.join(", "))]
    MissingImports(Vec<String>),
    #[error("cannot link: {0}")]
    Link(String),
    #[error("failed while starting: {0}")]
    Start(String),
    #[error("refused its configuration{}", log_suffix(.log))]
    Refused { log: Vec<String> },
}

fn log_suffix(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(": {}", log.join("; "))
    }
}

/// Why a callback failed. The request fails (500 in the edge); after a
/// crash (timeout, memory limit, trap) the instance is replaced before the
/// next stream.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filter {filter}: {callback} ran past its time limit of {limit:?}")]
    Timeout {
        filter: String,
        callback: &'static str,
        limit: Duration,
    },
    #[error("filter {filter}: {callback} grew past the memory limit of {limit} bytes")]
    MemoryLimit {
        filter: String,
        callback: &'static str,
        limit: usize,
    },
    #[error("filter {filter}: {callback} crashed: {message}")]
    Trap {
        filter: String,
        callback: &'static str,
        message: String,
    },
    #[error("filter {filter}: {callback} paused the stream, which this host cannot resume")]
    Paused {
        filter: String,
        callback: &'static str,
    },
    #[error(
        "filter {filter}: the instance was replaced after a crash; this stream's state is gone"
    )]
    StreamLost { filter: String },
    #[error("filter {filter}: cannot start an instance: {reason}")]
    Start { filter: String, reason: String },
}

/// What to do with the request or response after a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Go on, with the headers as the filter left them.
    Continue,
    /// Answer with this response instead (`proxy_send_local_response`).
    Respond(LocalReply),
    /// The filter closed the stream (`proxy_close_stream`): reset it.
    Reset,
}

/// A response the filter sent itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    /// Lowercase names, checked values.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// `status_code_details`, for logs.
    pub details: String,
    /// Set for a gRPC answer.
    pub grpc_status: Option<u32>,
}

/// A compiled module that speaks ABI 0.2.1 and imports only what this host
/// provides. Cheap to clone: one module can back several filters (the
/// same `.wasm` with different configurations on different routes).
#[derive(Clone)]
pub struct WasmModule {
    runtime: WasmRuntime,
    pre: InstancePre<HostState>,
}

impl WasmModule {
    /// Compiles `wasm` and checks its exports and imports.
    pub fn compile(runtime: &WasmRuntime, wasm: &[u8]) -> Result<Self, LoadError> {
        let engine = &runtime.inner.engine;
        let module = Module::new(engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        check_exports(&module)?;
        let missing: Vec<String> = module
            .imports()
            .filter(|i| {
                !(matches!(i.ty(), wasmtime::ExternType::Func(_))
                    && crate::hostcalls::PROVIDED.contains(&(i.module(), i.name())))
            })
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect();
        if !missing.is_empty() {
            return Err(LoadError::MissingImports(missing));
        }
        let pre = runtime
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        Ok(WasmModule {
            runtime: runtime.clone(),
            pre,
        })
    }
}

/// A module with its configuration, checked by starting it once.
/// `Send + Sync`: load once, then [`WasmFilter::instantiate`] on each
/// worker thread.
#[derive(Clone)]
pub struct WasmFilter {
    module: WasmModule,
    shared: Arc<Shared>,
}

impl WasmFilter {
    /// [`WasmModule::compile`] then [`WasmFilter::new`].
    pub fn load(runtime: &WasmRuntime, wasm: &[u8], spec: PluginSpec) -> Result<Self, LoadError> {
        Self::new(&WasmModule::compile(runtime, wasm)?, spec)
    }

    /// Starts one instance to run the module's `_initialize`,
    /// `on_vm_start` and `on_configure`: a filter that cannot start or
    /// refuses its configuration is refused here, with what it logged.
    pub fn new(module: &WasmModule, spec: PluginSpec) -> Result<Self, LoadError> {
        let filter = WasmFilter {
            module: module.clone(),
            shared: Arc::new(Shared {
                spec,
                shared_data: Default::default(),
                metrics: Default::default(),
                started: Instant::now(),
            }),
        };
        match Vm::start(&filter, true) {
            Ok(_) => Ok(filter),
            Err(StartError::Refused(log)) => Err(LoadError::Refused { log }),
            Err(StartError::Failed(reason)) => Err(LoadError::Start(reason)),
        }
    }

    /// A new instance for the calling thread. It starts lazily, with the
    /// first stream.
    pub fn instantiate(&self) -> FilterInstance {
        FilterInstance {
            id: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            filter: self.clone(),
            vm: None,
            generation: 0,
            next_context: 1,
            crashes: 0,
            failed_start: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.spec.name
    }

    /// The metrics the filter defined, across its instances.
    pub fn metrics(&self) -> Vec<Metric> {
        self.shared
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn check_exports(module: &Module) -> Result<(), LoadError> {
    let has = |name: &str| module.get_export(name).is_some();
    if !has("proxy_abi_version_0_2_1") {
        let other = ["0_2_0", "0_1_0"]
            .iter()
            .find(|v| has(&format!("proxy_abi_version_{v}")));
        return Err(LoadError::Abi(match other {
            Some(v) => format!(
                "speaks proxy-wasm ABI {}; this host speaks 0.2.1",
                v.replace('_', ".")
            ),
            None => "is not a proxy-wasm module (no proxy_abi_version_0_2_1 export)".into(),
        }));
    }
    if !matches!(
        module.get_export("memory"),
        Some(wasmtime::ExternType::Memory(_))
    ) {
        return Err(LoadError::Abi("exports no memory".into()));
    }
    if !has("proxy_on_memory_allocate") && !has("malloc") {
        return Err(LoadError::Abi(
            "exports no allocator (proxy_on_memory_allocate or malloc)".into(),
        ));
    }
    Ok(())
}

enum StartError {
    Refused(Vec<String>),
    Failed(String),
}

/// The guest's callbacks; absent ones are not called.
struct Callbacks {
    context_create: Option<TypedFunc<(i32, i32), ()>>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    done: Option<TypedFunc<i32, i32>>,
    log: Option<TypedFunc<i32, ()>>,
    delete: Option<TypedFunc<i32, ()>>,
}

/// One live instance: a store with the module instantiated and its root
/// context configured.
struct Vm {
    store: Store<HostState>,
    /// Shared so a call can borrow a callback while the store is borrowed
    /// mutably (cloning a `TypedFunc` costs a type-registry round trip).
    calls: Arc<Callbacks>,
    deadline_ticks: u64,
}

const ROOT_CONTEXT: u32 = 1;

impl Vm {
    fn start(filter: &WasmFilter, capture_log: bool) -> Result<Vm, StartError> {
        let limits = filter.shared.spec.limits;
        let engine = &filter.module.runtime.inner.engine;
        let mut state = HostState::new(filter.shared.clone(), limits);
        state.start_log = capture_log.then(Vec::new);
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        let deadline_ticks = limits
            .call_timeout
            .as_nanos()
            .div_ceil(EPOCH_TICK.as_nanos()) as u64
            + 1;
        store.set_epoch_deadline(deadline_ticks);
        let failed = |what: &str, e: wasmtime::Error| {
            StartError::Failed(format!("{what}: {}", describe(&e, limits)))
        };
        let instance = filter
            .module
            .pre
            .instantiate(&mut store)
            .map_err(|e| failed("instantiation", e))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .map_err(|e| failed("the allocator export", e))?;
        store.data_mut().memory = memory;
        store.data_mut().alloc = Some(Arc::new(alloc));

        macro_rules! export {
            ($name:literal) => {
                match instance.get_export(&mut store, $name) {
                    None => None,
                    Some(_) => Some(
                        instance
                            .get_typed_func(&mut store, $name)
                            .map_err(|e| failed(concat!("export ", $name), e))?,
                    ),
                }
            };
        }
        let initialize: Option<TypedFunc<(), ()>> = export!("_initialize");
        let main: Option<TypedFunc<(i32, i32), i32>> = export!("main");
        let start: Option<TypedFunc<(), ()>> = export!("_start");
        let calls = Callbacks {
            context_create: export!("proxy_on_context_create"),
            vm_start: export!("proxy_on_vm_start"),
            configure: export!("proxy_on_configure"),
            request_headers: export!("proxy_on_request_headers"),
            request_trailers: export!("proxy_on_request_trailers"),
            response_headers: export!("proxy_on_response_headers"),
            response_trailers: export!("proxy_on_response_trailers"),
            done: export!("proxy_on_done"),
            log: export!("proxy_on_log"),
            delete: export!("proxy_on_delete"),
        };
        let mut vm = Vm {
            store,
            calls: Arc::new(calls),
            deadline_ticks,
        };
        let calls = vm.calls.clone();
        // The specification's order: _initialize then main, or _start.
        if let Some(f) = initialize {
            vm.call("_initialize", Phase::Lifecycle, 0, |s| f.call(s, ()))
                .map_err(|e| StartError::Failed(e.to_string()))?;
            if let Some(f) = main {
                vm.call("main", Phase::Lifecycle, 0, |s| f.call(s, (0, 0)))
                    .map_err(|e| StartError::Failed(e.to_string()))?;
            }
        } else if let Some(f) = start {
            vm.call("_start", Phase::Lifecycle, 0, |s| f.call(s, ()))
                .map_err(|e| StartError::Failed(e.to_string()))?;
        }
        vm.store.data_mut().root_context = ROOT_CONTEXT;
        if let Some(f) = &calls.context_create {
            vm.call(
                "proxy_on_context_create",
                Phase::Lifecycle,
                ROOT_CONTEXT,
                |s| f.call(s, (ROOT_CONTEXT as i32, 0)),
            )
            .map_err(|e| StartError::Failed(e.to_string()))?;
        }
        let spec = &filter.shared.spec;
        for (name, phase, f, size) in [
            (
                "proxy_on_vm_start",
                Phase::VmStart,
                calls.vm_start.as_ref(),
                spec.vm_configuration.len(),
            ),
            (
                "proxy_on_configure",
                Phase::Configure,
                calls.configure.as_ref(),
                spec.configuration.len(),
            ),
        ] {
            let Some(f) = f else { continue };
            let ok = vm
                .call(name, phase, ROOT_CONTEXT, |s| {
                    f.call(s, (ROOT_CONTEXT as i32, size as i32))
                })
                .map_err(|e| StartError::Failed(e.to_string()))?;
            if ok == 0 {
                let log = vm.store.data_mut().start_log.take().unwrap_or_default();
                return Err(StartError::Refused(log));
            }
        }
        vm.store.data_mut().start_log = None;
        Ok(vm)
    }

    /// Calls into the guest under the time limit.
    fn call<T>(
        &mut self,
        callback: &'static str,
        phase: Phase,
        context: u32,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, FilterError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let state = self.store.data_mut();
        state.phase = phase;
        state.context = context;
        let result = f(&mut self.store);
        self.store.data_mut().phase = Phase::Lifecycle;
        result.map_err(|e| {
            let state = self.store.data();
            let (filter, limits) = (state.name().to_owned(), state.limits);
            if let Some(hit) = e.downcast_ref::<MemoryLimitHit>() {
                FilterError::MemoryLimit {
                    filter,
                    callback,
                    limit: hit.limit,
                }
            } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                FilterError::Timeout {
                    filter,
                    callback,
                    limit: limits.call_timeout,
                }
            } else {
                FilterError::Trap {
                    filter,
                    callback,
                    message: describe(&e, limits),
                }
            }
        })
    }
}

/// A status code as three ASCII digits.
fn itoa3(code: u16) -> [u8; 3] {
    let code = code.min(999);
    [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

/// A wasmtime error in one line.
fn describe(e: &wasmtime::Error, limits: Limits) -> String {
    if let Some(hit) = e.downcast_ref::<MemoryLimitHit>() {
        return hit.to_string();
    }
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return format!("ran past its time limit of {:?}", limits.call_timeout);
    }
    let mut message = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => e.to_string(),
    };
    if let Some(trace) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
        let frames: Vec<String> = trace
            .frames()
            .iter()
            .take(4)
            .map(|f| match f.func_name() {
                Some(name) => name.to_owned(),
                None => format!("function {}", f.func_index()),
            })
            .collect();
        if !frames.is_empty() {
            message.push_str(&format!(" (in {})", frames.join(" < ")));
        }
    }
    message.replace('\n', " ")
}

/// A request/response pair in progress, from [`FilterInstance::new_stream`]
/// until [`FilterInstance::end_stream`] (which the embedder must call, or
/// the guest keeps the stream's state). Only for the instance that made it:
/// another one panics.
#[derive(Debug)]
pub struct Stream {
    instance: u64,
    context: u32,
    generation: u64,
}

/// Tells instances apart, so a stream is only ever used with its own.
static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The filter on one thread. Not `Sync`; call from the thread that owns
/// it. After a crash it replaces its instance before the next stream.
pub struct FilterInstance {
    id: u64,
    filter: WasmFilter,
    vm: Option<Vm>,
    generation: u64,
    next_context: u32,
    crashes: u64,
    failed_start: Option<(Instant, String)>,
}

impl FilterInstance {
    pub fn filter(&self) -> &WasmFilter {
        &self.filter
    }

    /// Crashes (traps, timeouts, memory limit) since this instance was made.
    pub fn crashes(&self) -> u64 {
        self.crashes
    }

    /// Starts a stream (`proxy_on_context_create`), starting the instance
    /// first if needed.
    pub fn new_stream(&mut self) -> Result<Stream, FilterError> {
        let name = || self.filter.name().to_owned();
        if self.vm.is_none() {
            if let Some((at, reason)) = &self.failed_start {
                if at.elapsed() < RESTART_BACKOFF {
                    return Err(FilterError::Start {
                        filter: name(),
                        reason: reason.clone(),
                    });
                }
            }
            match Vm::start(&self.filter, false) {
                Ok(vm) => {
                    self.vm = Some(vm);
                    self.failed_start = None;
                    self.generation += 1;
                }
                Err(e) => {
                    let reason = match e {
                        StartError::Refused(_) => "refused its configuration".to_owned(),
                        StartError::Failed(reason) => reason,
                    };
                    self.failed_start = Some((Instant::now(), reason.clone()));
                    return Err(FilterError::Start {
                        filter: name(),
                        reason,
                    });
                }
            }
        }
        let context = self.next_context();
        let vm = self.vm.as_mut().expect("started above");
        let calls = vm.calls.clone();
        if let Some(f) = &calls.context_create {
            let result = vm.call("proxy_on_context_create", Phase::Lifecycle, context, |s| {
                f.call(s, (context as i32, ROOT_CONTEXT as i32))
            });
            self.check(result)?;
        }
        self.vm
            .as_mut()
            .expect("still running")
            .store
            .data_mut()
            .live_streams
            .push(context);
        Ok(Stream {
            instance: self.id,
            context,
            generation: self.generation,
        })
    }

    fn next_context(&mut self) -> u32 {
        loop {
            self.next_context = self.next_context.wrapping_add(1);
            let c = self.next_context;
            let live = self
                .vm
                .as_ref()
                .is_some_and(|vm| vm.store.data().live_streams.contains(&c));
            if c > ROOT_CONTEXT && !live {
                return c;
            }
        }
    }

    /// On a crash, drops the instance (a new one starts with the next
    /// stream).
    fn check<T>(&mut self, result: Result<T, FilterError>) -> Result<T, FilterError> {
        if let Err(e) = &result {
            if !matches!(e, FilterError::Paused { .. }) {
                tracing::warn!(filter = self.filter.name(), error = %e, "wasm filter crashed; its instance will be replaced");
                self.crashes += 1;
                self.vm = None;
            }
        }
        result
    }

    fn vm_for(&mut self, stream: &Stream) -> Result<&mut Vm, FilterError> {
        assert_eq!(
            stream.instance, self.id,
            "a stream used with another instance"
        );
        match &mut self.vm {
            Some(vm) if stream.generation == self.generation => Ok(vm),
            _ => Err(FilterError::StreamLost {
                filter: self.filter.name().to_owned(),
            }),
        }
    }

    /// `proxy_on_request_headers`: the filter reads and edits `headers`
    /// (edits are applied when it returns, not if it crashes).
    pub fn on_request_headers(
        &mut self,
        stream: &Stream,
        headers: &mut impl Headers,
        info: &StreamInfo<'_>,
        end_of_stream: bool,
    ) -> Result<Outcome, FilterError> {
        self.run(
            stream,
            Phase::RequestHeaders,
            headers,
            info,
            Some(end_of_stream),
        )
    }

    /// `proxy_on_response_headers`.
    pub fn on_response_headers(
        &mut self,
        stream: &Stream,
        headers: &mut impl Headers,
        info: &StreamInfo<'_>,
        end_of_stream: bool,
    ) -> Result<Outcome, FilterError> {
        self.run(
            stream,
            Phase::ResponseHeaders,
            headers,
            info,
            Some(end_of_stream),
        )
    }

    /// `proxy_on_request_trailers`.
    pub fn on_request_trailers(
        &mut self,
        stream: &Stream,
        trailers: &mut impl Headers,
        info: &StreamInfo<'_>,
    ) -> Result<Outcome, FilterError> {
        self.run(stream, Phase::RequestTrailers, trailers, info, None)
    }

    /// `proxy_on_response_trailers`.
    pub fn on_response_trailers(
        &mut self,
        stream: &Stream,
        trailers: &mut impl Headers,
        info: &StreamInfo<'_>,
    ) -> Result<Outcome, FilterError> {
        self.run(stream, Phase::ResponseTrailers, trailers, info, None)
    }

    fn run(
        &mut self,
        stream: &Stream,
        phase: Phase,
        headers: &mut impl Headers,
        info: &StreamInfo<'_>,
        end_of_stream: Option<bool>,
    ) -> Result<Outcome, FilterError> {
        let vm = self.vm_for(stream)?;
        let index = phase.map().expect("an HTTP phase");
        let state = vm.store.data_mut();
        let status = info.response_code.map(itoa3);
        let pseudo: [(&str, &[u8]); 4] = match phase {
            Phase::RequestHeaders => [
                (":method", info.method.as_bytes()),
                (":scheme", info.scheme.as_bytes()),
                (":authority", info.authority.as_bytes()),
                (":path", info.path.as_bytes()),
            ],
            Phase::ResponseHeaders => [
                (":status", status.as_ref().map_or(&b""[..], |s| &s[..])),
                ("", b""),
                ("", b""),
                ("", b""),
            ],
            _ => [("", b""); 4],
        };
        state.maps[index].load(&pseudo, headers);
        state.props.load(info);
        state.local_reply = None;
        state.reset = false;
        state.resumed = false;
        let fields = state.maps[index].len() as i32;
        let context = stream.context as i32;
        let calls = vm.calls.clone();
        let (name, result) = match (phase, end_of_stream) {
            (Phase::RequestHeaders, Some(eos)) => (
                "proxy_on_request_headers",
                calls.request_headers.as_ref().map(|f| {
                    vm.call("proxy_on_request_headers", phase, stream.context, |s| {
                        f.call(s, (context, fields, eos as i32))
                    })
                }),
            ),
            (Phase::ResponseHeaders, Some(eos)) => (
                "proxy_on_response_headers",
                calls.response_headers.as_ref().map(|f| {
                    vm.call("proxy_on_response_headers", phase, stream.context, |s| {
                        f.call(s, (context, fields, eos as i32))
                    })
                }),
            ),
            (Phase::RequestTrailers, _) => (
                "proxy_on_request_trailers",
                calls.request_trailers.as_ref().map(|f| {
                    vm.call("proxy_on_request_trailers", phase, stream.context, |s| {
                        f.call(s, (context, fields))
                    })
                }),
            ),
            (_, _) => (
                "proxy_on_response_trailers",
                calls.response_trailers.as_ref().map(|f| {
                    vm.call("proxy_on_response_trailers", phase, stream.context, |s| {
                        f.call(s, (context, fields))
                    })
                }),
            ),
        };
        let action = match result {
            None => ACTION_CONTINUE,
            Some(r) => self.check(r)?,
        };
        let vm = self.vm.as_mut().expect("no crash");
        let state = vm.store.data_mut();
        let map = &mut state.maps[index];
        if let Some(reply) = state.local_reply.take() {
            map.clear();
            return Ok(Outcome::Respond(reply));
        }
        if state.reset {
            map.clear();
            return Ok(Outcome::Reset);
        }
        if action == ACTION_PAUSE && !state.resumed {
            map.clear();
            return Err(FilterError::Paused {
                filter: self.filter.name().to_owned(),
                callback: name,
            });
        }
        if action != ACTION_CONTINUE && action != ACTION_PAUSE {
            map.clear();
            return self.check(Err(FilterError::Trap {
                filter: self.filter.name().to_owned(),
                callback: name,
                message: format!("returned {action}, not an action"),
            }));
        }
        if map.changed() {
            map.replay(headers);
        }
        map.clear();
        Ok(Outcome::Continue)
    }

    /// Ends a stream: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    /// A crash here is logged and replaces the instance.
    pub fn end_stream(&mut self, stream: Stream) {
        let Ok(vm) = self.vm_for(&stream) else { return };
        let context = stream.context;
        let c = context as i32;
        let calls = vm.calls.clone();
        let result = (|| {
            if let Some(f) = &calls.done {
                // A filter that answers "not done" is finalized anyway: this
                // host does not keep contexts past their stream.
                vm.call("proxy_on_done", Phase::Lifecycle, context, |s| f.call(s, c))?;
            }
            if let Some(f) = &calls.log {
                vm.call("proxy_on_log", Phase::Lifecycle, context, |s| f.call(s, c))?;
            }
            if let Some(f) = &calls.delete {
                vm.call("proxy_on_delete", Phase::Lifecycle, context, |s| {
                    f.call(s, c)
                })?;
            }
            Ok(())
        })();
        let state = vm.store.data_mut();
        state.live_streams.retain(|&s| s != context);
        state.set_props.retain(|(s, _, _)| *s != context);
        let _ = self.check(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_shared_and_instances_move() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<WasmRuntime>();
        send_sync::<WasmFilter>();
        send::<FilterInstance>();
    }
}
