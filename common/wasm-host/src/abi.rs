//! Numbers and encodings of the proxy-wasm ABI 0.2.1 (proxy-wasm/spec,
//! `abi-versions/v0.2.1`): status codes, enum values, the serialized map
//! format, and guest memory access.

/// `proxy_status_t`.
pub(crate) mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// `wasi_errno_t`.
pub(crate) mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOTSUP: i32 = 58;
}

/// `proxy_action_t`.
pub(crate) const ACTION_CONTINUE: i32 = 0;
pub(crate) const ACTION_PAUSE: i32 = 1;

/// `proxy_buffer_type_t`.
pub(crate) mod buffer {
    pub const HTTP_REQUEST_BODY: i32 = 0;
    pub const FOREIGN_FUNCTION_ARGUMENTS: i32 = 8;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

/// `proxy_stream_type_t`.
pub(crate) mod stream {
    pub const HTTP_REQUEST: i32 = 0;
    pub const HTTP_RESPONSE: i32 = 1;
    pub const UPSTREAM: i32 = 3;
}

/// The map serialization: a u32 count, then (key length, value length)
/// pairs of u32, then each key and value followed by a NUL; little endian.
/// An empty map is written as nothing.
pub(crate) fn serialize_pairs<'a>(
    out: &mut Vec<u8>,
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
) {
    out.clear();
    let count = pairs.clone().count();
    if count == 0 {
        return;
    }
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
}

/// The size [`serialize_pairs`] would write.
pub(crate) fn serialized_size<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> usize {
    let mut count = 0;
    let mut size = 4;
    for (k, v) in pairs {
        count += 1;
        size += 8 + k.len() + v.len() + 2;
    }
    if count == 0 {
        0
    } else {
        size
    }
}

/// Reads a serialized map; `None` when malformed. Empty input and a single
/// NUL byte are the empty map, as the specification allows.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() || bytes == [0] {
        return Some(Vec::new());
    }
    let count = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let lengths_end = count.checked_mul(8)?.checked_add(4)?;
    let lengths = bytes.get(4..lengths_end)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    let mut at = lengths_end;
    for entry in lengths.chunks_exact(8) {
        let k = u32::from_le_bytes(entry[0..4].try_into().ok()?) as usize;
        let v = u32::from_le_bytes(entry[4..8].try_into().ok()?) as usize;
        let key = bytes.get(at..at.checked_add(k)?)?;
        at += k;
        if bytes.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        let value = bytes.get(at..at.checked_add(v)?)?;
        at += v;
        if bytes.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        pairs.push((key, value));
    }
    Some(pairs)
}

/// `len` bytes of guest memory at `ptr`, if in bounds.
pub(crate) fn slice(memory: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let start = ptr as u32 as usize;
    memory.get(start..start.checked_add(len as u32 as usize)?)
}

/// Writes `value` at `ptr` (little endian); `false` when out of bounds.
pub(crate) fn put_u32(memory: &mut [u8], ptr: i32, value: u32) -> bool {
    put(memory, ptr, &value.to_le_bytes())
}

pub(crate) fn put_u64(memory: &mut [u8], ptr: i32, value: u64) -> bool {
    put(memory, ptr, &value.to_le_bytes())
}

pub(crate) fn put(memory: &mut [u8], ptr: i32, bytes: &[u8]) -> bool {
    let start = ptr as u32 as usize;
    match start
        .checked_add(bytes.len())
        .and_then(|end| memory.get_mut(start..end))
    {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// A header name a filter may write: an RFC 9110 token.
pub(crate) fn is_header_name(name: &[u8]) -> bool {
    header_policy::is_token_bytes(name)
}

/// A header value a filter may write: no control characters but tab
/// (so no CR, LF or NUL); obs-text passes.
pub(crate) fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_in_the_spec_layout() {
        let mut out = Vec::new();
        let pairs: [(&[u8], &[u8]); 2] = [(b"a", b"1"), (b"b", b"22")];
        serialize_pairs(&mut out, pairs.iter().copied());
        // The specification's example: {{"a": "1"}, {"b": "22"}}.
        let want: Vec<u8> = [
            &2u32.to_le_bytes()[..],
            &1u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            b"a\x001\x00b\x0022\x00",
        ]
        .concat();
        assert_eq!(out, want);
        assert_eq!(serialized_size(pairs.iter().copied()), out.len());
        assert_eq!(deserialize_pairs(&out).unwrap(), pairs);
        serialize_pairs(&mut out, std::iter::empty());
        assert!(out.is_empty());
        assert_eq!(deserialize_pairs(&[0]).unwrap(), []);
    }

    #[test]
    fn malformed_maps_are_refused() {
        let mut good = Vec::new();
        serialize_pairs(&mut good, [(&b"k"[..], &b"v"[..])].into_iter());
        for cut in 1..good.len() {
            assert!(deserialize_pairs(&good[..cut]).is_none(), "{cut}");
        }
        let mut no_nul = good.clone();
        no_nul[13] = b'x';
        assert!(deserialize_pairs(&no_nul).is_none());
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0];
        assert!(deserialize_pairs(&huge).is_none());
    }

    #[test]
    fn memory_bounds() {
        let mut mem = vec![0u8; 16];
        assert_eq!(slice(&mem, 12, 4), Some(&[0u8; 4][..]));
        assert_eq!(slice(&mem, 13, 4), None);
        assert_eq!(slice(&mem, -1, 1), None);
        assert!(put_u32(&mut mem, 12, 7) && !put_u32(&mut mem, 13, 7));
        assert!(!put_u64(&mut mem, i32::MAX, 1));
    }
}
