//! Building an ONNX graph: nodes with generated names, small constants, and weights streamed to
//! the external data file in the graph's [`WeightFormat`].

use crate::onnx::llama::{GraphError, WeightFormat};
use crate::onnx::proto::{self, Attr, Node, Tensor};
use crate::onnx::q8::{quantize_q8, QBLOCK};

/// Builds nodes with generated names; large weights go to the external data file as they come,
/// so memory holds one weight at a time, not the model.
pub(crate) struct Builder<'w> {
    format: WeightFormat,
    pub(crate) nodes: Vec<Node>,
    pub(crate) inits: Vec<Tensor>,
    next: usize,
    data: &'w mut dyn std::io::Write,
    data_name: String,
    data_len: u64,
}

/// Weights at least this large go to the external data file.
const EXTERNAL_MIN_BYTES: usize = 1024;

impl<'w> Builder<'w> {
    pub(crate) fn new(
        format: WeightFormat,
        data: &'w mut dyn std::io::Write,
        data_name: &str,
    ) -> Builder<'w> {
        Builder {
            format,
            nodes: Vec::new(),
            inits: Vec::new(),
            next: 0,
            data,
            data_name: data_name.to_owned(),
            data_len: 0,
        }
    }

    pub(crate) fn op_to(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) {
        self.nodes.push(Node {
            op: op.to_owned(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            outputs: outputs.iter().map(|s| (*s).to_owned()).collect(),
            attrs: attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        });
    }

    pub(crate) fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.next += 1;
        let out = format!("t{}_{op}", self.next);
        self.op_to(op, inputs, &[&out], attrs);
        out
    }

    pub(crate) fn ints(&mut self, values: &[i64]) -> String {
        self.next += 1;
        let name = format!("c{}", self.next);
        self.inits
            .push(Tensor::i64(&name, &[values.len() as i64], values));
        name
    }

    pub(crate) fn scalar_i64(&mut self, v: i64) -> String {
        self.next += 1;
        let name = format!("c{}", self.next);
        self.inits.push(Tensor::i64(&name, &[], &[v]));
        name
    }

    pub(crate) fn scalar_f32(&mut self, v: f32) -> String {
        self.next += 1;
        let name = format!("c{}", self.next);
        self.inits.push(Tensor::f32(&name, &[], &[v]));
        name
    }

    /// A weight in the graph's format (f32 or f16); its name as an f32 value.
    pub(crate) fn weight(
        &mut self,
        name: &str,
        dims: &[i64],
        data: &[f32],
    ) -> Result<String, GraphError> {
        if data.len() * 4 < EXTERNAL_MIN_BYTES {
            self.inits.push(Tensor::f32(name, dims, data));
            return Ok(name.to_owned());
        }
        if self.format != WeightFormat::F16 {
            let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.external(name, dims, proto::FLOAT, &raw)?;
            return Ok(name.to_owned());
        }
        let raw: Vec<u8> = data
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let stored = format!("{name}.f16");
        self.external(&stored, dims, proto::FLOAT16, &raw)?;
        // A cast of a constant: ONNX Runtime folds it into an f32 initializer at load.
        let to = vec![("to", Attr::Int(proto::FLOAT))];
        self.op_to("Cast", &[&stored], &[name], to);
        Ok(name.to_owned())
    }

    /// Appends `raw` to the external data file as the initializer `name`.
    fn external(
        &mut self,
        name: &str,
        dims: &[i64],
        data_type: i64,
        raw: &[u8],
    ) -> Result<(), GraphError> {
        // ONNX Runtime maps external data; aligning each tensor keeps that cheap.
        let pad = (64 - self.data_len % 64) % 64;
        let write = |d: &mut dyn std::io::Write, bytes: &[u8]| {
            d.write_all(bytes)
                .map_err(|e| GraphError::Shape(format!("writing weights: {e}")))
        };
        write(self.data, &vec![0u8; pad as usize])?;
        write(self.data, raw)?;
        let offset = self.data_len + pad;
        self.data_len = offset + raw.len() as u64;
        self.inits.push(Tensor::external(
            name,
            dims,
            data_type,
            &self.data_name,
            offset,
            raw.len() as u64,
        ));
        Ok(())
    }

    /// `x · wᵀ` for `w` `[out, in]` (row-major, as GGUF and Hugging Face store it).
    pub(crate) fn linear(
        &mut self,
        x: &str,
        name: &str,
        w: &[f32],
        out: usize,
        inn: usize,
    ) -> Result<String, GraphError> {
        if self.format != WeightFormat::Q8 {
            let wt = transpose(w, out, inn);
            let wn = self.weight(name, &[inn as i64, out as i64], &wt)?;
            return Ok(self.op("MatMul", &[x, &wn], vec![]));
        }
        let q = quantize_q8(w, out, inn);
        let blocks = inn.div_ceil(QBLOCK) as i64;
        let (b, s, z) = (
            format!("{name}.q8"),
            format!("{name}.scales"),
            format!("{name}.zero_points"),
        );
        let per_row = [out as i64 * blocks];
        self.external(
            &b,
            &[out as i64, blocks, QBLOCK as i64],
            proto::UINT8,
            &q.codes,
        )?;
        let scales: Vec<u8> = q.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.external(&s, &per_row, proto::FLOAT, &scales)?;
        self.external(&z, &per_row, proto::UINT8, &q.zero_points)?;
        self.next += 1;
        let y = format!("t{}_MatMulNBits", self.next);
        self.nodes.push(Node {
            op: "MatMulNBits".into(),
            domain: "com.microsoft".into(),
            inputs: vec![x.to_owned(), b, s, z],
            outputs: vec![y.clone()],
            attrs: vec![
                ("K".into(), Attr::Int(inn as i64)),
                ("N".into(), Attr::Int(out as i64)),
                ("bits".into(), Attr::Int(8)),
                ("block_size".into(), Attr::Int(QBLOCK as i64)),
                // Int8 activations: the fast path of ONNX Runtime's CPU kernel.
                ("accuracy_level".into(), Attr::Int(4)),
            ],
        });
        Ok(y)
    }

    pub(crate) fn rms_norm(&mut self, x: &str, w: &str, eps: &str) -> String {
        let sq = self.op("Mul", &[x, x], vec![]);
        let mean = self.op(
            "ReduceMean",
            &[&sq],
            vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))],
        );
        let var = self.op("Add", &[&mean, eps], vec![]);
        let root = self.op("Sqrt", &[&var], vec![]);
        let norm = self.op("Div", &[x, &root], vec![]);
        self.op("Mul", &[&norm, w], vec![])
    }
}

/// `[out, in]` row-major (a GGUF matrix) to `[in, out]`, for `MatMul(x, w)`.
pub(crate) fn transpose(w: &[f32], out: usize, inn: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for o in 0..out {
        for i in 0..inn {
            t[i * out + o] = w[o * inn + i];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes() {
        // 2 x 3 → 3 x 2
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            [1., 4., 2., 5., 3., 6.]
        );
    }
}
