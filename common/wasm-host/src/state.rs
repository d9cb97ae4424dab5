//! What a wasmtime `Store` carries for one filter instance: the maps and
//! properties of the callback in progress, the memory limit, and handles
//! into the guest; plus what all instances of a filter share (plugin
//! configuration, shared data, metrics).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use crate::fields::FieldMap;
use crate::props::PropertyTable;
use crate::{Limits, LocalReply, PluginSpec};

/// Which callback is running: decides which buffers and maps are there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Instantiation, `_initialize`, context creation and deletion.
    Lifecycle,
    VmStart,
    Configure,
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
}

impl Phase {
    /// The map type (`proxy_map_type_t`) this phase may read and write.
    pub(crate) fn map(self) -> Option<usize> {
        match self {
            Phase::RequestHeaders => Some(0),
            Phase::RequestTrailers => Some(1),
            Phase::ResponseHeaders => Some(2),
            Phase::ResponseTrailers => Some(3),
            _ => None,
        }
    }

    pub(crate) fn is_http(self) -> bool {
        self.map().is_some()
    }
}

/// The memory cap. Growing past it traps with [`MemoryLimitHit`].
pub(crate) struct Limiter {
    pub(crate) memory_bytes: usize,
}

/// The error a guest's `memory.grow` past the limit traps with.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes reached (wanted {wanted})")]
pub(crate) struct MemoryLimitHit {
    pub(crate) limit: usize,
    pub(crate) wanted: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitHit {
                limit: self.memory_bytes,
                wanted: desired,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }
}

/// Function-table elements a filter may have (Rust filters use a few
/// hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Shared by every instance of one filter.
pub(crate) struct Shared {
    pub(crate) spec: PluginSpec,
    pub(crate) shared_data: Mutex<SharedData>,
    pub(crate) metrics: Mutex<Vec<Metric>>,
    pub(crate) started: Instant,
}

#[derive(Default)]
pub(crate) struct SharedData {
    pub(crate) entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    pub(crate) bytes: usize,
}

/// Bytes of shared data a filter may keep.
pub(crate) const MAX_SHARED_DATA_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    /// Counter and gauge: the value; histogram: the sum of the values.
    pub value: i64,
    /// Histogram: how many values were recorded.
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Most metrics a filter may define.
pub(crate) const MAX_METRICS: usize = 1000;

/// The store's data.
pub(crate) struct HostState {
    pub(crate) shared: std::sync::Arc<Shared>,
    pub(crate) limits: Limits,
    pub(crate) limiter: Limiter,
    pub(crate) memory: Option<Memory>,
    /// Shared so a host call can hold it while the store is borrowed
    /// (cloning a `TypedFunc` itself costs a type-registry round trip).
    pub(crate) alloc: Option<std::sync::Arc<TypedFunc<i32, i32>>>,
    pub(crate) phase: Phase,
    /// The context the callback runs for (or the effective one).
    pub(crate) context: u32,
    pub(crate) root_context: u32,
    pub(crate) live_streams: Vec<u32>,
    pub(crate) maps: [FieldMap; 4],
    pub(crate) props: PropertyTable,
    /// Properties the guest set: (context, path, value).
    pub(crate) set_props: Vec<(u32, Vec<u8>, Vec<u8>)>,
    pub(crate) local_reply: Option<LocalReply>,
    pub(crate) reset: bool,
    pub(crate) resumed: bool,
    /// Reusable output buffer (serialized maps).
    pub(crate) scratch: Vec<u8>,
    /// Error and warning lines logged while starting, for load errors.
    pub(crate) start_log: Option<Vec<String>>,
}

impl HostState {
    pub(crate) fn new(shared: std::sync::Arc<Shared>, limits: Limits) -> Self {
        HostState {
            shared,
            limiter: Limiter {
                memory_bytes: limits.memory_bytes,
            },
            limits,
            memory: None,
            alloc: None,
            phase: Phase::Lifecycle,
            context: 0,
            root_context: 0,
            live_streams: Vec::new(),
            maps: Default::default(),
            props: PropertyTable::default(),
            set_props: Vec::new(),
            local_reply: None,
            reset: false,
            resumed: false,
            scratch: Vec::new(),
            start_log: None,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.shared.spec.name
    }
}
