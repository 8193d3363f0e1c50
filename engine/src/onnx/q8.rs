//! 8-bit block quantisation for ONNX Runtime's `MatMulNBits` (`--weights keep`).

/// Values per quantisation block (`MatMulNBits`' `block_size`).
pub const QBLOCK: usize = 32;

/// 8-bit blocks of `w` (`[out, in]`) along `in`, as `MatMulNBits` reads them.
pub struct Q8 {
    /// `[out, blocks, 32]` codes.
    pub codes: Vec<u8>,
    /// `[out · blocks]`.
    pub scales: Vec<f32>,
    /// `[out · blocks]`.
    pub zero_points: Vec<u8>,
}

/// Asymmetric 8-bit quantisation per block of 32: the block's range, widened to hold 0, in 255
/// steps; a value is `(code − zero_point) · scale`. A final short block is padded with zeros.
/// A GGUF 4- to 6-bit block lands on this grid within half a step (under 1/500 of its range).
pub fn quantize_q8(w: &[f32], out: usize, inn: usize) -> Q8 {
    let blocks = inn.div_ceil(QBLOCK);
    let mut q = Q8 {
        codes: vec![0; out * blocks * QBLOCK],
        scales: vec![0.0; out * blocks],
        zero_points: vec![0; out * blocks],
    };
    for r in 0..out {
        let row = &w[r * inn..(r + 1) * inn];
        for b in 0..blocks {
            let vals = &row[b * QBLOCK..((b + 1) * QBLOCK).min(inn)];
            let lo = vals.iter().fold(0f32, |m, v| m.min(*v));
            let hi = vals.iter().fold(0f32, |m, v| m.max(*v));
            let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
            let zp = (-lo / scale).round().clamp(0.0, 255.0);
            let at = r * blocks + b;
            q.scales[at] = scale;
            q.zero_points[at] = zp as u8;
            for (i, v) in vals.iter().enumerate() {
                q.codes[at * QBLOCK + i] = ((v / scale).round() + zp).clamp(0.0, 255.0) as u8;
            }
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_blocks_round_trip_within_half_a_step() {
        // Two rows of 40 (a full block and a short one), values of both signs.
        let w: Vec<f32> = (0..80)
            .map(|i| ((i * 37 % 23) as f32 - 9.0) * 0.1)
            .collect();
        let q = quantize_q8(&w, 2, 40);
        assert_eq!(
            (q.codes.len(), q.scales.len(), q.zero_points.len()),
            (2 * 2 * 32, 4, 4)
        );
        for r in 0..2 {
            for i in 0..40 {
                let at = r * 2 + i / QBLOCK;
                let code = q.codes[at * QBLOCK + i % QBLOCK];
                let (scale, zp) = (q.scales[at], q.zero_points[at]);
                let back = (f32::from(code) - f32::from(zp)) * scale;
                assert!(
                    (back - w[r * 40 + i]).abs() <= scale / 2.0 + 1e-6,
                    "{r} {i}"
                );
            }
        }
        // A block of zeros stays zero.
        let q = quantize_q8(&[0.0; 32], 1, 32);
        assert_eq!((q.codes, q.zero_points), (vec![0; 32], vec![0]));
    }
}
