//! The host's header maps and properties, read with one allocation each.
//!
//! The SDK's helpers copy every header into its own `String` and `Vec`; a
//! request then costs the filter a hundred allocations, its largest cost.
//! Here a map is read as the one serialized buffer the host hands over and
//! parsed in place; the names, and what the filter adds, go to buffers
//! reused from one map to the next.

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
    /// In `names`.
    name: (u32, u32),
    /// In the host's buffer, or in `added` for a field the filter added.
    value: (u32, u32),
    added: bool,
    live: bool,
}

/// One of the host's maps: its serialized form, parsed in place (names
/// copied out once, lowercased and checked as text together), kept in step
/// with the edits sent to the host (single-header calls, so nothing else
/// in the host's map moves).
pub struct HostHeaders {
    map: MapType,
    buf: Vec<u8>,
    parsed: Parsed,
}

/// Room for the fields, names and values a policy adds, so that its edits
/// do not grow the buffers.
const ROOM_FIELDS: usize = 8;
const ROOM_BYTES: usize = 256;

/// A map's fields, their names and the values the filter added. Kept,
/// emptied, from one map to the next: a request's maps then allocate
/// nothing but the host's serialized copy.
#[derive(Default)]
struct Parsed {
    fields: Vec<Field>,
    names: String,
    added: Vec<u8>,
}

thread_local! {
    static SPARE: std::cell::RefCell<Option<Parsed>> = const { std::cell::RefCell::new(None) };
}

impl HostHeaders {
    pub fn read(map: MapType) -> Self {
        let buf = ffi::map(map as u32).unwrap_or_default();
        let parsed = SPARE.with(|s| s.borrow_mut().take()).unwrap_or_default();
        let mut h = HostHeaders { map, buf, parsed };
        h.parse();
        h
    }

    /// The layout: a u32 count, (name, value) length pairs, then each name
    /// and value followed by NUL. A malformed map reads as empty.
    fn parse(&mut self) {
        let buf = &self.buf;
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
        };
        let Some(count) = word(0) else { return };
        let count = count as usize;
        let mut names = std::mem::take(&mut self.parsed.names).into_bytes();
        // A field takes ten bytes at least: a bogus count reserves no more.
        self.parsed
            .fields
            .reserve(count.min(buf.len() / 10) + ROOM_FIELDS);
        let mut at = 4usize.saturating_add(count.saturating_mul(8));
        for i in 0..count {
            let (Some(n), Some(v)) = (word(4 + i * 8), word(8 + i * 8)) else {
                self.parsed.fields.clear();
                break;
            };
            let (n, v) = (n as usize, v as usize);
            let value_at = at.saturating_add(n).saturating_add(1);
            let (name, end) = (
                at..at.saturating_add(n),
                value_at.saturating_add(v).saturating_add(1),
            );
            if end > buf.len() {
                self.parsed.fields.clear();
                break;
            }
            at = end;
            let name = &buf[name];
            let start = names.len() as u32;
            names.extend_from_slice(name);
            self.parsed.fields.push(Field {
                name: (start, n as u32),
                value: (value_at as u32, v as u32),
                added: false,
                live: true,
            });
        }
        names.reserve(ROOM_BYTES);
        self.parsed.added.reserve(ROOM_BYTES);
        match String::from_utf8(names) {
            Ok(mut text) => {
                text.make_ascii_lowercase();
                self.parsed.names = text;
            }
            // No host sends a name that is not a token.
            Err(_) => self.parsed.fields.clear(),
        }
    }

    fn name(&self, f: &Field) -> &str {
        self.parsed.names.get(range(f.name)).unwrap_or_default()
    }

    fn value(&self, f: &Field) -> &[u8] {
        if f.added {
            &self.parsed.added[range(f.value)]
        } else {
            &self.buf[range(f.value)]
        }
    }

    fn kill(&mut self, name: &str) {
        for i in 0..self.parsed.fields.len() {
            let f = self.parsed.fields[i];
            if f.live && self.name(&f) == name {
                self.parsed.fields[i].live = false;
            }
        }
    }

    fn add(&mut self, name: &str, value: &[u8]) {
        let name_at = (self.parsed.names.len() as u32, name.len() as u32);
        self.parsed.names.push_str(name);
        let value_at = (self.parsed.added.len() as u32, value.len() as u32);
        self.parsed.added.extend_from_slice(value);
        self.parsed.fields.push(Field {
            name: name_at,
            value: value_at,
            added: true,
            live: true,
        });
    }
}

impl Drop for HostHeaders {
    fn drop(&mut self) {
        let mut spare = std::mem::take(&mut self.parsed);
        spare.fields.clear();
        spare.names.clear();
        spare.added.clear();
        SPARE.with(|s| *s.borrow_mut() = Some(spare));
    }
}

fn range((start, len): (u32, u32)) -> std::ops::Range<usize> {
    start as usize..(start + len) as usize
}

impl header_policy::Headers for HostHeaders {
    fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.parsed
            .fields
            .iter()
            .filter(move |f| f.live && self.name(f) == name)
            .map(|f| self.value(f))
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.parsed
            .fields
            .iter()
            .filter(|f| f.live)
            .map(|f| (self.name(f), self.value(f)))
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
