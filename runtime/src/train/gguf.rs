//! A reader of GGUF files (llama.cpp's model format, versions 2 and 3): the metadata, the tensor
//! directory, and the tensors dequantised to `f32`.
//!
//! Layout (all little-endian): `GGUF`, version `u32`, tensor count `u64`, metadata count `u64`;
//! the metadata as key (`u64` length + UTF-8) / type `u32` / value; one entry per tensor: name,
//! number of dims `u32`, dims `u64` each **fastest-varying first**, ggml type `u32`, offset `u64`
//! from the start of the data section; the data section begins at the next multiple of
//! `general.alignment` (32 by default). A tensor listed as dims `(576, 49152)` is therefore the
//! row-major `[49152, 576]` of PyTorch; [`GgufTensor::shape`] gives that outermost-first order.
//!
//! Dequantised types (block layouts as in ggml's `ggml-common.h`):
//! - `F32`, `F16`, `BF16`: one value per element;
//! - `Q8_0`: blocks of 32 = `f16` scale `d` + 32 × `i8` `q`; value `d·q`;
//! - `Q4_0`: blocks of 32 = `f16` `d` + 16 bytes of nibbles; value `d·(q − 8)`;
//! - `Q4_1`: blocks of 32 = `f16` `d`, `f16` `m` + 16 bytes of nibbles; value `d·q + m`.
//!
//! In both 4-bit types byte `j` holds element `j` in its low nibble and element `j + 16` in its
//! high nibble. Any other type is refused by name ([`TrainError::UnsupportedGgufType`]).
//! The file is memory-mapped; every offset and length is checked against its size, so a
//! truncated or malformed file is an error naming it, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use super::TrainError;

/// The file's first four bytes.
const MAGIC: &[u8; 4] = b"GGUF";
/// Data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// The ggml types this reader dequantises, as the error message lists them.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Any unsigned integer type (`u8` .. `u64`).
    Uint(u64),
    /// Any signed integer type (`i8` .. `i64`).
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values.
    Array(Vec<GgufValue>),
}

/// A ggml tensor type, by its number in the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    const F32: GgmlType = GgmlType(0);
    const F16: GgmlType = GgmlType(1);
    const Q4_0: GgmlType = GgmlType(2);
    const Q4_1: GgmlType = GgmlType(3);
    const Q8_0: GgmlType = GgmlType(8);
    const BF16: GgmlType = GgmlType(30);

    /// ggml's name of the type (`Q4_1`), or `type N` for numbers this reader does not know.
    pub fn name(self) -> String {
        let known = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
            "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
            "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
            "BF16",
        ];
        known
            .get(self.0 as usize)
            .map_or_else(|| format!("type {}", self.0), |n| n.to_string())
    }

    /// (elements per block, bytes per block) of the types that can be dequantised.
    fn block(self) -> Option<(u64, u64)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            _ => return None,
        })
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    /// Its name in the file (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions as the file lists them: fastest-varying first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
}

impl GgufTensor {
    /// Dimensions outermost first (the PyTorch / safetensors order).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensor>,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A cursor over the header, whose every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn bad(&self, message: String) -> TrainError {
        TrainError::BadGguf {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], TrainError> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len() as u64)
            .ok_or_else(|| {
                self.bad(format!(
                    "the file ends inside {what} (at byte {}, {n} bytes needed)",
                    self.pos
                ))
            })?;
        let slice = &self.bytes[self.pos..end as usize];
        self.pos = end as usize;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], TrainError> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, TrainError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, TrainError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, TrainError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad(format!("{what} is not UTF-8")))
    }

    /// A value of metadata type `ty` (0..=12 as the format numbers them).
    fn value(&mut self, ty: u32, key: &str) -> Result<GgufValue, TrainError> {
        Ok(match ty {
            0 => GgufValue::Uint(self.array::<1>(key)?[0] as u64),
            1 => GgufValue::Int(self.array::<1>(key)?[0] as i8 as i64),
            2 => GgufValue::Uint(u16::from_le_bytes(self.array(key)?) as u64),
            3 => GgufValue::Int(i16::from_le_bytes(self.array(key)?) as i64),
            4 => GgufValue::Uint(self.u32(key)? as u64),
            5 => GgufValue::Int(i32::from_le_bytes(self.array(key)?) as i64),
            6 => GgufValue::Float(f32::from_le_bytes(self.array(key)?) as f64),
            7 => GgufValue::Bool(self.array::<1>(key)?[0] != 0),
            8 => GgufValue::String(self.string(key)?),
            9 => {
                let inner = self.u32(key)?;
                let count = self.u64(key)?;
                // Every element takes at least one byte: a count past the file is corrupt.
                if count > (self.bytes.len() - self.pos) as u64 {
                    return Err(self.bad(format!("`{key}` claims {count} array elements")));
                }
                let items = (0..count)
                    .map(|_| self.value(inner, key))
                    .collect::<Result<_, _>>()?;
                GgufValue::Array(items)
            }
            10 => GgufValue::Uint(self.u64(key)?),
            11 => GgufValue::Int(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::Float(f64::from_le_bytes(self.array(key)?)),
            other => return Err(self.bad(format!("`{key}` has unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Opens and parses the header and tensor directory of the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let file = std::fs::File::open(path).map_err(TrainError::io(path, "open"))?;
        // SAFETY: the map is read-only and lives as long as `self`; the docs of `--init-from`
        // say not to modify the file while a run reads it (as for token files).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(TrainError::io(path, "map"))?;
        let mut r = Reader {
            bytes: &map,
            pos: 0,
            path,
        };
        if r.take(4, "the magic number")? != MAGIC {
            return Err(r.bad("it does not start with `GGUF`: not a GGUF file".into()));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(r.bad(format!(
                "version {version}; this reader knows versions 2 and 3"
            )));
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("a metadata key")?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims > 4 {
                return Err(r.bad(format!(
                    "tensor `{name}` has {n_dims} dimensions (at most 4)"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&name))
                .collect::<Result<_, _>>()?;
            let ggml_type = GgmlType(r.u32(&name)?);
            let offset = r.u64(&name)?;
            tensors.push(GgufTensor {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            Some(GgufValue::Uint(a)) if *a > 0 => *a,
            _ => DEFAULT_ALIGNMENT,
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            metadata,
            tensors,
            data_start,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every metadata entry, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// An unsigned integer entry.
    pub fn uint(&self, key: &str) -> Option<u64> {
        match self.metadata.get(key)? {
            GgufValue::Uint(v) => Some(*v),
            GgufValue::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// A floating-point entry.
    pub fn float(&self, key: &str) -> Option<f64> {
        match self.metadata.get(key)? {
            GgufValue::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// A string entry.
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key)? {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array-of-strings entry (`tokenizer.ggml.tokens`); `None` if absent or of another type.
    pub fn strings(&self, key: &str) -> Option<Vec<&str>> {
        match self.metadata.get(key)? {
            GgufValue::Array(items) => items
                .iter()
                .map(|v| match v {
                    GgufValue::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// The tensor's values as `f32`, in row-major order of [`GgufTensor::shape`].
    pub fn dequantize(&self, tensor: &GgufTensor) -> Result<Vec<f32>, TrainError> {
        let ty = tensor.ggml_type;
        let unsupported = || TrainError::UnsupportedGgufType {
            path: self.path.clone(),
            tensor: tensor.name.clone(),
            ggml_type: ty.name(),
            supported: SUPPORTED_TYPES,
        };
        let (block_len, block_bytes) = ty.block().ok_or_else(unsupported)?;
        let n = tensor.numel();
        if !n.is_multiple_of(block_len) {
            return Err(TrainError::BadGguf {
                path: self.path.clone(),
                message: format!(
                    "tensor `{}` has {n} elements, not a whole number of {} blocks of {block_len}",
                    tensor.name,
                    ty.name()
                ),
            });
        }
        let len = n / block_len * block_bytes;
        let start = self.data_start.checked_add(tensor.offset);
        let end = start.and_then(|s| s.checked_add(len));
        let bytes = match (start, end) {
            (Some(s), Some(e)) if e <= self.map.len() as u64 => &self.map[s as usize..e as usize],
            _ => {
                return Err(TrainError::BadGguf {
                    path: self.path.clone(),
                    message: format!(
                        "tensor `{}` ({len} bytes at data offset {}) lies past the end of the \
                         file ({} bytes): truncated?",
                        tensor.name,
                        tensor.offset,
                        self.map.len()
                    ),
                });
            }
        };
        let mut out = vec![0.0f32; n as usize];
        let blocks = bytes.chunks_exact(block_bytes as usize);
        let outs = out.chunks_exact_mut(block_len as usize);
        for (block, out) in blocks.zip(outs) {
            match ty {
                GgmlType::F32 => out[0] = f32::from_le_bytes(block.try_into().expect("4 bytes")),
                GgmlType::F16 => out[0] = f16_at(block, 0),
                GgmlType::BF16 => {
                    out[0] = bf16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32()
                }
                GgmlType::Q8_0 => dequantize_q8_0(block, out),
                GgmlType::Q4_0 => dequantize_q4_0(block, out),
                GgmlType::Q4_1 => dequantize_q4_1(block, out),
                _ => return Err(unsupported()),
            }
        }
        Ok(out)
    }
}

/// Whether the file at `path` starts with GGUF's magic number (a shorter file does not).
pub fn is_gguf(path: &Path) -> Result<bool, TrainError> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(TrainError::io(path, "open"))?;
    Ok(std::io::Read::read_exact(&mut file, &mut magic).is_ok() && &magic == MAGIC)
}

/// The little-endian `f16` at byte `at`, as `f32`.
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// One `Q8_0` block (34 bytes) into 32 values: `d·q`.
pub fn dequantize_q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

/// One `Q4_0` block (18 bytes) into 32 values: `d·(q − 8)`.
pub fn dequantize_q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (j, &byte) in block[2..18].iter().enumerate() {
        out[j] = d * ((byte & 0x0F) as i32 - 8) as f32;
        out[j + 16] = d * ((byte >> 4) as i32 - 8) as f32;
    }
}

/// One `Q4_1` block (20 bytes) into 32 values: `d·q + m`.
pub fn dequantize_q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    for (j, &byte) in block[4..20].iter().enumerate() {
        out[j] = d * (byte & 0x0F) as f32 + m;
        out[j + 16] = d * (byte >> 4) as f32 + m;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn q8_0_block_is_scale_times_signed_byte() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = [0.0; 32];
        dequantize_q8_0(&block, &mut out);
        // Element i holds q = i − 16: 0.5 · (−16) = −8 first, 0.5 · 15 = 7.5 last.
        assert_eq!(out[0], -8.0);
        assert_eq!(out[16], 0.0);
        assert_eq!(out[31], 7.5);
    }

    #[test]
    fn q4_0_low_nibbles_are_the_first_sixteen() {
        // Byte j = (high 15 − j, low j): element j is j − 8, element j + 16 is 7 − j.
        let mut block = f16_bytes(2.0).to_vec();
        block.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let mut out = [0.0; 32];
        dequantize_q4_0(&block, &mut out);
        assert_eq!(out[0], -16.0); // 2 · (0 − 8)
        assert_eq!(out[15], 14.0); // 2 · (15 − 8)
        assert_eq!(out[16], 14.0); // 2 · (15 − 8)
        assert_eq!(out[31], -16.0); // 2 · (0 − 8)
    }

    #[test]
    fn q4_1_is_scale_times_nibble_plus_minimum() {
        let mut block = [f16_bytes(0.25), f16_bytes(-1.0)].concat();
        block.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let mut out = [0.0; 32];
        dequantize_q4_1(&block, &mut out);
        assert_eq!(out[0], -1.0); // 0.25 · 0 − 1
        assert_eq!(out[3], -0.25); // 0.25 · 3 − 1
        assert_eq!(out[15], 2.75); // 0.25 · 15 − 1
        assert_eq!(out[16], 2.75); // high nibble of byte 0 is 15
        assert_eq!(out[31], -1.0); // high nibble of byte 15 is 0
    }

    /// A GGUF v3 file with the given metadata bytes (already encoded) and tensors.
    pub(crate) fn gguf_bytes(
        metadata: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, &[u64], u32, Vec<u8>)],
    ) -> Vec<u8> {
        let string = |s: &str| [(s.len() as u64).to_le_bytes().to_vec(), s.into()].concat();
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        for (key, ty, value) in metadata {
            out.extend(string(key));
            out.extend(ty.to_le_bytes());
            out.extend(value);
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            out.extend(string(name));
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        for (.., data) in tensors {
            out.extend(data);
            out.resize(out.len().div_ceil(32) * 32, 0);
        }
        out
    }

    #[test]
    fn reads_metadata_and_dequantizes_in_row_major_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let strings = [
            8u32.to_le_bytes().to_vec(),
            2u64.to_le_bytes().to_vec(),
            [1u64.to_le_bytes().to_vec(), b"a".to_vec()].concat(),
            [2u64.to_le_bytes().to_vec(), b"bc".to_vec()].concat(),
        ]
        .concat();
        let bytes = gguf_bytes(
            &[
                ("llama.block_count", 4, 30u32.to_le_bytes().to_vec()),
                ("rope", 6, 1e5f32.to_le_bytes().to_vec()),
                ("toks", 9, strings),
            ],
            &[("w", &[3, 2], 0, f32s)],
        );
        std::fs::write(&path, &bytes).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.uint("llama.block_count"), Some(30));
        assert_eq!(g.float("rope"), Some(1e5));
        assert_eq!(g.strings("toks"), Some(vec!["a", "bc"]));
        let w = g.tensor("w").unwrap();
        assert_eq!(w.shape(), [2, 3]);
        assert_eq!(g.dequantize(w).unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

        // Truncated inside the data: an error naming the tensor, not a panic.
        std::fs::write(&path, &bytes[..bytes.len() - 16]).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let err = g.dequantize(g.tensor("w").unwrap()).unwrap_err();
        assert!(err.to_string().contains("`w`") && err.to_string().contains("m.gguf"));
        // Truncated inside the header.
        std::fs::write(&path, &bytes[..40]).unwrap();
        let err = GgufFile::open(&path).unwrap_err();
        assert!(matches!(err, TrainError::BadGguf { .. }), "{err}");
        std::fs::write(&path, b"GGML....").unwrap();
        assert!(
            GgufFile::open(&path)
                .unwrap_err()
                .to_string()
                .contains("not a GGUF")
        );
    }

    #[test]
    fn unsupported_types_are_named_with_the_supported_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.gguf");
        let bytes = gguf_bytes(&[], &[("blk.0.ffn_down.weight", &[256], 12, vec![0; 144])]);
        std::fs::write(&path, bytes).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let err = g.dequantize(&g.tensors()[0]).unwrap_err().to_string();
        assert!(
            err.contains("Q4_K") && err.contains("blk.0.ffn_down.weight"),
            "{err}"
        );
        assert!(err.contains(SUPPORTED_TYPES), "{err}");
    }
}
