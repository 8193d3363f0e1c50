//! GGML tensor types and their dequantisation to `f32`.
//!
//! Block layouts follow the GGUF/ggml format: each quantised type stores `block` values in
//! `bytes` bytes, with per-block (and for K-quants per-sub-block) scales as IEEE half floats.

use half::f16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error(
        "tensor type {0} is not supported (supported: F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)"
    )]
    Unsupported(u32),
    #[error("{elements} elements are not a whole number of {block}-value blocks")]
    Ragged { elements: u64, block: usize },
    #[error("{0} elements are more than any file can hold")]
    TooLarge(u64),
    #[error("{have} bytes for {elements} elements of {ty:?} (need {need})")]
    Size {
        ty: TensorType,
        elements: u64,
        have: usize,
        need: u64,
    },
}

impl TensorType {
    /// From the ggml type id stored in a GGUF tensor record.
    pub fn from_id(id: u32) -> Result<TensorType, QuantError> {
        Ok(match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            8 => TensorType::Q8_0,
            12 => TensorType::Q4K,
            14 => TensorType::Q6K,
            other => return Err(QuantError::Unsupported(other)),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q4_1 => "Q4_1",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Q4K => "Q4_K",
            TensorType::Q6K => "Q6_K",
        }
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 => (1, 2),
            TensorType::Q4_0 => (32, 18),
            TensorType::Q4_1 => (32, 20),
            TensorType::Q8_0 => (32, 34),
            TensorType::Q4K => (256, 144),
            TensorType::Q6K => (256, 210),
        }
    }

    /// Bytes taken by `elements` values.
    pub fn size_of(self, elements: u64) -> Result<u64, QuantError> {
        let (block, bytes) = self.block();
        if !elements.is_multiple_of(block as u64) {
            return Err(QuantError::Ragged { elements, block });
        }
        (elements / block as u64)
            .checked_mul(bytes as u64)
            .ok_or(QuantError::TooLarge(elements))
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantises `data` (exactly `elements` values of `ty`) into `out`.
pub fn dequantize(
    ty: TensorType,
    data: &[u8],
    elements: u64,
    out: &mut Vec<f32>,
) -> Result<(), QuantError> {
    let need = ty.size_of(elements)?;
    if data.len() as u64 != need {
        return Err(QuantError::Size {
            ty,
            elements,
            have: data.len(),
            need,
        });
    }
    out.reserve(elements as usize);
    let (_, bytes) = ty.block();
    for b in data.chunks_exact(bytes) {
        match ty {
            TensorType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            TensorType::F16 => out.push(half(b, 0)),
            TensorType::Q4_0 => nibbles(&b[2..18], half(b, 0), -8.0 * half(b, 0), out),
            TensorType::Q4_1 => nibbles(&b[4..20], half(b, 0), half(b, 2), out),
            TensorType::Q8_0 => {
                let d = half(b, 0);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
            TensorType::Q4K => q4_k(b, out),
            TensorType::Q6K => q6_k(b, out),
        }
    }
    Ok(())
}

/// 32 four-bit values: the low nibbles are values 0..16, the high nibbles 16..32;
/// each is `q * scale + offset`.
fn nibbles(qs: &[u8], scale: f32, offset: f32, out: &mut Vec<f32>) {
    out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * scale + offset));
    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * scale + offset));
}

/// The 6-bit scale and minimum of sub-block `j` (0..8), packed into 12 bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

/// Q4_K: 8 sub-blocks of 32, each `d·sc·q − dmin·m` with 6-bit `sc` and `m`.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        out.extend(q.iter().map(|&x| d1 * f32::from(x & 0x0F) - min1));
        out.extend(q.iter().map(|&x| d2 * f32::from(x >> 4) - min2));
    }
}

/// Q6_K: 16 sub-blocks of 16 with signed 8-bit scales; each value has 4 low bits in `ql` and 2
/// high bits in `qh`, offset by 32.
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for half_block in 0..2 {
        let ql = &ql[64 * half_block..64 * half_block + 64];
        let qh = &qh[32 * half_block..32 * half_block + 32];
        let sc = &sc[8 * half_block..8 * half_block + 8];
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q =
                |low: u8, shift: u8| f32::from((low | (((qh[l] >> shift) & 3) << 4)) as i8 - 32);
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = s(0) * q(ql[l] & 0x0F, 0);
            y[l + 32] = s(2) * q(ql[l + 32] & 0x0F, 2);
            y[l + 64] = s(4) * q(ql[l] >> 4, 4);
            y[l + 96] = s(6) * q(ql[l + 32] >> 4, 6);
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_by_hand() {
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        block.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let mut out = Vec::new();
        dequantize(TensorType::Q4_1, &block, 32, &mut out).unwrap();
        assert_eq!(out[0], -1.0);
        assert_eq!(out[15], 6.5);
        assert_eq!(out[16], 6.5);
        assert_eq!(out[31], -1.0);
    }

    #[test]
    fn sizes_are_checked() {
        let mut out = Vec::new();
        assert!(matches!(
            dequantize(TensorType::Q8_0, &[0; 33], 32, &mut out),
            Err(QuantError::Size { .. })
        ));
        assert!(matches!(
            TensorType::Q4K.size_of(100),
            Err(QuantError::Ragged { .. })
        ));
        assert_eq!(TensorType::from_id(6), Err(QuantError::Unsupported(6)));
    }
}
