//! Reading GGUF files (versions 2 and 3): the metadata key-values, the tensor directory and each
//! tensor's data, read on demand by offset so that large models are never loaded whole.
//!
//! Every length and offset is checked against the file's size before anything is allocated, so
//! a truncated or corrupt file is an error, never a crash or a huge allocation. Counts are
//! checked against the smallest encoding of what they count, arithmetic is checked, and the
//! metadata as a whole is bounded (a fuzz target, `fuzz/fuzz_targets/gguf.rs`, holds it to that).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::quant::{self, QuantError, TensorType};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic {0:?})")]
    Magic([u8; 4]),
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    #[error("the file is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("tensor `{name}`: {source}")]
    Tensor { name: String, source: QuantError },
    #[error("metadata `{0}` is missing or of the wrong type")]
    Metadata(String),
    #[error("no tensor named `{0}`")]
    NoTensor(String),
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type that fits in `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: the first dimension varies fastest (`[columns, rows]` for a matrix).
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    pub bytes: u64,
}

impl TensorInfo {
    /// Checked when the file is opened, so it cannot overflow here (saturates if a caller
    /// built a `TensorInfo` by hand).
    pub fn elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }
}

/// Most items in one metadata array (a vocabulary of 4M tokens or merges is far past any
/// model's), and in all of them together: the decoded values take ~32 bytes each whatever their
/// encoded size, so a byte-sized array must not decode into memory 32 times the file.
pub const MAX_ARRAY_ITEMS: u64 = 1 << 22;
pub const MAX_METADATA_ITEMS: u64 = 1 << 23;
/// Longest metadata string (chat templates are kilobytes).
pub const MAX_STRING_BYTES: u64 = 1 << 24;

/// The smallest encoding of one value of GGUF type `ty`.
fn min_size(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        // A string or an array starts with a u64 length.
        8 | 9 => 8,
        10..=12 => 8,
        _ => 1,
    }
}

pub struct Gguf {
    path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

/// Reads little-endian values while tracking how much of the file is left.
struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
    /// Metadata values decoded so far (bounded by `MAX_METADATA_ITEMS`).
    items: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, GgufError> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(GgufError::Corrupt(format!(
                "{what} of {n} bytes at offset {} runs past the end ({} bytes)",
                self.pos, self.len
            )));
        }
        let mut buf = vec![0; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| GgufError::Corrupt(format!("{what}: {e}")))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let b = self.bytes(N as u64, what)?;
        let mut out = [0; N];
        out.copy_from_slice(&b);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        if n > MAX_STRING_BYTES {
            return Err(GgufError::Corrupt(format!(
                "{what}: a string of {n} bytes (at most {MAX_STRING_BYTES})"
            )));
        }
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|_| GgufError::Corrupt(format!("{what} is not UTF-8")))
    }

    /// A count of items of at least `min_size` bytes each, checked against what is left.
    fn count(&mut self, min_size: u64, what: &str) -> Result<u64, GgufError> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_size) > self.len.saturating_sub(self.pos) {
            return Err(GgufError::Corrupt(format!(
                "{what}: {n} items cannot fit in the rest of the file"
            )));
        }
        Ok(n)
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        self.items += 1;
        if self.items > MAX_METADATA_ITEMS {
            return Err(GgufError::Corrupt(format!(
                "more than {MAX_METADATA_ITEMS} metadata values"
            )));
        }
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 if depth == 0 => {
                let item = self.u32(key)?;
                let n = self.count(min_size(item), key)?;
                if n > MAX_ARRAY_ITEMS {
                    return Err(GgufError::Corrupt(format!(
                        "`{key}`: an array of {n} items (at most {MAX_ARRAY_ITEMS})"
                    )));
                }
                // Grows as items actually decode; the count alone reserves little.
                let mut items = Vec::with_capacity(n.min(4096) as usize);
                for _ in 0..n {
                    items.push(self.value(item, key, depth + 1)?);
                }
                Value::Array(items)
            }
            9 => return Err(GgufError::Corrupt(format!("`{key}`: nested arrays"))),
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(GgufError::Corrupt(format!(
                    "`{key}` has unknown value type {other}"
                )))
            }
        })
    }
}

const DEFAULT_ALIGNMENT: u64 = 32;

impl Gguf {
    /// Reads the header, metadata and tensor directory (not the tensor data).
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Self::read(path, BufReader::new(file), len)
    }

    /// Parses a GGUF header from any reader of `len` bytes (files, and buffers in tests and
    /// the fuzz target). `path` names it in errors and for reading tensor data later.
    pub fn read<R: Read>(path: &Path, inner: R, len: u64) -> Result<Gguf, GgufError> {
        let mut r = Reader {
            inner,
            pos: 0,
            len,
            items: 0,
        };
        let magic = r.array::<4>("magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::Magic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        // A tensor record is at least 8 + 4 + 4 + 8 bytes; a key-value at least 8 + 4 + 1.
        let n_tensors = r.count(24, "tensor count")?;
        let n_kv = r.count(13, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut raw = Vec::with_capacity(n_tensors.min(4096) as usize);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(GgufError::Corrupt(format!(
                    "`{name}` has {n_dims} dimensions"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&name))
                .collect::<Result<Vec<_>, _>>()?;
            if dims.contains(&0) {
                return Err(GgufError::Corrupt(format!("`{name}` has a zero dimension")));
            }
            let ty_id = r.u32(&name)?;
            let offset = r.u64(&name)?;
            raw.push((name, dims, ty_id, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(GgufError::Corrupt(format!("alignment {alignment}")));
        }
        let data_start = r
            .pos
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| GgufError::Corrupt("data offset overflows".into()))?;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty_id, offset) in raw {
            let tensor_err = |source| GgufError::Tensor {
                name: name.clone(),
                source,
            };
            let ty = TensorType::from_id(ty_id).map_err(tensor_err)?;
            // Blocks run along the first (fastest) dimension, as llama.cpp requires: a row
            // that is not whole blocks has no layout.
            let block = ty.block().0 as u64;
            if !dims[0].is_multiple_of(block) {
                return Err(GgufError::Corrupt(format!(
                    "`{name}`: rows of {} values are not whole blocks of {block}",
                    dims[0]
                )));
            }
            let elements = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| GgufError::Corrupt(format!("`{name}`: dimensions overflow")))?;
            let bytes = ty.size_of(elements).map_err(tensor_err)?;
            let start = data_start
                .checked_add(offset)
                .filter(|s| s.checked_add(bytes).is_some_and(|end| end <= len))
                .ok_or_else(|| {
                    GgufError::Corrupt(format!("`{name}`: data runs past the end of the file"))
                })?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset: start,
                bytes,
            });
        }
        Ok(Gguf {
            path: path.to_owned(),
            version,
            metadata,
            tensors,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| GgufError::Metadata(key.to_owned()))
    }

    pub fn f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get(key)
            .and_then(Value::as_f32)
            .ok_or_else(|| GgufError::Metadata(key.to_owned()))
    }

    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| GgufError::Metadata(key.to_owned()))
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::NoTensor(name.to_owned()))
    }

    /// The raw bytes of a tensor, as stored.
    pub fn raw(&self, t: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let io = |source| GgufError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(t.offset)).map_err(io)?;
        let mut buf = vec![0; t.bytes as usize];
        f.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }

    /// A tensor dequantised to `f32`, in GGUF order.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let raw = self.raw(t)?;
        let mut out = Vec::new();
        quant::dequantize(t.ty, &raw, t.elements(), &mut out).map_err(|source| {
            GgufError::Tensor {
                name: t.name.clone(),
                source,
            }
        })?;
        Ok(out)
    }
}
