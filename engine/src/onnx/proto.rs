//! Just enough of ONNX's protobuf encoding to write a model: ModelProto, GraphProto, NodeProto,
//! AttributeProto, TensorProto and ValueInfoProto, with field numbers from `onnx.proto`.

/// ONNX element types.
pub const FLOAT: i64 = 1;
pub const UINT8: i64 = 2;
pub const INT64: i64 = 7;
pub const FLOAT16: i64 = 10;

#[derive(Default)]
pub struct Buf(pub Vec<u8>);

impl Buf {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    pub fn int(&mut self, field: u32, v: i64) {
        self.key(field, 0);
        self.varint(v as u64);
    }

    pub fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    pub fn str(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    pub fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn msg(&mut self, field: u32, m: &Buf) {
        self.bytes(field, &m.0);
    }
}

pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Tensor(Tensor),
}

pub struct Tensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: i64,
    pub raw: Vec<u8>,
    /// Stored in an external data file instead: (file name, offset, length).
    pub external: Option<(String, u64, u64)>,
}

impl Tensor {
    pub fn f32(name: &str, dims: &[i64], data: &[f32]) -> Tensor {
        Tensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            data_type: FLOAT,
            raw: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            external: None,
        }
    }

    /// A tensor of `data_type` whose data lies in `file` at `offset` (ONNX external data).
    pub fn external(
        name: &str,
        dims: &[i64],
        data_type: i64,
        file: &str,
        offset: u64,
        len: u64,
    ) -> Tensor {
        Tensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            data_type,
            raw: Vec::new(),
            external: Some((file.to_owned(), offset, len)),
        }
    }

    pub fn i64(name: &str, dims: &[i64], data: &[i64]) -> Tensor {
        Tensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            data_type: INT64,
            raw: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            external: None,
        }
    }

    fn encode(&self) -> Buf {
        let mut b = Buf::default();
        for d in &self.dims {
            b.int(1, *d);
        }
        b.int(2, self.data_type);
        b.str(8, &self.name);
        match &self.external {
            None => b.bytes(9, &self.raw),
            Some((file, offset, len)) => {
                for (k, v) in [
                    ("location", file.clone()),
                    ("offset", offset.to_string()),
                    ("length", len.to_string()),
                ] {
                    let mut entry = Buf::default();
                    entry.str(1, k);
                    entry.str(2, &v);
                    b.msg(13, &entry);
                }
                // data_location = EXTERNAL
                b.int(14, 1);
            }
        }
        b
    }
}

pub struct Node {
    pub op: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(String, Attr)>,
}

impl Node {
    fn encode(&self, index: usize) -> Buf {
        let mut b = Buf::default();
        for i in &self.inputs {
            b.str(1, i);
        }
        for o in &self.outputs {
            b.str(2, o);
        }
        b.str(3, &format!("n{index}_{}", self.op));
        b.str(4, &self.op);
        for (name, a) in &self.attrs {
            let mut ab = Buf::default();
            ab.str(1, name);
            match a {
                Attr::Float(f) => {
                    ab.float(2, *f);
                    ab.int(20, 1);
                }
                Attr::Int(i) => {
                    ab.int(3, *i);
                    ab.int(20, 2);
                }
                Attr::Tensor(t) => {
                    ab.msg(5, &t.encode());
                    ab.int(20, 4);
                }
                Attr::Ints(v) => {
                    for i in v {
                        ab.int(8, *i);
                    }
                    ab.int(20, 7);
                }
            }
            b.msg(5, &ab);
        }
        if !self.domain.is_empty() {
            b.str(7, &self.domain);
        }
        b
    }
}

/// A graph input or output: a tensor of `elem` with dimensions that are sizes or names.
pub struct ValueInfo {
    pub name: String,
    pub elem: i64,
    pub dims: Vec<Dim>,
}

pub enum Dim {
    Fixed(i64),
    Named(String),
}

impl ValueInfo {
    fn encode(&self) -> Buf {
        let mut shape = Buf::default();
        for d in &self.dims {
            let mut db = Buf::default();
            match d {
                Dim::Fixed(v) => db.int(1, *v),
                Dim::Named(n) => db.str(2, n),
            }
            shape.msg(1, &db);
        }
        let mut tensor = Buf::default();
        tensor.int(1, self.elem);
        tensor.msg(2, &shape);
        let mut ty = Buf::default();
        ty.msg(1, &tensor);
        let mut b = Buf::default();
        b.str(1, &self.name);
        b.msg(2, &ty);
        b
    }
}

pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

/// Serialises a model: IR version 8, the default opset at `opset`, plus `extra` (domain,
/// version) opsets (e.g. `com.microsoft` for ONNX Runtime's contrib ops).
pub fn model(graph: &Graph, opset: i64, extra: &[(&str, i64)], producer: &str) -> Vec<u8> {
    let mut g = Buf::default();
    for (i, n) in graph.nodes.iter().enumerate() {
        g.msg(1, &n.encode(i));
    }
    g.str(2, &graph.name);
    for t in &graph.initializers {
        g.msg(5, &t.encode());
    }
    for v in &graph.inputs {
        g.msg(11, &v.encode());
    }
    for v in &graph.outputs {
        g.msg(12, &v.encode());
    }
    let mut m = Buf::default();
    m.int(1, 8);
    m.str(2, producer);
    m.msg(7, &g);
    for (domain, version) in std::iter::once(("", opset)).chain(extra.iter().copied()) {
        let mut op = Buf::default();
        op.str(1, domain);
        op.int(2, version);
        m.msg(8, &op);
    }
    m.0
}
