//! XXH64, the checksum of bulk block transfers: fast (several GB/s on one core), streaming,
//! and a published algorithm with published test vectors.
//!
//! TLS already protects bytes on the wire; the checksum guards the path around it, end to end:
//! a block buffer reused while in flight, an offset mix-up, memory corruption.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

const STRIPE: usize = 32;

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge(acc: u64, lane: u64) -> u64 {
    (acc ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P4)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// A streaming XXH64 hasher: `update` with any split of the input gives the same digest.
#[derive(Debug, Clone)]
pub struct Xxh64 {
    seed: u64,
    lanes: [u64; 4],
    /// Bytes of an incomplete stripe.
    tail: [u8; STRIPE],
    tail_len: usize,
    total: u64,
}

impl Default for Xxh64 {
    fn default() -> Self {
        Self::with_seed(0)
    }
}

impl Xxh64 {
    pub fn with_seed(seed: u64) -> Self {
        Xxh64 {
            seed,
            lanes: [
                seed.wrapping_add(P1).wrapping_add(P2),
                seed.wrapping_add(P2),
                seed,
                seed.wrapping_sub(P1),
            ],
            tail: [0; STRIPE],
            tail_len: 0,
            total: 0,
        }
    }

    fn stripe(lanes: &mut [u64; 4], s: &[u8]) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = round(*lane, u64_at(s, i * 8));
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.tail_len > 0 {
            let take = (STRIPE - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < STRIPE {
                return;
            }
            let tail = self.tail;
            Self::stripe(&mut self.lanes, &tail);
            self.tail_len = 0;
        }
        let mut stripes = data.chunks_exact(STRIPE);
        for s in &mut stripes {
            Self::stripe(&mut self.lanes, s);
        }
        let rest = stripes.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    pub fn digest(&self) -> u64 {
        let [v1, v2, v3, v4] = self.lanes;
        let mut h = if self.total >= STRIPE as u64 {
            let h = v1
                .rotate_left(1)
                .wrapping_add(v2.rotate_left(7))
                .wrapping_add(v3.rotate_left(12))
                .wrapping_add(v4.rotate_left(18));
            [v1, v2, v3, v4].into_iter().fold(h, merge)
        } else {
            self.seed.wrapping_add(P5)
        };
        h = h.wrapping_add(self.total);
        let rest = &self.tail[..self.tail_len];
        let mut at = 0;
        while at + 8 <= rest.len() {
            h ^= round(0, u64_at(rest, at));
            h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
            at += 8;
        }
        if at + 4 <= rest.len() {
            let mut w = [0u8; 4];
            w.copy_from_slice(&rest[at..at + 4]);
            h ^= u64::from(u32::from_le_bytes(w)).wrapping_mul(P1);
            h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            at += 4;
        }
        for &b in &rest[at..] {
            h ^= u64::from(b).wrapping_mul(P5);
            h = h.rotate_left(11).wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }
}

/// XXH64 of `data` with seed 0.
pub fn xxh64(data: &[u8]) -> u64 {
    let mut h = Xxh64::default();
    h.update(data);
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_vectors() {
        assert_eq!(xxh64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc"), 0x44BC_2CF5_AD77_0999);
        assert_eq!(xxh64(b"Hello, World!"), 0xC49A_ACF8_080F_E47F);
        assert_eq!(
            xxh64(b"12345678901234567890123456789012"),
            0x40FD_1AA5_2D98_274C
        );
        assert_eq!(
            xxh64(b"The quick brown fox jumps over the lazy dog"),
            0x0B24_2D36_1FDA_71BC
        );
        let mut h = Xxh64::with_seed(42);
        h.update(b"Hello, World!");
        assert_eq!(h.digest(), 0xC2E0_FE28_B251_2846);
    }

    #[test]
    fn any_split_gives_the_one_shot_digest() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 5, 31, 32, 33, 64, 95, 300, 1000] {
            let whole = xxh64(&data[..len]);
            for step in [1, 3, 8, 31, 32, 33, 100] {
                let mut h = Xxh64::default();
                for part in data[..len].chunks(step) {
                    h.update(part);
                }
                assert_eq!(h.digest(), whole, "len {len} step {step}");
            }
        }
    }
}
