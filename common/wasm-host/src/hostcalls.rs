//! Every function the ABI 0.2.1 specification has the host expose, in the
//! specification's order. Working: logging, time, randomness, buffers
//! (configuration; bodies are never delivered, so `NOT_FOUND`), the HTTP
//! header and trailer maps, properties, local responses, stream
//! continue/close, shared data, metrics, contexts, and the WASI calls the
//! specification lists. `UNIMPLEMENTED`: timers (a non-zero tick period),
//! HTTP and gRPC calls, shared queues, and `proxy_get_status` (which only
//! answers about those calls).
//!
//! Misuse answers with the status the specification names; a call that
//! could only be answered by lying (a map outside its callback) answers
//! `BAD_ARGUMENT`, which the Rust SDK turns into a panic, so the request
//! fails instead of going on with wrong headers.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use wasmtime::{Caller, Linker};

use crate::abi::{self, buffer, errno, status, stream};
use crate::state::{HostState, Metric, MetricKind, Phase, MAX_METRICS, MAX_SHARED_DATA_BYTES};
use crate::LocalReply;

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;

/// Every import this host provides: `(module, name)`.
pub(crate) const PROVIDED: &[(&str, &str)] = &[
    ("env", "proxy_done"),
    ("env", "proxy_set_effective_context"),
    ("env", "proxy_log"),
    ("wasi_snapshot_preview1", "fd_write"),
    ("env", "proxy_get_log_level"),
    ("env", "proxy_get_current_time_nanoseconds"),
    ("wasi_snapshot_preview1", "clock_time_get"),
    ("env", "proxy_set_tick_period_milliseconds"),
    ("wasi_snapshot_preview1", "random_get"),
    ("wasi_snapshot_preview1", "environ_sizes_get"),
    ("wasi_snapshot_preview1", "environ_get"),
    ("env", "proxy_set_buffer_bytes"),
    ("env", "proxy_get_buffer_bytes"),
    ("env", "proxy_get_buffer_status"),
    ("env", "proxy_get_header_map_size"),
    ("env", "proxy_get_header_map_pairs"),
    ("env", "proxy_set_header_map_pairs"),
    ("env", "proxy_get_header_map_value"),
    ("env", "proxy_add_header_map_value"),
    ("env", "proxy_replace_header_map_value"),
    ("env", "proxy_remove_header_map_value"),
    ("env", "proxy_continue_stream"),
    ("env", "proxy_close_stream"),
    ("env", "proxy_get_status"),
    ("env", "proxy_send_local_response"),
    ("env", "proxy_http_call"),
    ("env", "proxy_grpc_call"),
    ("env", "proxy_grpc_stream"),
    ("env", "proxy_grpc_send"),
    ("env", "proxy_grpc_cancel"),
    ("env", "proxy_grpc_close"),
    ("env", "proxy_set_shared_data"),
    ("env", "proxy_get_shared_data"),
    ("env", "proxy_register_shared_queue"),
    ("env", "proxy_resolve_shared_queue"),
    ("env", "proxy_enqueue_shared_queue"),
    ("env", "proxy_dequeue_shared_queue"),
    ("env", "proxy_define_metric"),
    ("env", "proxy_record_metric"),
    ("env", "proxy_increment_metric"),
    ("env", "proxy_get_metric"),
    ("env", "proxy_get_property"),
    ("env", "proxy_set_property"),
    ("env", "proxy_call_foreign_function"),
    ("wasi_snapshot_preview1", "args_sizes_get"),
    ("wasi_snapshot_preview1", "args_get"),
    ("wasi_snapshot_preview1", "proc_exit"),
];

/// Longest log line kept (longer ones are cut).
const MAX_LOG_LINE: usize = 4096;
/// Largest `random_get` request.
const MAX_RANDOM: usize = 64 * 1024;
/// Largest local response body and total bytes of properties a guest sets.
const MAX_BODY: usize = 1 << 20;
const MAX_SET_PROPERTY_BYTES: usize = 64 * 1024;

/// Guest memory and the store data, borrowed together.
fn split<'a>(caller: &'a mut C<'_>) -> Option<(&'a mut [u8], &'a mut HostState)> {
    let memory = caller.data().memory?;
    Some(memory.data_and_store_mut(caller))
}

/// Runs `f` on guest memory and store data; `INVALID_MEMORY_ACCESS`
/// without memory.
fn with(caller: &mut C<'_>, f: impl FnOnce(&mut [u8], &mut HostState) -> i32) -> i32 {
    match split(caller) {
        Some((memory, state)) => f(memory, state),
        None => status::INVALID_MEMORY_ACCESS,
    }
}

/// Copies `bytes` into memory the guest allocates (its
/// `proxy_on_memory_allocate` or `malloc`) and writes the pointer and size
/// to `ret_data` / `ret_size`. Nothing is allocated for empty results
/// (pointer 0): the SDKs read that as empty or absent.
fn give(caller: &mut C<'_>, bytes: &[u8], ret_data: i32, ret_size: i32) -> R {
    let ptr = if bytes.is_empty() {
        0
    } else {
        let Some(alloc) = caller.data().alloc.clone() else {
            return Ok(status::INTERNAL_FAILURE);
        };
        let Ok(len) = i32::try_from(bytes.len()) else {
            return Ok(status::INTERNAL_FAILURE);
        };
        let ptr = alloc.call(&mut *caller, len)?;
        if ptr == 0 {
            return Ok(status::INTERNAL_FAILURE);
        }
        ptr
    };
    Ok(with(caller, |memory, _| {
        if (bytes.is_empty() || abi::put(memory, ptr, bytes))
            && abi::put_u32(memory, ret_data, ptr as u32)
            && abi::put_u32(memory, ret_size, bytes.len() as u32)
        {
            status::OK
        } else {
            status::INVALID_MEMORY_ACCESS
        }
    }))
}

/// Fills the store's scratch buffer with `fill` (from guest memory and the
/// store), then [`give`]s it to the guest if `fill` said `OK`.
fn answer(
    caller: &mut C<'_>,
    ret_data: i32,
    ret_size: i32,
    fill: impl FnOnce(&[u8], &mut HostState, &mut Vec<u8>) -> i32,
) -> R {
    let mut buf = std::mem::take(&mut caller.data_mut().scratch);
    buf.clear();
    let st = match split(caller) {
        Some((memory, state)) => fill(memory, state, &mut buf),
        None => status::INVALID_MEMORY_ACCESS,
    };
    let result = if st == status::OK {
        give(caller, &buf, ret_data, ret_size)
    } else {
        Ok(st)
    };
    caller.data_mut().scratch = buf;
    result
}

fn log_line(state: &mut HostState, level: i32, message: &[u8]) {
    let cut = &message[..message.len().min(MAX_LOG_LINE)];
    let text = String::from_utf8_lossy(cut);
    let text = text.trim_end_matches('\n');
    let (filter, context) = (state.name(), state.context);
    match level {
        0 => tracing::trace!(target: "wasm_filter", filter, context, "{text}"),
        1 => tracing::debug!(target: "wasm_filter", filter, context, "{text}"),
        2 => tracing::info!(target: "wasm_filter", filter, context, "{text}"),
        3 => tracing::warn!(target: "wasm_filter", filter, context, "{text}"),
        _ => tracing::error!(target: "wasm_filter", filter, context, "{text}"),
    }
    if level >= 3 {
        if let Some(lines) = &mut state.start_log {
            if lines.len() < 64 {
                lines.push(text.to_owned());
            }
        }
    }
}

/// The map `map_type` if the current callback has it.
fn map_index(state: &HostState, map_type: i32) -> Option<usize> {
    let index = usize::try_from(map_type).ok()?;
    (state.phase.map() == Some(index)).then_some(index)
}

/// Whether adding `name: value` keeps the map within its limit.
fn fits(state: &HostState, index: usize, name: &[u8], value: &[u8]) -> bool {
    let map = &state.maps[index];
    map.size() + name.len() + value.len() <= state.limits.max_header_bytes
        && map.buffer_len() + name.len() + value.len() <= 4 * state.limits.max_header_bytes
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // ---- Context lifecycle ----
    // Contexts are finalized when `proxy_on_done` returns: none is ever
    // pending, so there is nothing for `proxy_done` to release.
    linker.func_wrap("env", "proxy_done", |_: C<'_>| -> R {
        Ok(status::NOT_FOUND)
    })?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut caller: C<'_>, context: i32| -> R {
            let state = caller.data_mut();
            let context = context as u32;
            if context == state.root_context || state.live_streams.contains(&context) {
                state.context = context;
                Ok(status::OK)
            } else {
                Ok(status::BAD_ARGUMENT)
            }
        },
    )?;

    // ---- Logging ----
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut caller: C<'_>, level: i32, ptr: i32, len: i32| -> R {
            if !(0..=5).contains(&level) {
                return Ok(status::BAD_ARGUMENT);
            }
            Ok(with(&mut caller, |memory, state| {
                match abi::slice(memory, ptr, len) {
                    Some(message) => {
                        log_line(state, level, message);
                        status::OK
                    }
                    None => status::INVALID_MEMORY_ACCESS,
                }
            }))
        },
    )?;
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "fd_write",
        |mut caller: C<'_>, fd: i32, iovs: i32, iovs_len: i32, ret_written: i32| -> R {
            let level = match fd {
                1 => 2,
                2 => 4,
                _ => return Ok(errno::BADF),
            };
            Ok(with(&mut caller, |memory, state| {
                let Some(vecs) = iovs_len
                    .checked_mul(8)
                    .and_then(|n| abi::slice(memory, iovs, n))
                else {
                    return errno::FAULT;
                };
                let mut message = Vec::new();
                for iov in vecs.chunks_exact(8) {
                    let ptr = i32::from_le_bytes(iov[0..4].try_into().unwrap_or_default());
                    let len = i32::from_le_bytes(iov[4..8].try_into().unwrap_or_default());
                    match abi::slice(memory, ptr, len) {
                        Some(part) if message.len() + part.len() <= MAX_LOG_LINE => {
                            message.extend_from_slice(part)
                        }
                        Some(part) => message
                            .extend_from_slice(&part[..MAX_LOG_LINE.saturating_sub(message.len())]),
                        None => return errno::FAULT,
                    }
                }
                let written: u32 = vecs
                    .chunks_exact(8)
                    .map(|iov| u32::from_le_bytes(iov[4..8].try_into().unwrap_or_default()))
                    .fold(0u32, u32::wrapping_add);
                log_line(state, level, &message);
                if abi::put_u32(memory, ret_written, written) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut caller: C<'_>, ret_level: i32| -> R {
            use tracing::level_filters::LevelFilter;
            let level = match LevelFilter::current() {
                LevelFilter::TRACE => 0,
                LevelFilter::DEBUG => 1,
                LevelFilter::INFO => 2,
                LevelFilter::WARN => 3,
                LevelFilter::ERROR => 4,
                _ => 5,
            };
            Ok(with(&mut caller, |memory, _| {
                if abi::put_u32(memory, ret_level, level) {
                    status::OK
                } else {
                    status::INVALID_MEMORY_ACCESS
                }
            }))
        },
    )?;

    // ---- Clocks, timers, randomness, environment ----
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut caller: C<'_>, ret_time: i32| -> R {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            Ok(with(&mut caller, |memory, _| {
                if abi::put_u64(memory, ret_time, now) {
                    status::OK
                } else {
                    status::INVALID_MEMORY_ACCESS
                }
            }))
        },
    )?;
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "clock_time_get",
        |mut caller: C<'_>, clock: i32, _precision: i64, ret_time: i32| -> R {
            let nanos = match clock {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64,
                1 => caller.data().shared.started.elapsed().as_nanos() as u64,
                _ => return Ok(errno::NOTSUP),
            };
            Ok(with(&mut caller, |memory, _| {
                if abi::put_u64(memory, ret_time, nanos) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            }))
        },
    )?;
    // This host never calls `proxy_on_tick`: turning the timer off is all
    // it can honestly accept.
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |_: C<'_>, period: i32| -> R {
            Ok(if period == 0 {
                status::OK
            } else {
                status::UNIMPLEMENTED
            })
        },
    )?;
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "random_get",
        |mut caller: C<'_>, ptr: i32, len: i32| -> R {
            let len = len as u32 as usize;
            if len > MAX_RANDOM {
                return Ok(errno::INVAL);
            }
            Ok(with(&mut caller, |memory, _| {
                let start = ptr as u32 as usize;
                match start
                    .checked_add(len)
                    .and_then(|end| memory.get_mut(start..end))
                {
                    Some(dst) => {
                        rand::rng().fill_bytes(dst);
                        errno::SUCCESS
                    }
                    None => errno::FAULT,
                }
            }))
        },
    )?;
    // No environment variables and no arguments: both sizes are zero.
    for (name, _) in [("environ_sizes_get", ()), ("args_sizes_get", ())] {
        linker.func_wrap(
            "wasi_snapshot_preview1",
            name,
            |mut caller: C<'_>, ret_count: i32, ret_size: i32| -> R {
                Ok(with(&mut caller, |memory, _| {
                    if abi::put_u32(memory, ret_count, 0) && abi::put_u32(memory, ret_size, 0) {
                        errno::SUCCESS
                    } else {
                        errno::FAULT
                    }
                }))
            },
        )?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(
            "wasi_snapshot_preview1",
            name,
            |_: C<'_>, _array: i32, _buf: i32| -> R { Ok(errno::SUCCESS) },
        )?;
    }
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "proc_exit",
        |_: C<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the filter called proc_exit({code})"
            )))
        },
    )?;

    // ---- Buffers ----
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: C<'_>, kind: i32, start: i32, max: i32, ret_data: i32, ret_size: i32| -> R {
            answer(&mut caller, ret_data, ret_size, |_, state, out| {
                let Some(buf) = buffer_of(state, kind) else {
                    return buffer_missing(kind);
                };
                let (start, max) = (start as u32 as usize, max as u32 as usize);
                if start > buf.len() {
                    return status::BAD_ARGUMENT;
                }
                let end = start.saturating_add(max).min(buf.len());
                out.extend_from_slice(&buf[start..end]);
                status::OK
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut caller: C<'_>, kind: i32, ret_size: i32, ret_flags: i32| -> R {
            Ok(with(&mut caller, |memory, state| {
                let Some(len) = buffer_of(state, kind).map(<[u8]>::len) else {
                    return buffer_missing(kind);
                };
                if abi::put_u32(memory, ret_size, len as u32) && abi::put_u32(memory, ret_flags, 0)
                {
                    status::OK
                } else {
                    status::INVALID_MEMORY_ACCESS
                }
            }))
        },
    )?;
    // The configuration buffers are read-only; bodies and the other
    // buffers are never available here.
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |caller: C<'_>, kind: i32, _start: i32, _size: i32, _data: i32, _len: i32| -> R {
            Ok(if buffer_of(caller.data(), kind).is_some() {
                status::BAD_ARGUMENT
            } else {
                buffer_missing(kind)
            })
        },
    )?;

    // ---- HTTP fields ----
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut caller: C<'_>, map: i32, ret_size: i32| -> R {
            Ok(with(&mut caller, |memory, state| {
                let Some(i) = map_index(state, map) else {
                    return status::BAD_ARGUMENT;
                };
                let size = abi::serialized_size(state.maps[i].pairs());
                if abi::put_u32(memory, ret_size, size as u32) {
                    status::OK
                } else {
                    status::INVALID_MEMORY_ACCESS
                }
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: C<'_>, map: i32, ret_data: i32, ret_size: i32| -> R {
            answer(&mut caller, ret_data, ret_size, |_, state, out| {
                let Some(i) = map_index(state, map) else {
                    return status::BAD_ARGUMENT;
                };
                abi::serialize_pairs(out, state.maps[i].pairs());
                status::OK
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: C<'_>, map: i32, ptr: i32, len: i32| -> R {
            Ok(with(&mut caller, |memory, state| {
                let Some(i) = map_index(state, map) else {
                    return status::BAD_ARGUMENT;
                };
                let Some(bytes) = abi::slice(memory, ptr, len) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let Some(pairs) = abi::deserialize_pairs(bytes) else {
                    return status::BAD_ARGUMENT;
                };
                // Pseudo-headers may come back unchanged (a filter that read
                // the pairs and sets them again), never changed.
                let (pseudo, fields): (Vec<_>, Vec<_>) =
                    pairs.iter().partition(|(n, _)| n.starts_with(b":"));
                let total: usize = fields.iter().map(|(n, v)| n.len() + v.len()).sum();
                if total > state.limits.max_header_bytes
                    || !fields
                        .iter()
                        .all(|(n, v)| abi::is_header_name(n) && abi::is_header_value(v))
                    || !pseudo.iter().all(|(n, v)| state.maps[i].pseudo_is(n, v))
                {
                    return status::BAD_ARGUMENT;
                }
                state.maps[i].replace_all(&fields);
                status::OK
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: C<'_>, map: i32, key: i32, key_len: i32, ret_data: i32, ret_size: i32| -> R {
            answer(&mut caller, ret_data, ret_size, |memory, state, out| {
                let Some(i) = map_index(state, map) else {
                    return status::BAD_ARGUMENT;
                };
                let Some(key) = abi::slice(memory, key, key_len) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                match state.maps[i].get(key) {
                    Some(value) => {
                        out.extend_from_slice(value);
                        status::OK
                    }
                    None => status::NOT_FOUND,
                }
            })
        },
    )?;
    for (name, replace) in [
        ("proxy_add_header_map_value", false),
        ("proxy_replace_header_map_value", true),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut caller: C<'_>,
                  map: i32,
                  key: i32,
                  key_len: i32,
                  value: i32,
                  value_len: i32|
                  -> R {
                Ok(with(&mut caller, |memory, state| {
                    let Some(i) = map_index(state, map) else {
                        return status::BAD_ARGUMENT;
                    };
                    let (Some(key), Some(value)) = (
                        abi::slice(memory, key, key_len),
                        abi::slice(memory, value, value_len),
                    ) else {
                        return status::INVALID_MEMORY_ACCESS;
                    };
                    if !abi::is_header_name(key)
                        || !abi::is_header_value(value)
                        || !fits(state, i, key, value)
                    {
                        return status::BAD_ARGUMENT;
                    }
                    if replace {
                        state.maps[i].set(key, value);
                    } else {
                        state.maps[i].append(key, value);
                    }
                    status::OK
                }))
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: C<'_>, map: i32, key: i32, key_len: i32| -> R {
            Ok(with(&mut caller, |memory, state| {
                let Some(i) = map_index(state, map) else {
                    return status::BAD_ARGUMENT;
                };
                let Some(key) = abi::slice(memory, key, key_len) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                if !fits(state, i, key, b"") || key.starts_with(b":") {
                    return status::BAD_ARGUMENT;
                }
                state.maps[i].remove(key);
                status::OK
            }))
        },
    )?;

    // ---- Streams ----
    // Callbacks run to completion here, so an HTTP stream is never paused:
    // resuming it is a no-op that turns a later PAUSE into CONTINUE.
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut caller: C<'_>, kind: i32| -> R {
            Ok(match kind {
                stream::HTTP_REQUEST | stream::HTTP_RESPONSE => {
                    caller.data_mut().resumed = true;
                    status::OK
                }
                2..=stream::UPSTREAM => status::UNIMPLEMENTED,
                _ => status::BAD_ARGUMENT,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut caller: C<'_>, kind: i32| -> R {
            Ok(match kind {
                stream::HTTP_REQUEST..=stream::UPSTREAM => {
                    caller.data_mut().reset = true;
                    status::OK
                }
                _ => status::BAD_ARGUMENT,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |_: C<'_>, _code: i32, _data: i32, _size: i32| -> R { Ok(status::UNIMPLEMENTED) },
    )?;

    // ---- HTTP streams ----
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: C<'_>,
         code: i32,
         details: i32,
         details_len: i32,
         body: i32,
         body_len: i32,
         headers: i32,
         headers_len: i32,
         grpc_status: i32|
         -> R {
            Ok(with(&mut caller, |memory, state| {
                let (Some(details), Some(body), Some(headers)) = (
                    abi::slice(memory, details, details_len),
                    abi::slice(memory, body, body_len),
                    abi::slice(memory, headers, headers_len),
                ) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                if !state.phase.is_http() || !(200..=599).contains(&code) || body.len() > MAX_BODY {
                    return status::BAD_ARGUMENT;
                }
                let Some(pairs) = abi::deserialize_pairs(headers) else {
                    return status::BAD_ARGUMENT;
                };
                if !pairs
                    .iter()
                    .all(|(n, v)| abi::is_header_name(n) && abi::is_header_value(v))
                {
                    return status::BAD_ARGUMENT;
                }
                state.local_reply = Some(LocalReply {
                    status: code as u16,
                    headers: pairs
                        .iter()
                        .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec()))
                        .collect(),
                    body: body.to_vec(),
                    details: String::from_utf8_lossy(details).into_owned(),
                    grpc_status: u32::try_from(grpc_status).ok(),
                });
                status::OK
            }))
        },
    )?;

    // ---- HTTP and gRPC calls: not offered ----
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |_: C<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> R { Ok(status::UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |_: C<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> R { Ok(status::UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> R {
            Ok(status::UNIMPLEMENTED)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32| -> R { Ok(status::UNIMPLEMENTED) },
    )?;
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        linker.func_wrap("env", name, |_: C<'_>, _: i32| -> R {
            Ok(status::UNIMPLEMENTED)
        })?;
    }

    // ---- Shared key-value store (shared by a filter's instances) ----
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut caller: C<'_>, key: i32, key_len: i32, value: i32, value_len: i32, cas: i32| -> R {
            Ok(with(&mut caller, |memory, state| {
                let (Some(key), Some(value)) = (
                    abi::slice(memory, key, key_len),
                    abi::slice(memory, value, value_len),
                ) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let mut data = state
                    .shared
                    .shared_data
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let current = data.entries.get(key).map(|(v, c)| (v.len(), *c));
                let cas = cas as u32;
                if cas != 0 && current.map(|(_, c)| c) != Some(cas) {
                    return status::CAS_MISMATCH;
                }
                let old_len = current.map_or(0, |(len, _)| len + key.len());
                if data.bytes - old_len + key.len() + value.len() > MAX_SHARED_DATA_BYTES {
                    return status::INTERNAL_FAILURE;
                }
                let next = current.map_or(1, |(_, c)| c.wrapping_add(1).max(1));
                data.bytes = data.bytes - old_len + key.len() + value.len();
                data.entries.insert(key.to_vec(), (value.to_vec(), next));
                status::OK
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut caller: C<'_>,
         key: i32,
         key_len: i32,
         ret_data: i32,
         ret_size: i32,
         ret_cas: i32|
         -> R {
            let mut cas = 0;
            let st = answer(&mut caller, ret_data, ret_size, |memory, state, out| {
                let Some(key) = abi::slice(memory, key, key_len) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let data = state
                    .shared
                    .shared_data
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match data.entries.get(key) {
                    Some((value, c)) => {
                        out.extend_from_slice(value);
                        cas = *c;
                        status::OK
                    }
                    None => status::NOT_FOUND,
                }
            })?;
            if st != status::OK {
                return Ok(st);
            }
            Ok(with(&mut caller, |memory, _| {
                if abi::put_u32(memory, ret_cas, cas) {
                    status::OK
                } else {
                    status::INVALID_MEMORY_ACCESS
                }
            }))
        },
    )?;

    // ---- Shared queues: not offered ----
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |_: C<'_>, _: i32, _: i32, _: i32| -> R { Ok(status::UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32| -> R { Ok(status::UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |_: C<'_>, _: i32, _: i32, _: i32| -> R { Ok(status::UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |_: C<'_>, _: i32, _: i32, _: i32| -> R { Ok(status::UNIMPLEMENTED) },
    )?;

    // ---- Metrics (shared by a filter's instances; WasmFilter::metrics) ----
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: C<'_>, kind: i32, name: i32, name_len: i32, ret_id: i32| -> R {
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Ok(status::BAD_ARGUMENT),
            };
            Ok(with(&mut caller, |memory, state| {
                let Some(name) = abi::slice(memory, name, name_len) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let name = String::from_utf8_lossy(name).into_owned();
                let mut metrics = state
                    .shared
                    .metrics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let id = match metrics
                    .iter()
                    .position(|m| m.name == name && m.kind == kind)
                {
                    Some(i) => i,
                    None if metrics.len() < MAX_METRICS => {
                        metrics.push(Metric {
                            name,
                            kind,
                            value: 0,
                            count: 0,
                        });
                        metrics.len() - 1
                    }
                    None => return status::INTERNAL_FAILURE,
                };
                if abi::put_u32(memory, ret_id, id as u32) {
                    status::OK
                } else {
                    status::INVALID_MEMORY_ACCESS
                }
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |caller: C<'_>, id: i32, value: i64| -> R {
            let mut metrics = caller
                .data()
                .shared
                .metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let Some(m) = metrics.get_mut(id as u32 as usize) else {
                return Ok(status::NOT_FOUND);
            };
            match m.kind {
                MetricKind::Histogram => {
                    m.value = m.value.wrapping_add(value);
                    m.count += 1;
                }
                _ => m.value = value,
            }
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |caller: C<'_>, id: i32, delta: i64| -> R {
            let mut metrics = caller
                .data()
                .shared
                .metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let Some(m) = metrics.get_mut(id as u32 as usize) else {
                return Ok(status::NOT_FOUND);
            };
            match m.kind {
                MetricKind::Counter if delta < 0 => Ok(status::BAD_ARGUMENT),
                MetricKind::Histogram => Ok(status::BAD_ARGUMENT),
                _ => {
                    m.value = m.value.wrapping_add(delta);
                    Ok(status::OK)
                }
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut caller: C<'_>, id: i32, ret_value: i32| -> R {
            Ok(with(&mut caller, |memory, state| {
                let value = {
                    let metrics = state
                        .shared
                        .metrics
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    match metrics.get(id as u32 as usize) {
                        Some(m) => m.value,
                        None => return status::NOT_FOUND,
                    }
                };
                if abi::put_u64(memory, ret_value, value as u64) {
                    status::OK
                } else {
                    status::INVALID_MEMORY_ACCESS
                }
            }))
        },
    )?;

    // ---- Properties ----
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut caller: C<'_>, path: i32, path_len: i32, ret_data: i32, ret_size: i32| -> R {
            answer(&mut caller, ret_data, ret_size, |memory, state, out| {
                let Some(path) = abi::slice(memory, path, path_len) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                match property(state, path) {
                    Some(value) => {
                        out.extend_from_slice(value);
                        status::OK
                    }
                    None => status::NOT_FOUND,
                }
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: C<'_>, path: i32, path_len: i32, value: i32, value_len: i32| -> R {
            Ok(with(&mut caller, |memory, state| {
                let (Some(path), Some(value)) = (
                    abi::slice(memory, path, path_len),
                    abi::slice(memory, value, value_len),
                ) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let context = state.context;
                state
                    .set_props
                    .retain(|(c, p, _)| !(*c == context && p == path));
                let used: usize = state
                    .set_props
                    .iter()
                    .map(|(_, p, v)| p.len() + v.len())
                    .sum();
                if used + path.len() + value.len() > MAX_SET_PROPERTY_BYTES {
                    return status::INTERNAL_FAILURE;
                }
                state
                    .set_props
                    .push((context, path.to_vec(), value.to_vec()));
                status::OK
            }))
        },
    )?;

    // ---- Foreign functions: none are registered ----
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_: C<'_>,
         _name: i32,
         _name_len: i32,
         _args: i32,
         _args_len: i32,
         _ret_data: i32,
         _ret_size: i32|
         -> R { Ok(status::NOT_FOUND) },
    )?;
    Ok(())
}

/// A buffer the current callback may read.
fn buffer_of(state: &HostState, kind: i32) -> Option<&[u8]> {
    let spec = &state.shared.spec;
    match (kind, state.phase) {
        (buffer::VM_CONFIGURATION, Phase::VmStart) => Some(&spec.vm_configuration),
        (buffer::PLUGIN_CONFIGURATION, Phase::Configure) => Some(&spec.configuration),
        _ => None,
    }
}

/// `NOT_FOUND` for a known buffer not available now, `BAD_ARGUMENT` for
/// an unknown buffer type.
fn buffer_missing(kind: i32) -> i32 {
    if (buffer::HTTP_REQUEST_BODY..=buffer::FOREIGN_FUNCTION_ARGUMENTS).contains(&kind) {
        status::NOT_FOUND
    } else {
        status::BAD_ARGUMENT
    }
}

/// A property: one the guest set for this context, the plugin's own, or
/// one the embedder gave for this callback.
fn property<'a>(state: &'a mut HostState, path: &[u8]) -> Option<&'a [u8]> {
    let context = state.context;
    if let Some(i) = state
        .set_props
        .iter()
        .position(|(c, p, _)| *c == context && p == path)
    {
        return Some(&state.set_props[i].2);
    }
    let spec = &state.shared.spec;
    match path {
        b"plugin_name" => Some(spec.name.as_bytes()),
        b"plugin_root_id" => Some(spec.root_id.as_bytes()),
        b"plugin_vm_id" => Some(spec.vm_id.as_bytes()),
        _ => state.props.get(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_import_is_defined_once() {
        let engine = wasmtime::Engine::default();
        let mut linker = Linker::new(&engine);
        add_to_linker(&mut linker).unwrap();
        let shared = std::sync::Arc::new(crate::state::Shared {
            spec: Default::default(),
            shared_data: Default::default(),
            metrics: Default::default(),
            started: std::time::Instant::now(),
        });
        let state = HostState::new(shared, Default::default());
        let defined: Vec<(String, String)> = linker
            .iter(&mut wasmtime::Store::new(&engine, state))
            .map(|(m, n, _)| (m.to_owned(), n.to_owned()))
            .collect();
        assert_eq!(defined.len(), PROVIDED.len());
        for (m, n) in PROVIDED {
            assert!(defined.iter().any(|(dm, dn)| dm == m && dn == n), "{m}.{n}");
        }
    }
}
