//! The host's header maps and properties, read with one allocation each.
//!
//! The SDK's helpers copy every header into its own `String` and `Vec`; a
//! request then costs the filter a hundred allocations, its largest cost.
//! Here a map is read as the one serialized buffer the host hands over,
//! parsed in place, and edits are appended to that buffer.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

#[allow(unsafe_code)]
mod ffi {
    use std::ptr::null_mut;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
    }

    /// Takes ownership of a buffer the host returned.
    fn owned(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
        if status != 0 || data.is_null() {
            return None;
        }
        // SAFETY: the host allocated `size` bytes at `data` through this
        // module's allocator export (`malloc` / `proxy_on_memory_allocate`,
        // a boxed slice of exactly `size` bytes), filled them, and gave up
        // ownership, as the ABI specifies; the SDK takes such buffers the
        // same way.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }

    /// The serialized map `map_type`.
    pub fn map(map_type: u32) -> Option<Vec<u8>> {
        let (mut data, mut size) = (null_mut(), 0);
        // SAFETY: both out-pointers point at live locals.
        let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
        owned(status, data, size)
    }

    /// The property at `path` (segments separated by NUL).
    pub fn property(path: &[u8]) -> Option<Vec<u8>> {
        let (mut data, mut size) = (null_mut(), 0);
        // SAFETY: `path` is a live slice; the out-pointers point at locals.
        let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        owned(status, data, size)
    }
}

/// A string property (`path` with NUL-separated segments).
pub fn property(path: &[u8]) -> Option<String> {
    ffi::property(path).and_then(|v| String::from_utf8(v).ok())
}

#[derive(Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
    live: bool,
}

/// One of the host's maps: its serialized form, parsed in place, kept in
/// step with the edits sent to the host (single-header calls, so nothing
/// else in the host's map moves).
pub struct HostHeaders {
    map: MapType,
    buf: Vec<u8>,
    fields: Vec<Field>,
}

impl HostHeaders {
    pub fn read(map: MapType) -> Self {
        let buf = ffi::map(map as u32).unwrap_or_default();
        let mut h = HostHeaders {
            map,
            buf,
            fields: Vec::new(),
        };
        h.parse();
        h
    }

    /// The layout: a u32 count, (name, value) length pairs, then each name
    /// and value followed by NUL. A malformed map reads as empty.
    fn parse(&mut self) {
        let buf = &mut self.buf;
        let word = |b: &[u8], at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        let Some(count) = word(buf, 0) else { return };
        let mut at = 4 + count as usize * 8;
        let mut fields = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let (Some(n), Some(v)) = (word(buf, 4 + i * 8), word(buf, 8 + i * 8)) else {
                return;
            };
            let name = (at as u32, n);
            at += n as usize + 1;
            let value = (at as u32, v);
            at += v as usize + 1;
            if at > buf.len() {
                return;
            }
            fields.push(Field {
                name,
                value,
                live: true,
            });
        }
        for f in &fields {
            buf[range(f.name)].make_ascii_lowercase();
        }
        self.fields = fields;
    }

    fn bytes(&self, r: (u32, u32)) -> &[u8] {
        &self.buf[range(r)]
    }

    fn name(&self, f: &Field) -> &str {
        std::str::from_utf8(self.bytes(f.name)).unwrap_or_default()
    }

    fn push(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(bytes);
        (start, bytes.len() as u32)
    }

    fn kill(&mut self, name: &str) {
        for i in 0..self.fields.len() {
            if self.fields[i].live && self.bytes(self.fields[i].name) == name.as_bytes() {
                self.fields[i].live = false;
            }
        }
    }

    fn add(&mut self, name: &str, value: &[u8]) {
        let name = self.push(name.as_bytes());
        let value = self.push(value);
        self.fields.push(Field {
            name,
            value,
            live: true,
        });
    }
}

fn range((start, len): (u32, u32)) -> std::ops::Range<usize> {
    start as usize..(start + len) as usize
}

impl header_policy::Headers for HostHeaders {
    fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.fields
            .iter()
            .filter(move |f| f.live && self.bytes(f.name) == name.as_bytes())
            .map(|f| self.bytes(f.value))
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .filter(|f| f.live)
            .map(|f| (self.name(f), self.bytes(f.value)))
    }

    fn set(&mut self, name: &str, value: &[u8]) {
        // Replace: every value removed, one added (Envoy 1.2x+ and the
        // edge's host alike).
        self.kill(name);
        self.add(name, value);
        let _ = hostcalls::set_map_value_bytes(self.map, name, Some(value));
    }

    fn append(&mut self, name: &str, value: &[u8]) {
        self.add(name, value);
        let _ = hostcalls::add_map_value_bytes(self.map, name, value);
    }

    fn remove(&mut self, name: &str) {
        self.kill(name);
        let _ = hostcalls::remove_map_value(self.map, name);
    }
}
