//! Deterministic test payloads: any length, cheap to generate, every 64 KiB
//! block distinct (so lost, repeated or reordered chunks change the hash).

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

pub const BLOCK: usize = 64 * 1024;

fn base_block() -> &'static [u8] {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

/// Block `index` of the pattern.
pub fn block(index: u64) -> Bytes {
    let mut b = BytesMut::from(base_block());
    b[..8].copy_from_slice(&index.to_le_bytes());
    b.freeze()
}

/// The first `len` bytes of the pattern, as chunks of at most [`BLOCK`].
pub fn chunks(len: u64) -> impl Iterator<Item = Bytes> {
    let blocks = len.div_ceil(BLOCK as u64);
    (0..blocks).map(move |i| {
        let b = block(i);
        let remaining = len - i * BLOCK as u64;
        if remaining < BLOCK as u64 {
            b.slice(..remaining as usize)
        } else {
            b
        }
    })
}

/// Hex SHA-256 of the first `len` bytes of the pattern.
pub fn sha256(len: u64) -> String {
    let mut h = Sha256::new();
    for c in chunks(len) {
        h.update(&c);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_hashes_are_consistent() {
        let total: usize = chunks(200_000).map(|c| c.len()).sum();
        assert_eq!(total, 200_000);
        assert_ne!(sha256(BLOCK as u64 * 2), sha256(BLOCK as u64 * 2 - 1));
        assert_ne!(block(0), block(1));
    }
}
