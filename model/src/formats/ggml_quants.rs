//! ggml tensor types (llama.cpp's block formats): dequantization to f32 of
//! F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q2_K, Q3_K,
//! Q4_K, Q5_K, Q6_K; quantization of Q8_0 (and rounding to F16 / BF16) for
//! the writer.
//!
//! Reference: ggml `ggml-common.h` (the `block_*` structs) and
//! `ggml-quants.c` (`dequantize_row_*`, `quantize_row_q8_0_ref`), and the
//! `gguf` Python package's `quants.py`, which transformers uses to load GGUF
//! files. Each dequantizer computes the same f32 operations in the same
//! order as `quants.py` (one product, one sum, no fused multiply-add), so the
//! values are bit-identical to the Python package's (tests/gguf.rs checks
//! every type against its output).
//!
//! Layout of one block, bytes in order (QK_K = 256):
//!
//! | type | elems | bytes | fields |
//! |---|---|---|---|
//! | Q4_0 | 32 | 18 | `d f16, qs[16] (low nibbles: 0..16, high: 16..32)` |
//! | Q4_1 | 32 | 20 | `d f16, m f16, qs[16]` |
//! | Q5_0 | 32 | 22 | `d f16, qh u32 (bit j = 5th bit of element j), qs[16]` |
//! | Q5_1 | 32 | 24 | `d f16, m f16, qh u32, qs[16]` |
//! | Q8_0 | 32 | 34 | `d f16, qs[32] i8` |
//! | Q2_K | 256 | 84 | `scales[16] (lo: scale, hi: min), qs[64], d f16, dmin f16` |
//! | Q3_K | 256 | 110 | `hmask[32], qs[64], scales[12] (6-bit, packed), d f16` |
//! | Q4_K | 256 | 144 | `d f16, dmin f16, scales[12] (6-bit scale and min per 32), qs[128]` |
//! | Q5_K | 256 | 176 | `d f16, dmin f16, scales[12], qh[32], qs[128]` |
//! | Q6_K | 256 | 210 | `ql[128], qh[64], scales[16] i8, d f16` |
//!
//! Public items: [`GgmlType`], [`dequantize`], [`quantize`], [`type_name`].

/// The ggml tensor types this module reads (codes as in ggml's `ggml_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

/// Super-block size of the K-quants.
pub const QK_K: usize = 256;

/// Every ggml type code with its name (for messages about types we do not
/// read), from ggml.h `enum ggml_type`.
const TYPE_NAMES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// The ggml name of a type code ("type 99" if unknown).
pub fn type_name(code: u32) -> String {
    TYPE_NAMES.iter().find(|t| t.0 == code).map_or_else(|| format!("type {code}"), |t| t.1.to_string())
}

impl GgmlType {
    pub const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    pub fn code(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    pub fn from_code(c: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.code() == c)
    }

    pub fn name(self) -> String {
        type_name(self.code())
    }

    /// Parses a name as ggml writes it ("q8_0", "Q4_K", "bf16").
    pub fn from_name(s: &str) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// Bytes of `n` elements (None if `n` is not a whole number of blocks).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let be = self.block_elems() as u64;
        n.is_multiple_of(be).then(|| n / be).and_then(|b| b.checked_mul(self.block_bytes() as u64))
    }
}

fn f16(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `src` (whole blocks of type `ty`) into `dst`; `dst.len()`
/// elements are written and `src` must hold exactly their bytes (the caller
/// checks sizes; a mismatch is a broken invariant and returns `Err`).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    if !dst.len().is_multiple_of(be) || src.len() != dst.len() / be * bb {
        return Err(format!("{} bytes for {} elements of {}", src.len(), dst.len(), ty.name()));
    }
    use rayon::prelude::*;
    // blocks in parallel chunks; each block is independent
    const CHUNK_BLOCKS: usize = 1024;
    src.par_chunks(bb * CHUNK_BLOCKS).zip(dst.par_chunks_mut(be * CHUNK_BLOCKS)).for_each(|(s, d)| {
        for (b, y) in s.chunks_exact(bb).zip(d.chunks_exact_mut(be)) {
            dequant_block(ty, b, y);
        }
    });
    Ok(())
}

/// One block (`b`: its bytes, `y`: its elements).
fn dequant_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => y[0] = f16(b, 0),
        GgmlType::BF16 => y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        GgmlType::Q4_0 => {
            let d = f16(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16(b, 0), f16(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                y[j] = d * (q & 0x0F) as f32 + m;
                y[j + 16] = d * (q >> 4) as f32 + m;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (d, m, off) = if ty == GgmlType::Q5_0 { (f16(b, 0), 0.0, 2) } else { (f16(b, 0), f16(b, 2), 4) };
            let qh = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
            let qs = &b[off + 4..off + 20];
            for j in 0..32 {
                let lo = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
                let q = (lo | ((((qh >> j) & 1) as u8) << 4)) as i32;
                y[j] = if ty == GgmlType::Q5_0 { d * (q - 16) as f32 } else { d * q as f32 + m };
            }
        }
        GgmlType::Q8_0 => {
            let d = f16(b, 0);
            for j in 0..32 {
                y[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
        GgmlType::Q2K => {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let (d, dmin) = (f16(b, 80), f16(b, 82));
            for (e, x) in y.iter_mut().enumerate() {
                // e = chunk*128 + shift*32 + l over qs[chunk*32 + l] >> 2*shift
                let (chunk, s, l) = (e / 128, (e / 32) % 4, e % 32);
                let q = (qs[chunk * 32 + l] >> (2 * s)) & 3;
                let sc = scales[e / 16];
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                *x = dl * q as f32 - ml;
            }
        }
        GgmlType::Q3K => {
            let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
            let d = f16(b, 108);
            let mut scale = [0f32; 16];
            for (i, s) in scale.iter_mut().enumerate() {
                let lo = (sc[i % 8] >> (4 * (i / 8))) & 0x0F;
                let hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 0x03;
                *s = d * (((lo | (hi << 4)) as i8).wrapping_sub(32)) as f32;
            }
            for (e, x) in y.iter_mut().enumerate() {
                let (chunk, s, l) = (e / 128, (e / 32) % 4, e % 32);
                let ql = ((qs[chunk * 32 + l] >> (2 * s)) & 3) as i8;
                // the high bit is stored inverted: a set bit means no offset
                let h = ((hmask[e % 32] >> (e / 32)) & 1) ^ 1;
                let q = ql - ((h << 2) as i8);
                *x = scale[e / 16] * q as f32;
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin) = (f16(b, 0), f16(b, 2));
            let (sc, rest) = (&b[4..16], &b[16..]);
            let (qh, qs) = if ty == GgmlType::Q5K { (Some(&rest[0..32]), &rest[32..160]) } else { (None, &rest[0..128]) };
            let (scs, mins) = k_scale_min(sc);
            for sub in 0..8 {
                let dl = d * scs[sub] as f32;
                let ml = dmin * mins[sub] as f32;
                let (chunk, half) = (sub / 2, sub % 2);
                for l in 0..32 {
                    let e = sub * 32 + l;
                    let mut q = (qs[chunk * 32 + l] >> (4 * half)) & 0x0F;
                    if let Some(qh) = qh {
                        q |= ((qh[l] >> sub) & 1) << 4;
                    }
                    y[e] = dl * q as f32 - ml;
                }
            }
        }
        GgmlType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16(b, 208);
            for (e, x) in y.iter_mut().enumerate() {
                let (chunk, r) = (e / 128, e % 128);
                let lo = (ql[chunk * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
                let hi = (qh[chunk * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
                let q = ((lo | (hi << 4)) as i8).wrapping_sub(32);
                let dl = d * (sc[e / 16] as i8) as f32;
                *x = dl * q as f32;
            }
        }
    }
}

/// The eight 6-bit scales and mins of a Q4_K / Q5_K block (ggml
/// `get_scale_min_k4`).
fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        m[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, m)
}

/// Encodes `src` as type `ty` for writing: F32 as is, F16 and BF16 rounded
/// to nearest even (ggml `ggml_compute_fp32_to_bf16`: NaN kept quiet), Q8_0
/// as ggml's `quantize_row_q8_0_ref` (d = max|x| / 127, q = roundf(x / d)).
/// Other types are not written (Err).
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, String> {
    let mut out =
        Vec::with_capacity(ty.bytes_for(src.len() as u64).ok_or_else(|| format!("{} values are not whole {} blocks", src.len(), ty.name()))? as usize);
    match ty {
        GgmlType::F32 => src.iter().for_each(|x| out.extend(x.to_le_bytes())),
        GgmlType::F16 => src.iter().for_each(|&x| out.extend(half::f16::from_f32(x).to_le_bytes())),
        GgmlType::BF16 => src.iter().for_each(|&x| {
            let n = x.to_bits();
            let b = if (n & 0x7fff_ffff) > 0x7f80_0000 { (n >> 16) | 64 } else { ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u32 };
            out.extend((b as u16).to_le_bytes());
        }),
        GgmlType::Q8_0 => {
            for blk in src.chunks_exact(32) {
                let amax = blk.iter().fold(0f32, |a, &x| a.max(x.abs()));
                let d = amax / 127.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.extend(half::f16::from_f32(d).to_le_bytes());
                out.extend(blk.iter().map(|&x| ((x * id).round() as i8) as u8));
            }
        }
        other => return Err(format!("writing {} is not supported (F32, F16, BF16, Q8_0)", other.name())),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        // ggml-common.h static_asserts: sizeof(block_q4_K) == 2*2 + 12 + QK_K/2, ...
        assert_eq!(GgmlType::Q4K.block_bytes(), 4 + 12 + QK_K / 2);
        assert_eq!(GgmlType::Q5K.block_bytes(), 4 + 12 + QK_K / 8 + QK_K / 2);
        assert_eq!(GgmlType::Q6K.block_bytes(), 2 + QK_K / 16 + 3 * QK_K / 4);
        assert_eq!(GgmlType::Q3K.block_bytes(), 2 + QK_K / 4 + QK_K / 8 + 12);
        assert_eq!(GgmlType::Q2K.block_bytes(), 4 + QK_K / 16 + QK_K / 4);
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_code(t.code()), Some(t));
            assert_eq!(GgmlType::from_name(&t.name().to_lowercase()), Some(t));
        }
        assert_eq!(type_name(16), "IQ2_XXS");
    }

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 31.5) / 7.0).collect();
        let q = quantize(GgmlType::Q8_0, &x).unwrap();
        let mut y = vec![0f32; 64];
        dequantize(GgmlType::Q8_0, &q, &mut y).unwrap();
        for (blk_x, blk_y) in x.chunks(32).zip(y.chunks(32)) {
            let d = blk_x.iter().fold(0f32, |a, &v| a.max(v.abs())) / 127.0;
            // half a step, plus the f16 rounding of d (2^-11 relative) times 127 steps
            let tol = d * (0.5 + 127.0 / 2048.0);
            for (a, b) in blk_x.iter().zip(blk_y) {
                assert!((a - b).abs() <= tol, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan() {
        let q = quantize(GgmlType::BF16, &[1.0 + 1.0 / 256.0, f32::NAN, -2.5]).unwrap();
        let mut y = [0f32; 3];
        dequantize(GgmlType::BF16, &q, &mut y).unwrap();
        assert_eq!(y[0], 1.0); // tie to even
        assert!(y[1].is_nan());
        assert_eq!(y[2], -2.5);
    }
}
