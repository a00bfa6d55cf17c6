//! The plugin host: every payload format and custom auth method is a
//! WebAssembly component run here, sandboxed.
//!
//! One wasmtime `Engine` compiles each component once per version. A call
//! runs in a `Store` with a memory cap (`StoreLimits`) and a CPU deadline:
//! one thread ticks the engine's epoch, and at each tick a call in progress
//! checks the CPU time it has used so far (its thread's CPU clock, only while
//! it runs: [`CallMeter`]), so a gateway under heavy load does not stop
//! honest calls that merely waited. The WASI context is empty: no preopened
//! directories, no environment, no sockets. Live instances are kept in a
//! small pool per plugin and reused, since a fresh instance costs tens of
//! microseconds; an instance that trapped is dropped, never reused.
//!
//! Async code (delivery) calls plugins on its own task, without a hop to
//! another thread ([`PluginHost::build_payload_async`], [`PluginHost::sign_async`]):
//! those calls run on instances made through async WASI bindings, and a call
//! still running at an epoch tick yields to the runtime, so a plugin that
//! loops holds a runtime worker for one tick at a time until its CPU time
//! runs out. Sync callers (the CLI, the benchmark, loading) use instances of
//! their own, made through the sync bindings.
//!
//! The registry maps a plugin name to its current version behind an `Arc`:
//! swapping in a new version never disturbs calls already running on the old
//! one. Built-ins are embedded in the binary; a `NAME.wasm` in `plugin_dir`
//! overrides the built-in `NAME` and, when removed, hands it back (see
//! `watch`). This module never sees the store.
//!
//! The host's own threads (the epoch ticker and the `plugin_dir` watcher) end
//! at `PluginHost::shutdown`, when the gateway stops.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::metrics::{CallEnd, PluginCalls};
use crate::repeater::PayloadKind;

mod limits;
pub use limits::PluginLimits;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

/// Host-side bindings of the WIT worlds in `wit/`.
pub mod bindings {
    pub mod format {
        wasmtime::component::bindgen!({ world: "payload-format", path: "../wit" });
    }
    pub mod auth {
        wasmtime::component::bindgen!({ world: "outbound-auth", path: "../wit" });
    }
    /// `format` with async exports, for calls from async code; the types and
    /// the host's `event-context` are `format`'s.
    pub mod format_async {
        wasmtime::component::bindgen!({
            world: "payload-format",
            path: "../wit",
            exports: { default: async },
            with: {
                "repeatd:plugin/types": crate::plugins::bindings::format::repeatd::plugin::types,
                "repeatd:plugin/event-context": crate::plugins::bindings::format::repeatd::plugin::event_context,
            },
        });
    }
    /// `auth` with async exports, for calls from async code.
    pub mod auth_async {
        wasmtime::component::bindgen!({
            world: "outbound-auth",
            path: "../wit",
            exports: { default: async },
            with: {
                "repeatd:plugin/types": crate::plugins::bindings::auth::repeatd::plugin::types,
            },
        });
    }
}

use bindings::auth::repeatd::plugin::types::{Outgoing, Pair as AuthPair};
pub use bindings::format::repeatd::plugin::types::{
    AppChange as WitAppChange, AppEvent, Attachment as WitAttachment, Case as WitCase,
    CaseIndex as WitCaseIndex, Event, Form as WitForm, Pair, Payload,
    PayloadKind as WitPayloadKind, Request as WitRequest,
};

/// How often the CPU-deadline clock ticks.
const EPOCH_TICK: Duration = Duration::from_millis(2);
/// Live instances kept per plugin.
const POOL_SIZE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("no plugin named \"{0}\" is loaded")]
    Missing(String),
    #[error("plugin \"{name}\" is {actual}, not {wanted}")]
    WrongKind {
        name: String,
        actual: &'static str,
        wanted: &'static str,
    },
    /// The plugin returned an error: its own words.
    #[error("plugin \"{name}\" failed: {message}")]
    Failed { name: String, message: String },
    /// A trap: a bug in the plugin, or the host's policy (time, memory).
    #[error("plugin \"{name}\" was stopped: {reason}")]
    Trapped { name: String, reason: String },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// What a plugin is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginKind {
    Format {
        description: String,
        kinds: Vec<PayloadKind>,
    },
    Auth {
        description: String,
    },
}

impl PluginKind {
    pub fn label(&self) -> &'static str {
        match self {
            PluginKind::Format { .. } => "payload format",
            PluginKind::Auth { .. } => "auth",
        }
    }
}

/// Where a plugin's current version came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    Builtin,
    File(PathBuf),
}

/// The state of one call's store.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: CallLimits,
    /// What `event-context.form-object` answers during a `build` call.
    form_object: Option<String>,
    /// The CPU time the current call has run.
    meter: Arc<CallMeter>,
    /// Whether calls on this store are async and may yield at a tick.
    calling: Calling,
}

/// How a store's calls are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Calling {
    /// On the caller's thread, to the end.
    Sync,
    /// From async code: polled by the runtime, yielding at each epoch tick.
    Async,
}

/// The CPU time one call has used: the calling thread's CPU clock, counted
/// only while the call runs (an async call is counted per poll, on whichever
/// thread polls it), so neither the time it waited for the runtime after a
/// yield nor the time other threads had the core counts against its limit.
#[derive(Debug, Default)]
struct CallMeter {
    /// CPU nanoseconds run before the current poll.
    ran_nanos: std::sync::atomic::AtomicU64,
    /// The thread's CPU clock when the current poll began (`u64::MAX`
    /// between polls).
    resumed_at_nanos: std::sync::atomic::AtomicU64,
}

impl CallMeter {
    /// The calling thread's CPU time, in nanoseconds.
    fn thread_cpu_nanos() -> u64 {
        // The standard library has no thread CPU clock; rustix (already in
        // the tree through wasmtime) reads it without `unsafe`.
        let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        (now.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(now.tv_nsec as u64)
    }

    /// A new call begins (and runs from now, for a sync call).
    fn start(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.ran_nanos.store(0, Relaxed);
        self.resumed_at_nanos
            .store(Self::thread_cpu_nanos(), Relaxed);
    }

    fn resume(&self) {
        self.resumed_at_nanos.store(
            Self::thread_cpu_nanos(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn pause(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let ran = self.ran_so_far();
        self.ran_nanos.store(ran.as_nanos() as u64, Relaxed);
        // Not running: nothing more counts until the next poll.
        self.resumed_at_nanos.store(u64::MAX, Relaxed);
    }

    /// What the call has run so far, including the current poll.
    fn ran_so_far(&self) -> Duration {
        use std::sync::atomic::Ordering::Relaxed;
        let this_poll =
            Self::thread_cpu_nanos().saturating_sub(self.resumed_at_nanos.load(Relaxed));
        Duration::from_nanos(self.ran_nanos.load(Relaxed).saturating_add(this_poll))
    }
}

/// Runs `call` counting, in `meter`, only the time spent inside its polls.
async fn metered<F: std::future::Future>(meter: &CallMeter, call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|context| {
        meter.resume();
        let polled = call.as_mut().poll(context);
        meter.pause();
        polled
    })
    .await
}

impl bindings::format::repeatd::plugin::event_context::Host for CallState {
    fn form_object(&mut self) -> Option<String> {
        self.form_object.clone()
    }
}

/// The limits of one store: `StoreLimits`, except that a plugin asking for
/// more memory than the cap is stopped with a typed trap (instead of seeing
/// `memory.grow` fail, which Rust plugins turn into an abort), so a memory
/// overrun is told apart from other traps without reading error text.
struct CallLimits {
    limits: StoreLimits,
    memory_cap: u64,
}

/// The trap raised when a plugin grows its memory past `[plugins] memory`.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: asked for {desired} bytes, the limit is {cap}")]
struct MemoryLimitExceeded {
    desired: usize,
    cap: u64,
}

impl ResourceLimiter for CallLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if self.limits.memory_growing(current, desired, maximum)? {
            return Ok(true);
        }
        if desired as u64 > self.memory_cap {
            return Err(MemoryLimitExceeded {
                desired,
                cap: self.memory_cap,
            }
            .into());
        }
        Ok(false)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Live instances of one plugin, ready for calls.
type Pool<I> = Mutex<Vec<(Store<CallState>, I)>>;

/// A plugin's instances: for sync calls and, apart, for async ones.
enum Instances {
    Format {
        pre: bindings::format::PayloadFormatPre<CallState>,
        pool: Pool<bindings::format::PayloadFormat>,
        async_pre: bindings::format_async::PayloadFormatPre<CallState>,
        async_pool: Pool<bindings::format_async::PayloadFormat>,
    },
    Auth {
        pre: bindings::auth::OutboundAuthPre<CallState>,
        pool: Pool<bindings::auth::OutboundAuth>,
        async_pre: bindings::auth_async::OutboundAuthPre<CallState>,
        async_pool: Pool<bindings::auth_async::OutboundAuth>,
    },
}

/// One loaded version of a plugin.
pub struct LoadedPlugin {
    pub name: String,
    pub kind: PluginKind,
    pub source: PluginSource,
    /// SHA-256 of the component's bytes, hex.
    pub hash: String,
    /// Unix micros.
    pub loaded_at: i64,
    /// It imports `event-context` (WIT 1.1): its events need the form object.
    wants_form_object: bool,
    instances: Instances,
}

impl LoadedPlugin {
    /// Whether a form event for this plugin should come with the Data API's
    /// form object (only plugins that ask for it get one: making it parses
    /// the XML).
    pub fn wants_form_object(&self) -> bool {
        self.wants_form_object
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("hash", &self.hash)
            .finish()
    }
}

/// What `GET /api/v1/plugins` shows of one plugin name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub kind: Option<String>,
    pub description: Option<String>,
    pub kinds: Vec<String>,
    pub source: Option<String>,
    pub hash: Option<String>,
    pub loaded_at: Option<String>,
    pub last_error: Option<String>,
}

/// The plugin host: engine, linker, registry.
pub struct PluginHost {
    engine: Engine,
    /// WASI's sync bindings, for sync calls.
    linker: Linker<CallState>,
    /// WASI's async bindings, for calls from async code (the sync ones block
    /// on a runtime of their own, which must not happen on a runtime worker).
    async_linker: Linker<CallState>,
    limits: PluginLimits,
    registry: RwLock<HashMap<String, Arc<LoadedPlugin>>>,
    builtins: HashMap<String, Arc<LoadedPlugin>>,
    /// The last load failure per plugin name (cleared by a good load).
    errors: RwLock<HashMap<String, String>>,
    /// Called after the registry changes.
    listeners: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    /// Where compiled components are kept between runs (see `compile`).
    cache_dir: Option<PathBuf>,
    /// Stamps `loaded_at`.
    clock: crate::clock::Clock,
    background: Arc<Background>,
    /// Call durations, traps, timeouts and reloads, for `/metrics`.
    call_metrics: PluginCalls,
}

/// The host's own threads, the epoch ticker and the `plugin_dir` watcher,
/// and the signal that ends them.
#[derive(Debug, Default)]
struct Background {
    stopping: Mutex<bool>,
    /// `stopping`, for the deadline check of calls still running.
    stopped_flag: std::sync::atomic::AtomicBool,
    stopped: Condvar,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// How many of them are still running.
    running: std::sync::atomic::AtomicUsize,
    /// Wake the watcher out of its wait for file events.
    watch_wakers: Mutex<Vec<std::sync::mpsc::Sender<()>>>,
}

/// Counts a background thread as running until its work returns.
struct Running(Arc<Background>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Background {
    /// Waits up to `timeout`; `true` (at once) when the threads are to end.
    fn wait(&self, timeout: Duration) -> bool {
        let stopping = self.stopping.lock().expect("stop lock");
        let (stopping, _) = self
            .stopped
            .wait_timeout_while(stopping, timeout, |stopping| !*stopping)
            .expect("stop lock");
        *stopping
    }

    fn spawn(
        self: &Arc<Self>,
        name: &str,
        run: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let running = Running(self.clone());
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _running = running;
                run();
            })?;
        self.threads.lock().expect("threads lock").push(handle);
        Ok(())
    }

    /// Tells every thread to end; returns them, to be joined.
    fn stop(&self) -> Vec<std::thread::JoinHandle<()>> {
        *self.stopping.lock().expect("stop lock") = true;
        self.stopped_flag
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.stopped.notify_all();
        for waker in self.watch_wakers.lock().expect("wakers lock").drain(..) {
            let _ = waker.send(());
        }
        std::mem::take(&mut *self.threads.lock().expect("threads lock"))
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        // Not joined: the last holder of the host may be the watcher itself.
        self.background.stop();
    }
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("limits", &self.limits)
            .finish()
    }
}

fn engine_config(limits: &PluginLimits) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Reserve what the cap allows and no more: cheap instances, and a memory
    // never moves because the cap is reached before the reservation.
    config.memory_reservation(limits.memory.max(1 << 20));
    config.memory_guard_size(64 << 10);
    config.memory_reservation_for_growth(0);
    config
}

fn hash_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn describe_trap(error: &wasmtime::Error, limits: &PluginLimits) -> String {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => format!(
                "ran longer than its {} ms limit",
                limits.timeout.as_millis()
            ),
            wasmtime::Trap::UnreachableCodeReached => {
                "trapped: unreachable code reached (a panic or abort in the plugin)".into()
            }
            other => format!("trapped: {other}"),
        };
    }
    if let Some(exceeded) = error.downcast_ref::<MemoryLimitExceeded>() {
        return format!(
            "exceeded its memory limit of {} (asked for {})",
            byte_size(exceeded.cap),
            byte_size(exceeded.desired as u64)
        );
    }
    format!("{error:#}")
}

/// `67108864` → `64 MiB`; sizes that are not whole mebibytes stay in bytes.
fn byte_size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

impl PluginHost {
    /// Builds the engine and loads the built-in plugins.
    pub fn new(limits: PluginLimits) -> anyhow::Result<Arc<PluginHost>> {
        Self::build(limits, true, None, crate::clock::Clock::system())
    }

    /// Like `new`, keeping compiled components in `cache_dir` so that a
    /// restart loads them in milliseconds instead of compiling them again,
    /// and stamping load times by `clock`.
    pub fn with_cache(
        limits: PluginLimits,
        cache_dir: PathBuf,
        clock: crate::clock::Clock,
    ) -> anyhow::Result<Arc<PluginHost>> {
        Self::build(limits, true, Some(cache_dir), clock)
    }

    /// An engine with no plugin loaded (for `repeatd plugin check|run`).
    pub fn without_builtins(limits: PluginLimits) -> anyhow::Result<Arc<PluginHost>> {
        Self::build(limits, false, None, crate::clock::Clock::system())
    }

    fn build(
        limits: PluginLimits,
        with_builtins: bool,
        cache_dir: Option<PathBuf>,
        clock: crate::clock::Clock,
    ) -> anyhow::Result<Arc<PluginHost>> {
        let engine = Engine::new(&engine_config(&limits))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let mut async_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut async_linker)?;
        for linker in [&mut linker, &mut async_linker] {
            bindings::format::repeatd::plugin::event_context::add_to_linker::<
                CallState,
                wasmtime::component::HasSelf<CallState>,
            >(linker, |state| state)?;
        }
        let mut host = PluginHost {
            engine,
            linker,
            async_linker,
            limits,
            registry: RwLock::new(HashMap::new()),
            builtins: HashMap::new(),
            errors: RwLock::new(HashMap::new()),
            listeners: Mutex::new(Vec::new()),
            cache_dir,
            clock,
            background: Arc::default(),
            call_metrics: PluginCalls::default(),
        };
        // Compile the built-ins side by side: each takes a while.
        let compiled: Vec<anyhow::Result<LoadedPlugin>> = std::thread::scope(|scope| {
            let host = &host;
            let handles: Vec<_> = builtin::BUILTIN_PLUGINS
                .iter()
                .filter(|_| with_builtins)
                .map(|(name, bytes)| {
                    scope.spawn(move || host.load(name, bytes, PluginSource::Builtin))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("plugin compile thread"))
                .collect()
        });
        for loaded in compiled {
            let loaded = Arc::new(loaded?);
            host.builtins.insert(loaded.name.clone(), loaded.clone());
            host.registry
                .get_mut()
                .expect("registry lock")
                .insert(loaded.name.clone(), loaded);
        }
        let engine = host.engine.clone();
        let background = host.background.clone();
        host.background.spawn("plugin-epoch", move || {
            while !background.wait(EPOCH_TICK) {
                engine.increment_epoch();
            }
        })?;
        Ok(Arc::new(host))
    }

    /// How many of the host's own threads (epoch ticker, watcher) run.
    pub fn running_threads(&self) -> usize {
        self.background
            .running
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Ends the epoch thread and the `plugin_dir` watcher and waits for them.
    /// Calls still running are stopped at once (a last tick finds the host
    /// stopping): with the ticker gone, nothing else would stop one that
    /// loops. Must not be called from a listener of `on_change` (the watcher
    /// runs those).
    pub fn shutdown(&self) {
        for thread in self.background.stop() {
            let _ = thread.join();
        }
        self.engine.increment_epoch();
    }

    /// Compiles a component, or reads what an earlier run compiled from the
    /// same bytes with the same engine settings. The cache is keyed by the
    /// component's SHA-256 and wasmtime's own compatibility hash, written
    /// atomically, and only ever read from this gateway's data directory; an
    /// entry that does not load is compiled again and replaced.
    fn compile(&self, bytes: &[u8], hash: &str) -> wasmtime::Result<Component> {
        let Some(cache_dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes);
        };
        let engine_key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.engine
                .precompile_compatibility_hash()
                .hash(&mut hasher);
            hasher.finish()
        };
        let path = cache_dir.join(format!("{hash}-{engine_key:016x}.cwasm"));
        if path.exists() {
            // SAFETY: wasmtime requires that the file was produced by
            // `Component::serialize` of a compatible engine and not altered
            // since. This gateway is its only writer (below, by atomic
            // rename), the name pins the engine's compatibility hash, and the
            // data directory is as trusted as the secret key beside it.
            #[allow(unsafe_code)]
            let cached = unsafe { Component::deserialize_file(&self.engine, &path) };
            match cached {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "compiled plugin cache entry unusable; compiling again")
                }
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        let written = std::fs::create_dir_all(cache_dir).and_then(|()| {
            let serialized = component.serialize().map_err(std::io::Error::other)?;
            let partial = path.with_extension(format!("partial-{}", std::process::id()));
            std::fs::write(&partial, serialized)?;
            std::fs::rename(&partial, &path)
        });
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "could not cache a compiled plugin");
        }
        Ok(component)
    }

    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// Compiles and validates a component as a plugin named `name`.
    pub fn load(
        &self,
        name: &str,
        bytes: &[u8],
        source: PluginSource,
    ) -> anyhow::Result<LoadedPlugin> {
        let hash = hash_hex(bytes);
        let component = self.compile(bytes, &hash).map_err(|error| {
            anyhow::anyhow!(
                "not a WebAssembly component: {}",
                first_line(&format!("{error:#}"))
            )
        })?;
        let unavailable = |error: wasmtime::Error| {
            anyhow::anyhow!(
                "imports what the sandbox does not offer (only WASI's defaults are available): {}",
                first_line(&format!("{error:#}"))
            )
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(unavailable)?;
        let async_instance_pre = self
            .async_linker
            .instantiate_pre(&component)
            .map_err(unavailable)?;
        let loaded_at = self.clock.now_micros();
        let wants_form_object = component
            .component_type()
            .imports(&self.engine)
            .any(|(import_name, _)| import_name.starts_with("repeatd:plugin/event-context@"));
        let loaded = |kind, instances| LoadedPlugin {
            name: name.to_owned(),
            kind,
            source,
            hash,
            loaded_at,
            wants_form_object,
            instances,
        };
        if let Ok(pre) = bindings::format::PayloadFormatPre::new(instance_pre.clone()) {
            let async_pre =
                bindings::format_async::PayloadFormatPre::new(async_instance_pre.clone())?;
            let (mut store, instance) = self.first_instance(|store| pre.instantiate(store))?;
            let info = instance
                .repeatd_plugin_format()
                .call_info(&mut store)
                .map_err(self.call_failed("info"))?;
            let kind = PluginKind::Format {
                description: info.description,
                kinds: info.kinds.iter().map(|kind| from_wit_kind(*kind)).collect(),
            };
            let pool = Mutex::new(vec![(store, instance)]);
            return Ok(loaded(
                kind,
                Instances::Format {
                    pre,
                    pool,
                    async_pre,
                    async_pool: Mutex::new(Vec::new()),
                },
            ));
        }
        if let Ok(pre) = bindings::auth::OutboundAuthPre::new(instance_pre) {
            let async_pre = bindings::auth_async::OutboundAuthPre::new(async_instance_pre)?;
            let (mut store, instance) = self.first_instance(|store| pre.instantiate(store))?;
            let description = instance
                .repeatd_plugin_auth()
                .call_describe(&mut store)
                .map_err(self.call_failed("describe"))?;
            let pool = Mutex::new(vec![(store, instance)]);
            return Ok(loaded(
                PluginKind::Auth { description },
                Instances::Auth {
                    pre,
                    pool,
                    async_pre,
                    async_pool: Mutex::new(Vec::new()),
                },
            ));
        }
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(export_name, _)| export_name.to_owned())
            .collect();
        const WANTED: &str = "repeatd:plugin/format@1.x (world payload-format) or repeatd:plugin/auth@1.x (world outbound-auth)";
        match exports
            .iter()
            .find(|export_name| export_name.starts_with("repeatd:plugin/"))
        {
            Some(export_name) => anyhow::bail!(
                "exports {export_name}, which this repeatd cannot use: it loads {WANTED} (a newer major version of the plugin interfaces needs a newer repeatd)"
            ),
            None if exports.is_empty() => {
                anyhow::bail!("exports nothing; a plugin exports {WANTED}")
            }
            None => anyhow::bail!(
                "exports {}, not a repeatd plugin; a plugin exports {WANTED}",
                exports.join(", ")
            ),
        }
    }

    /// A fresh store holding a first instance, made by `instantiate`, with
    /// its deadline set.
    fn first_instance<T>(
        &self,
        instantiate: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> anyhow::Result<(Store<CallState>, T)> {
        let mut store = self.new_store(Calling::Sync);
        let instance = instantiate(&mut store).map_err(|error| {
            anyhow::anyhow!(
                "instantiating it failed: {}",
                describe_trap(&error, &self.limits)
            )
        })?;
        arm(&mut store);
        Ok((store, instance))
    }

    /// The error of a failed call of the plugin's `export`.
    fn call_failed(&self, export: &'static str) -> impl Fn(wasmtime::Error) -> anyhow::Error + '_ {
        move |error| anyhow::anyhow!("{export}() failed: {}", describe_trap(&error, &self.limits))
    }

    /// A store for calls made as `calling` says, with the CPU deadline armed
    /// (instantiation runs guest code too).
    fn new_store(&self, calling: Calling) -> Store<CallState> {
        let state = CallState {
            // Nothing inherited: no environment, arguments, directories,
            // sockets or standard streams.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: CallLimits {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory as usize)
                    .instances(16)
                    .tables(64)
                    .memories(4)
                    .build(),
                memory_cap: self.limits.memory,
            },
            form_object: None,
            meter: Arc::default(),
            calling,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // At every tick during a call: stop it once it has run its CPU time
        // (or the host is stopping), else let it go on (an async one after
        // yielding to the runtime).
        let timeout = self.limits.timeout;
        let background = self.background.clone();
        store.epoch_deadline_callback(move |context| {
            let state = context.data();
            if background
                .stopped_flag
                .load(std::sync::atomic::Ordering::SeqCst)
                || state.meter.ran_so_far() >= timeout
            {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            Ok(match state.calling {
                Calling::Sync => wasmtime::UpdateDeadline::Continue(1),
                Calling::Async => wasmtime::UpdateDeadline::Yield(1),
            })
        });
        arm(&mut store);
        store
    }

    /// The current version of a plugin.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.registry
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
    }

    pub fn is_loaded(&self, name: &str) -> bool {
        self.registry
            .read()
            .expect("registry lock")
            .contains_key(name)
    }

    /// Registers a callback run after every change of the registry.
    pub fn on_change(&self, listener: Box<dyn Fn() + Send + Sync>) {
        self.listeners
            .lock()
            .expect("listeners lock")
            .push(listener);
    }

    fn changed(&self) {
        for listener in self.listeners.lock().expect("listeners lock").iter() {
            listener();
        }
    }

    /// Makes `plugin` the current version of its name.
    pub fn install(&self, plugin: LoadedPlugin) {
        let name = plugin.name.clone();
        self.registry
            .write()
            .expect("registry lock")
            .insert(name.clone(), Arc::new(plugin));
        self.errors.write().expect("errors lock").remove(&name);
        self.changed();
    }

    /// Unloads the file version of `name`, handing back the built-in if any.
    pub fn remove(&self, name: &str) {
        {
            let mut registry = self.registry.write().expect("registry lock");
            match self.builtins.get(name) {
                Some(builtin) => {
                    registry.insert(name.to_owned(), builtin.clone());
                }
                None => {
                    registry.remove(name);
                }
            }
        }
        self.errors.write().expect("errors lock").remove(name);
        self.changed();
    }

    /// Records a failed load; the previous version keeps serving.
    pub fn record_error(&self, name: &str, error: String) {
        self.errors
            .write()
            .expect("errors lock")
            .insert(name.to_owned(), error);
    }

    /// Forgets the last load failure of `name`.
    pub fn clear_error(&self, name: &str) {
        self.errors.write().expect("errors lock").remove(name);
    }

    /// Loads `path` as plugin `name` and installs it, unless its content is
    /// what is already loaded. A failure is recorded and returned.
    pub fn load_file(&self, name: &str, path: &Path) -> Result<bool, String> {
        let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
        if let Some(current) = self.get(name)
            && current.source == PluginSource::File(path.to_owned())
            && current.hash == hash_hex(&bytes)
        {
            // Back to the version that is serving (say, a broken copy was
            // replaced by the good one again): nothing to load, and the
            // broken copy's error no longer applies.
            self.clear_error(name);
            return Ok(false);
        }
        match self.load(name, &bytes, PluginSource::File(path.to_owned())) {
            Ok(plugin) => {
                tracing::info!(plugin = name, path = %path.display(), kind = plugin.kind.label(), "plugin loaded");
                self.install(plugin);
                self.call_metrics.observe_reload(name);
                Ok(true)
            }
            Err(error) => {
                let message = format!("{}: {error:#}", path.display());
                tracing::error!(plugin = name, error = %message, "plugin failed to load; the previous version keeps serving");
                self.record_error(name, message.clone());
                Err(message)
            }
        }
    }

    /// What the calls and loads of every plugin came to, for `/metrics`.
    pub fn call_metrics(&self) -> &PluginCalls {
        &self.call_metrics
    }

    /// Every plugin name known, loaded or failed.
    pub fn status(&self) -> Vec<PluginStatus> {
        let registry = self.registry.read().expect("registry lock");
        let errors = self.errors.read().expect("errors lock");
        let mut names: Vec<&String> = registry.keys().chain(errors.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let loaded = registry.get(name);
                let (description, kinds) = match loaded.map(|p| &p.kind) {
                    Some(PluginKind::Format { description, kinds }) => (
                        Some(description.clone()),
                        kinds.iter().map(|k| k.to_string()).collect(),
                    ),
                    Some(PluginKind::Auth { description }) => {
                        (Some(description.clone()), Vec::new())
                    }
                    None => (None, Vec::new()),
                };
                PluginStatus {
                    name: name.clone(),
                    kind: loaded.map(|p| p.kind.label().to_owned()),
                    description,
                    kinds,
                    source: loaded.map(|p| match &p.source {
                        PluginSource::Builtin => "built-in".to_owned(),
                        PluginSource::File(path) => path.display().to_string(),
                    }),
                    hash: loaded.map(|p| p.hash.clone()),
                    loaded_at: loaded.map(|p| crate::time::format_utc(p.loaded_at)),
                    last_error: errors.get(name).cloned(),
                }
            })
            .collect()
    }

    /// Runs a payload format on one event, on a live instance from the
    /// plugin's pool when one is free. `form_object` is what the plugin's
    /// `event-context.form-object` answers (the Data API's form object of a
    /// form event, as JSON; see [`LoadedPlugin::wants_form_object`]).
    pub fn build_payload(
        &self,
        plugin: &LoadedPlugin,
        kind: PayloadKind,
        event: &Event,
        form_object: Option<String>,
        settings: &[Pair],
    ) -> Result<Payload, PluginError> {
        self.build_payload_on(plugin, kind, event, form_object, settings, Instance::Pooled)
    }

    /// `build_payload` for async callers: the call runs on the caller's
    /// task, on a live instance of the plugin's async pool when one is free,
    /// and yields to the runtime at every epoch tick it is still running at,
    /// so it never holds a runtime worker for longer than a tick; the CPU
    /// deadline counts only the time it ran.
    pub async fn build_payload_async(
        &self,
        plugin: &LoadedPlugin,
        kind: PayloadKind,
        event: &Event,
        form_object: Option<String>,
        settings: &[Pair],
    ) -> Result<Payload, PluginError> {
        let Instances::Format {
            async_pre,
            async_pool,
            ..
        } = &plugin.instances
        else {
            return Err(wrong_kind(plugin, "a payload format"));
        };
        let started = self.clock.instant();
        let name = plugin.name.as_str();
        let (mut store, instance) = match take_live(async_pool, true) {
            Some(live) => live,
            None => {
                let mut store = self.new_store(Calling::Async);
                let meter = store.data().meter.clone();
                let instance = metered(&meter, async_pre.instantiate_async(&mut store))
                    .await
                    .map_err(|error| self.trapped(name, started.elapsed(), error))?;
                (store, instance)
            }
        };
        arm(&mut store);
        store.data_mut().form_object = form_object;
        let meter = store.data().meter.clone();
        let answer = metered(
            &meter,
            instance.repeatd_plugin_format().call_build(
                &mut store,
                to_wit_kind(kind),
                event,
                settings,
            ),
        )
        .await;
        // A pooled instance must not see this form's object again.
        store.data_mut().form_object = None;
        let answer = answer.map_err(|error| self.trapped(name, started.elapsed(), error))?;
        self.answered(
            name,
            started.elapsed(),
            async_pool,
            true,
            store,
            instance,
            answer,
        )
    }

    /// `sign` for async callers, on the caller's task like `build_payload_async`.
    pub async fn sign_async(
        &self,
        plugin: &LoadedPlugin,
        request: &SignRequest,
        settings: &[(String, String)],
    ) -> Result<Vec<(String, String)>, PluginError> {
        let Instances::Auth {
            async_pre,
            async_pool,
            ..
        } = &plugin.instances
        else {
            return Err(wrong_kind(plugin, "an auth plugin"));
        };
        let (outgoing, settings) = sign_arguments(request, settings);
        let started = self.clock.instant();
        let name = plugin.name.as_str();
        let (mut store, instance) = match take_live(async_pool, true) {
            Some(live) => live,
            None => {
                let mut store = self.new_store(Calling::Async);
                let meter = store.data().meter.clone();
                let instance = metered(&meter, async_pre.instantiate_async(&mut store))
                    .await
                    .map_err(|error| self.trapped(name, started.elapsed(), error))?;
                (store, instance)
            }
        };
        arm(&mut store);
        let meter = store.data().meter.clone();
        let answer = metered(
            &meter,
            instance
                .repeatd_plugin_auth()
                .call_sign(&mut store, &outgoing, &settings),
        )
        .await
        .map_err(|error| self.trapped(name, started.elapsed(), error))?;
        let headers = self.answered(
            name,
            started.elapsed(),
            async_pool,
            true,
            store,
            instance,
            answer,
        )?;
        Ok(from_auth_pairs(headers))
    }

    /// `build_payload` on the instance `instance` says.
    pub fn build_payload_on(
        &self,
        plugin: &LoadedPlugin,
        kind: PayloadKind,
        event: &Event,
        form_object: Option<String>,
        settings: &[Pair],
        instance: Instance,
    ) -> Result<Payload, PluginError> {
        let Instances::Format { pre, pool, .. } = &plugin.instances else {
            return Err(wrong_kind(plugin, "a payload format"));
        };
        self.call_pooled(
            &plugin.name,
            pool,
            instance == Instance::Pooled,
            |store| pre.instantiate(store),
            |instance, store| {
                store.data_mut().form_object = form_object;
                let answer = instance.repeatd_plugin_format().call_build(
                    &mut *store,
                    to_wit_kind(kind),
                    event,
                    settings,
                );
                // A pooled instance must not see this form's object again.
                store.data_mut().form_object = None;
                answer
            },
        )
    }

    /// Runs `call` with the CPU deadline set, on a live instance of `pool`
    /// (when `use_pool`) or a fresh one made by `instantiate`. An instance
    /// that answered goes back to the pool (when `use_pool`, and not past
    /// `POOL_SIZE`); one that trapped is dropped, never reused.
    fn call_pooled<I, R>(
        &self,
        name: &str,
        pool: &Pool<I>,
        use_pool: bool,
        instantiate: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<I>,
        call: impl FnOnce(&I, &mut Store<CallState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, PluginError> {
        let started = self.clock.instant();
        let (mut store, instance) = match take_live(pool, use_pool) {
            Some(live) => live,
            None => {
                let mut store = self.new_store(Calling::Sync);
                let instance = instantiate(&mut store)
                    .map_err(|error| self.trapped(name, started.elapsed(), error))?;
                (store, instance)
            }
        };
        arm(&mut store);
        let answer = call(&instance, &mut store)
            .map_err(|error| self.trapped(name, started.elapsed(), error))?;
        self.answered(
            name,
            started.elapsed(),
            pool,
            use_pool,
            store,
            instance,
            answer,
        )
    }

    /// A call that trapped, counted and described; its instance is dropped.
    fn trapped(&self, name: &str, took: Duration, error: wasmtime::Error) -> PluginError {
        let end = match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => CallEnd::TimedOut,
            _ => CallEnd::Trapped,
        };
        self.call_metrics.observe_call(name, took, end);
        PluginError::Trapped {
            name: name.to_owned(),
            reason: describe_trap(&error, &self.limits),
        }
    }

    /// A call that answered: counted, its instance back in `pool` (when
    /// `use_pool`, and not past `POOL_SIZE`), the plugin's answer as ours.
    #[allow(clippy::too_many_arguments)]
    fn answered<I, R>(
        &self,
        name: &str,
        took: Duration,
        pool: &Pool<I>,
        use_pool: bool,
        store: Store<CallState>,
        instance: I,
        answer: Result<R, String>,
    ) -> Result<R, PluginError> {
        self.call_metrics
            .observe_call(name, took, CallEnd::Answered);
        let mut pool = pool.lock().expect("plugin pool");
        if use_pool && pool.len() < POOL_SIZE {
            pool.push((store, instance));
        }
        answer.map_err(|message| PluginError::Failed {
            name: name.to_owned(),
            message,
        })
    }

    /// Runs an auth plugin on one outgoing request; returns headers to add.
    pub fn sign(
        &self,
        plugin: &LoadedPlugin,
        request: &SignRequest,
        settings: &[(String, String)],
    ) -> Result<Vec<(String, String)>, PluginError> {
        let Instances::Auth { pre, pool, .. } = &plugin.instances else {
            return Err(wrong_kind(plugin, "an auth plugin"));
        };
        let (outgoing, settings) = sign_arguments(request, settings);
        let headers = self.call_pooled(
            &plugin.name,
            pool,
            true,
            |store| pre.instantiate(store),
            |instance, store| {
                instance
                    .repeatd_plugin_auth()
                    .call_sign(store, &outgoing, &settings)
            },
        )?;
        Ok(from_auth_pairs(headers))
    }
}

/// Arms a store for the next call: its CPU time starts from zero, and the
/// deadline check runs at the next epoch tick (and every one after).
fn arm(store: &mut Store<CallState>) {
    store.data().meter.start();
    store.set_epoch_deadline(1);
}

/// A live instance from `pool` (when `use_pool`), if one is free.
fn take_live<I>(pool: &Pool<I>, use_pool: bool) -> Option<(Store<CallState>, I)> {
    if use_pool {
        pool.lock().expect("plugin pool").pop()
    } else {
        None
    }
}

fn wrong_kind(plugin: &LoadedPlugin, wanted: &'static str) -> PluginError {
    PluginError::WrongKind {
        name: plugin.name.clone(),
        actual: plugin.kind.label(),
        wanted,
    }
}

/// A sign request and its settings in the WIT's shape.
fn sign_arguments(
    request: &SignRequest,
    settings: &[(String, String)],
) -> (Outgoing, Vec<AuthPair>) {
    let outgoing = Outgoing {
        method: request.method.clone(),
        url: request.url.clone(),
        headers: to_auth_pairs(&request.headers),
        body: request.body.clone(),
        record_id: request.record_id.clone(),
        unix_time: request.unix_time,
    };
    (outgoing, to_auth_pairs(settings))
}

fn to_auth_pairs(pairs: &[(String, String)]) -> Vec<AuthPair> {
    pairs
        .iter()
        .map(|(name, value)| AuthPair {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn from_auth_pairs(pairs: Vec<AuthPair>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|pair| (pair.name, pair.value))
        .collect()
}

/// Which instance of a plugin a call runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instance {
    /// A live one from the plugin's pool when one is free, returned to it
    /// after the call.
    Pooled,
    /// A fresh one, leaving the pool alone: what a call costs when no live
    /// instance is free (the benchmark in `tests/tests/plugin_cost.rs`
    /// measures both).
    Fresh,
}

/// The request an auth plugin signs.
#[derive(Debug, Clone)]
pub struct SignRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub record_id: String,
    pub unix_time: u64,
}

/// The embedded component of a built-in plugin.
pub fn builtin_component(name: &str) -> Option<&'static [u8]> {
    builtin::BUILTIN_PLUGINS
        .iter()
        .find(|(builtin_name, _)| *builtin_name == name)
        .map(|(_, bytes)| *bytes)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

pub fn to_wit_kind(kind: PayloadKind) -> WitPayloadKind {
    match kind {
        PayloadKind::Form => WitPayloadKind::Form,
        PayloadKind::Case => WitPayloadKind::Case,
        PayloadKind::FormStub => WitPayloadKind::FormStub,
        PayloadKind::AppSchema => WitPayloadKind::AppSchema,
    }
}

fn from_wit_kind(kind: WitPayloadKind) -> PayloadKind {
    match kind {
        WitPayloadKind::Form => PayloadKind::Form,
        WitPayloadKind::Case => PayloadKind::Case,
        WitPayloadKind::FormStub => PayloadKind::FormStub,
        WitPayloadKind::AppSchema => PayloadKind::AppSchema,
    }
}

/// Name/value pairs in the WIT's shape.
pub fn pairs<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Pair> {
    items
        .into_iter()
        .map(|(name, value)| Pair {
            name: name.to_owned(),
            value: value.to_owned(),
        })
        .collect()
}

/// The event for a form (and form-stub) payload.
pub fn form_event(form: &crate::model::StoredForm, xml: Vec<u8>) -> Event {
    Event::Form(WitForm {
        domain: form.domain.clone(),
        form_id: form.form_id.clone(),
        xmlns: form.xmlns.clone(),
        app_id: form.app_id.clone(),
        received_on: form.received_on.clone(),
        user_id: form.meta.user_id.clone(),
        username: form.meta.username.clone(),
        device_id: form.meta.device_id.clone(),
        time_start: form.meta.time_start.as_deref().map(device_time),
        time_end: form.meta.time_end.as_deref().map(device_time),
        app_version: form.meta.app_version.clone(),
        case_ids: form.case_ids.clone(),
        attachments: form
            .attachments
            .iter()
            .map(|a| WitAttachment {
                name: a.name.clone(),
                content_type: a.content_type.clone(),
                size: a.size,
            })
            .collect(),
        xml,
    })
}

/// A device time as the WIT promises it to plugins: converted to UTC when it
/// carries an offset (`Z`, `+05:30`, `-04`), passed as sent otherwise.
fn device_time(raw: &str) -> String {
    let has_offset = raw.trim().split_once('T').is_some_and(|(_, time_of_day)| {
        time_of_day.ends_with('Z') || time_of_day.contains(['+', '-'])
    });
    if has_offset {
        crate::time::normalize_device_time(raw)
    } else {
        raw.to_owned()
    }
}

/// The event for a case payload: the case as it stands.
pub fn case_event(case: &crate::model::Case) -> Event {
    Event::Case(WitCase {
        domain: case.domain.clone(),
        case_id: case.case_id.clone(),
        case_type: case.case_type.clone(),
        case_name: case.case_name.clone(),
        owner_id: case.owner_id.clone(),
        user_id: case.user_id.clone(),
        external_id: case.external_id.clone(),
        date_opened: case.date_opened.clone(),
        date_modified: case.date_modified.clone(),
        server_date_opened: case.server_date_opened.clone(),
        server_date_modified: case.server_date_modified.clone(),
        closed: case.closed,
        date_closed: case.date_closed.clone(),
        properties: case
            .properties
            .iter()
            .map(|(name, value)| Pair {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        indices: case
            .indices
            .iter()
            .map(|index| WitCaseIndex {
                identifier: index.identifier.clone(),
                case_type: index.case_type.clone(),
                case_id: index.case_id.clone(),
                relationship: index.relationship.clone(),
            })
            .collect(),
        xform_ids: case.xform_ids.clone(),
        attachments: case.attachments.clone(),
    })
}

/// The event for an app change.
pub fn app_event(
    domain: &str,
    app_id: &str,
    change: crate::record::AppChange,
    build_id: Option<&str>,
) -> Event {
    Event::App(AppEvent {
        domain: domain.to_owned(),
        app_id: app_id.to_owned(),
        change: match change {
            crate::record::AppChange::Saved => WitAppChange::Saved,
            crate::record::AppChange::Built => WitAppChange::Built,
        },
        build_id: build_id.map(str::to_owned),
    })
}

/// Watches `plugin_dir`: loads every `NAME.wasm` at start, then reloads a
/// file once it is complete (unchanged for `settle`), and unloads a removed
/// one. Runs on its own thread; compiling never blocks the async runtime.
pub fn watch(host: Arc<PluginHost>, plugin_dir: PathBuf, settle: Duration) -> anyhow::Result<()> {
    use notify::{RecursiveMode, Watcher};
    std::fs::create_dir_all(&plugin_dir)
        .map_err(|error| anyhow::anyhow!("plugin_dir {}: {error}", plugin_dir.display()))?;
    let (events_tx, events) = std::sync::mpsc::channel::<()>();
    host.background
        .watch_wakers
        .lock()
        .expect("wakers lock")
        .push(events_tx.clone());
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = events_tx.send(());
    })?;
    watcher.watch(&plugin_dir, RecursiveMode::NonRecursive)?;
    // The first scan happens before this returns, so start-up sees every
    // plugin file that is already there.
    let mut known: HashMap<PathBuf, FileStamp> = HashMap::new();
    scan(&host, &plugin_dir, &mut known, Duration::ZERO);
    let background = host.background.clone();
    background.spawn("plugin-watch", move || {
        let _watcher = watcher;
        loop {
            // Wake on an event, or every second anyway (some file systems
            // do not deliver events); shutdown wakes it too.
            let _ = events.recv_timeout(Duration::from_secs(1));
            // Let writers finish, then look.
            if host.background.wait(settle) {
                break;
            }
            while events.try_recv().is_ok() {}
            scan(&host, &plugin_dir, &mut known, settle);
        }
    })?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    loaded: bool,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        len: metadata.len(),
        modified: metadata.modified().ok(),
        loaded: false,
    })
}

fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let name = path.file_stem()?.to_str()?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    valid.then(|| name.to_owned())
}

fn scan(host: &PluginHost, dir: &Path, known: &mut HashMap<PathBuf, FileStamp>, settle: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut present = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = plugin_name(&path) else {
            continue;
        };
        present.push(path.clone());
        let Some(mut now) = stamp(&path) else {
            continue;
        };
        if let Some(before) = known.get(&path)
            && before.len == now.len
            && before.modified == now.modified
            && before.loaded
        {
            continue;
        }
        // A file still being written changes between two looks.
        if !settle.is_zero() {
            std::thread::sleep(settle.min(Duration::from_millis(200)));
            if stamp(&path)
                .is_none_or(|again| again.len != now.len || again.modified != now.modified)
            {
                known.insert(path, now);
                continue;
            }
        }
        let _ = host.load_file(&name, &path);
        now.loaded = true;
        known.insert(path, now);
    }
    let removed: Vec<PathBuf> = known
        .keys()
        .filter(|path| !present.contains(path))
        .cloned()
        .collect();
    for path in removed {
        known.remove(&path);
        let Some(name) = plugin_name(&path) else {
            continue;
        };
        if let Some(current) = host.get(&name)
            && current.source == PluginSource::File(path.clone())
        {
            tracing::info!(plugin = %name, path = %path.display(), "plugin file removed; unloaded");
            host.remove(&name);
        } else {
            // A file that never loaded: its error goes with it.
            host.clear_error(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns `cpu` of this thread's CPU time.
    fn spin_for(cpu: Duration) {
        let until = CallMeter::thread_cpu_nanos() + cpu.as_nanos() as u64;
        while CallMeter::thread_cpu_nanos() < until {
            std::hint::black_box(0u64);
        }
    }

    #[tokio::test]
    async fn a_calls_deadline_counts_only_the_cpu_time_it_ran() {
        let meter = CallMeter::default();
        meter.start();
        let mut polls = 0;
        metered(
            &meter,
            std::future::poll_fn(|context| {
                polls += 1;
                match polls {
                    1 => {
                        spin_for(Duration::from_millis(30));
                        // Off the CPU inside a poll (as when the machine
                        // is busy and the thread waits for a core).
                        std::thread::sleep(Duration::from_millis(100));
                        // Then waiting to be polled again (as after a yield
                        // at an epoch tick).
                        let waker = context.waker().clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(100));
                            waker.wake();
                        });
                        std::task::Poll::Pending
                    }
                    _ => std::task::Poll::Ready(()),
                }
            }),
        )
        .await;
        let ran = meter.ran_so_far();
        assert!(
            ran >= Duration::from_millis(30) && ran < Duration::from_millis(100),
            "{ran:?}: only the 30 ms spent on the CPU count"
        );
    }

    #[test]
    fn device_times_with_an_offset_reach_plugins_in_utc() {
        assert_eq!(
            device_time("2015-04-17T16:04:42.383-04"),
            "2015-04-17T20:04:42.383000Z"
        );
        assert_eq!(
            device_time("2011-09-19T22:29:48.097Z"),
            "2011-09-19T22:29:48.097000Z"
        );
        assert_eq!(
            device_time("2024-01-01T10:00:00+05:30"),
            "2024-01-01T04:30:00.000000Z"
        );
        // Without an offset, or not a time at all: as sent.
        assert_eq!(
            device_time("2015-04-17T16:04:42.383"),
            "2015-04-17T16:04:42.383"
        );
        assert_eq!(device_time("2015-04-17"), "2015-04-17");
        assert_eq!(device_time("yesterday"), "yesterday");
    }

    #[test]
    fn the_epoch_thread_and_the_watcher_end_at_shutdown() {
        let plugin_dir = std::env::temp_dir().join(format!(
            "repeatd-plugin-shutdown-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let host = PluginHost::without_builtins(PluginLimits::default()).unwrap();
        watch(host.clone(), plugin_dir.clone(), Duration::from_millis(5)).unwrap();
        assert_eq!(host.running_threads(), 2);
        assert_eq!(Arc::strong_count(&host), 2, "the watcher holds the host");
        let names: Vec<String> = host
            .background
            .threads
            .lock()
            .unwrap()
            .iter()
            .filter_map(|handle| handle.thread().name().map(str::to_owned))
            .collect();
        assert_eq!(names, ["plugin-epoch", "plugin-watch"]);

        host.shutdown();
        assert_eq!(host.running_threads(), 0, "both threads have ended");
        assert_eq!(
            Arc::strong_count(&host),
            1,
            "the watcher let go of the host"
        );
        assert!(host.background.threads.lock().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&plugin_dir);
    }

    #[test]
    fn memory_sizes_read_as_mebibytes_when_whole() {
        assert_eq!(byte_size(64 << 20), "64 MiB");
        assert_eq!(byte_size((64 << 20) + (64 << 10)), "67174400 bytes");
        assert_eq!(byte_size(65536), "65536 bytes");
    }
}
