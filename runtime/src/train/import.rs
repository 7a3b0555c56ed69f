//! Initial weights from a pretrained model: a Hugging Face `model.safetensors`, a directory of
//! shards (`model.safetensors.index.json`), or a llama.cpp `.gguf` file (`llmq-run --init-from`).
//!
//! Parameters are matched by their Hugging Face names (`hf` in the spec, `PlanTensor::hf_name`
//! in the plan); [`WeightFile::fill`] is the one function that takes such a name to a part of a
//! parameter, so a parameter packed from several Hugging Face tensors is filled by calling it
//! once per part with that part's rows. Values come out as `f32` (safetensors `F32`, `F16`,
//! `BF16`; GGUF dequantised by [`super::gguf`]) and the backend rounds them to each parameter's
//! storage dtype.
//!
//! GGUF names are translated (`model.layers.3.self_attn.q_proj.weight` ↔
//! `blk.3.attn_q.weight`). llama.cpp's converter permutes the rows of `attn_q`/`attn_k` of the
//! `llama` architecture (per head, the rotate-half pairs `(i, i + d/2)` become adjacent rows
//! `(2i, 2i + 1)`); [`unpermute_rows`] undoes it, giving Hugging Face's layout, which our `Rope`
//! uses. Other architectures (qwen2, qwen3) are stored unpermuted.
//!
//! Before any value is read, [`WeightFile::check`] compares the file with the plan and refuses:
//! a GGUF whose architecture or dimensions are not the spec's; parameters the file lacks; and
//! tensors the file holds that no parameter takes. Two kinds of extra tensor are harmless and
//! accepted: `lm_head.weight` (GGUF `output.weight`) when the model ties its head to the
//! embedding and the tensor equals the file's embedding value for value (a tied checkpoint
//! saved with both), and `*.rotary_emb.inv_freq` (a buffer older checkpoints save, recomputed
//! from `rope_theta`). Everything else, e.g. GGUF `rope_freqs.weight` (Llama 3's frequency
//! scaling, which the `Rope` op does not model), is refused.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use llmq_compiler::plan::{Plan, PlanTensor};
use llmq_kernels::Op;
use safetensors::tensor::{Dtype, SafeTensors};

use super::TrainError;
use super::gguf::{GgufFile, GgufTensor, is_gguf};

/// File name of a single-file Hugging Face checkpoint inside a model directory.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// File name of the shard index inside a model directory.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
/// The Hugging Face name of the embedding, which a tied LM head copies.
const EMBEDDING: &str = "model.embed_tokens.weight";
/// The Hugging Face name of an untied LM head.
const LM_HEAD: &str = "lm_head.weight";
/// How many names an error lists.
const LISTED: usize = 5;

/// A weight file opened for import.
pub struct WeightFile {
    /// The path as given (file or directory), for messages.
    path: PathBuf,
    source: Source,
}

enum Source {
    Safetensors {
        shards: Vec<Shard>,
        /// Tensor name → its shard and place.
        index: BTreeMap<String, Entry>,
    },
    Gguf(GgufFile),
}

struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<u64>,
    /// Byte range within the shard.
    bytes: Range<usize>,
}

impl WeightFile {
    /// Opens `path`: a `.gguf` file (recognised by its magic number), a safetensors file, or a
    /// directory holding `model.safetensors.index.json` or `model.safetensors`.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let source = if path.is_dir() {
            let index = path.join(SAFETENSORS_INDEX);
            if index.exists() {
                open_sharded(&index)?
            } else if path.join(SAFETENSORS_FILE).exists() {
                open_safetensors(&[path.join(SAFETENSORS_FILE)])?
            } else {
                return Err(TrainError::BadWeights {
                    path: path.to_path_buf(),
                    message: format!(
                        "the directory holds neither {SAFETENSORS_INDEX} nor {SAFETENSORS_FILE}"
                    ),
                });
            }
        } else if is_gguf(path)? {
            Source::Gguf(GgufFile::open(path)?)
        } else {
            open_safetensors(&[path.to_path_buf()])?
        };
        Ok(WeightFile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks the file against `plan` before anything is read: for a GGUF its architecture and
    /// dimensions, then that every parameter has a tensor and every tensor a parameter (less
    /// the harmless extras of the module doc).
    pub fn check(&self, plan: &Plan) -> Result<(), TrainError> {
        if let Source::Gguf(g) = &self.source {
            check_gguf_fits(g, plan)?;
        }
        let wanted: Vec<String> = param_names(plan);
        let missing: Vec<&String> = wanted.iter().filter(|n| self.locate(n).is_none()).collect();
        if !missing.is_empty() {
            return Err(TrainError::MissingWeights {
                path: self.path.clone(),
                count: missing.len(),
                names: list(missing),
            });
        }
        let taken: HashSet<String> = wanted.iter().filter_map(|n| self.locate(n)).collect();
        let mut extra = Vec::new();
        for name in self.file_names() {
            if !taken.contains(&name) && !self.harmless_extra(&name, &wanted)? {
                extra.push(name);
            }
        }
        if !extra.is_empty() {
            return Err(TrainError::ExtraWeights {
                path: self.path.clone(),
                count: extra.len(),
                names: list(extra.iter()),
            });
        }
        Ok(())
    }

    /// The one place where a Hugging Face name meets a plan parameter. Reads the file's tensor
    /// `hf_name` (translated and, for GGUF llama q/k, un-permuted), checks that its shape is
    /// rows `rows` of `dest` (`[rows.len(), dest's other dims]`; for a vector, elements), and
    /// writes its values into those rows of `out`, which holds all of `dest` row-major.
    pub fn fill(
        &self,
        hf_name: &str,
        dest: &PlanTensor,
        rows: Range<u64>,
        out: &mut [f32],
    ) -> Result<(), TrainError> {
        let file_name = self
            .locate(hf_name)
            .ok_or_else(|| TrainError::MissingWeights {
                path: self.path.clone(),
                count: 1,
                names: format!("`{hf_name}`"),
            })?;
        let shape = &dest.ty.shape;
        let row_len: u64 = shape.iter().skip(1).product();
        let mut part = shape.clone();
        part[0] = rows.end.saturating_sub(rows.start);
        let file_shape = self.shape(&file_name);
        if file_shape != part || rows.end > shape[0] || out.len() as u64 != dest.ty.numel() {
            return Err(TrainError::WeightShape {
                path: self.path.clone(),
                tensor: hf_name.to_string(),
                file: file_shape,
                plan: part,
            });
        }
        let mut values = self.values(&file_name)?;
        if let Some(heads) = self.permuted_heads(hf_name) {
            values = unpermute_rows(&values, part[0] as usize, row_len as usize, heads);
        }
        let at = (rows.start * row_len) as usize;
        out[at..at + values.len()].copy_from_slice(&values);
        Ok(())
    }

    /// The file's name of the Hugging Face tensor `hf_name`, if the file has it.
    fn locate(&self, hf_name: &str) -> Option<String> {
        match &self.source {
            Source::Safetensors { index, .. } => {
                index.contains_key(hf_name).then(|| hf_name.to_string())
            }
            Source::Gguf(g) => gguf_name(hf_name).filter(|n| g.tensor(n).is_some()),
        }
    }

    /// Every tensor name in the file.
    fn file_names(&self) -> Vec<String> {
        match &self.source {
            Source::Safetensors { index, .. } => index.keys().cloned().collect(),
            Source::Gguf(g) => g.tensors().iter().map(|t| t.name.clone()).collect(),
        }
    }

    /// The shape of file tensor `name` (which exists), outermost first.
    fn shape(&self, name: &str) -> Vec<u64> {
        match &self.source {
            Source::Safetensors { index, .. } => index[name].shape.clone(),
            Source::Gguf(g) => g.tensor(name).map(GgufTensor::shape).unwrap_or_default(),
        }
    }

    /// The values of file tensor `name` (which exists), as stored (no un-permutation).
    fn values(&self, name: &str) -> Result<Vec<f32>, TrainError> {
        match &self.source {
            Source::Safetensors { shards, index } => {
                let e = &index[name];
                let shard = &shards[e.shard];
                safetensors_values(&shard.map[e.bytes.clone()], e.dtype).ok_or_else(|| {
                    TrainError::BadWeights {
                        path: shard.path.clone(),
                        message: format!(
                            "tensor `{name}` has dtype {:?}; importable dtypes are F32, F16, BF16",
                            e.dtype
                        ),
                    }
                })
            }
            Source::Gguf(g) => g.dequantize(g.tensor(name).expect("a located tensor")),
        }
    }

    /// The head count by which `hf_name`'s rows are permuted in this file, if they are.
    fn permuted_heads(&self, hf_name: &str) -> Option<usize> {
        let Source::Gguf(g) = &self.source else {
            return None;
        };
        if g.string("general.architecture") != Some("llama") {
            return None;
        }
        let key = if hf_name.ends_with("self_attn.q_proj.weight") {
            "llama.attention.head_count"
        } else if hf_name.ends_with("self_attn.k_proj.weight") {
            "llama.attention.head_count_kv"
        } else {
            return None;
        };
        g.uint(key)
            .or_else(|| g.uint("llama.attention.head_count"))
            .map(|h| h as usize)
    }

    /// Whether an unclaimed file tensor is one of the module doc's harmless extras.
    fn harmless_extra(&self, name: &str, wanted: &[String]) -> Result<bool, TrainError> {
        if name.ends_with(".rotary_emb.inv_freq") {
            return Ok(true);
        }
        let head = self.locate(LM_HEAD);
        let embedding = self.locate(EMBEDDING);
        match (head, embedding) {
            (Some(head), Some(embedding))
                if head == name && !wanted.iter().any(|w| w == LM_HEAD) =>
            {
                Ok(self.shape(&head) == self.shape(&embedding)
                    && self.values(&head)? == self.values(&embedding)?)
            }
            _ => Ok(false),
        }
    }
}

/// The Hugging Face names of the plan's parameters, piece by piece for packed ones (q|k|v,
/// gate|up), in plan order (the plan name where a piece has none, so that it is reported
/// missing by a name one can find in the plan).
pub fn param_names(plan: &Plan) -> Vec<String> {
    plan.io
        .params
        .iter()
        .flat_map(|p| plan.tensor(p.weight).pieces())
        .map(|piece| piece.hf_name.unwrap_or(piece.name))
        .collect()
}

/// Hugging Face rows from llama.cpp's rotary layout. Per head of `d = rows / heads` rows, file
/// row `2i + j` (pair element `j ∈ {0, 1}`, frequency `i < d/2`) is Hugging Face row
/// `j·d/2 + i`: the inverse of `convert_hf_to_gguf.py`'s `permute`.
pub fn unpermute_rows(values: &[f32], rows: usize, row_len: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let (from, to) = (h * d + 2 * i + j, h * d + j * half + i);
                out[to * row_len..(to + 1) * row_len]
                    .copy_from_slice(&values[from * row_len..(from + 1) * row_len]);
            }
        }
    }
    out
}

/// The GGUF name of a Hugging Face tensor name of the llama/qwen2/qwen3 families.
pub fn gguf_name(hf_name: &str) -> Option<String> {
    match hf_name {
        EMBEDDING => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        LM_HEAD => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{suffix}"))
}

/// Refuses a GGUF whose architecture or dimensions are not the plan's.
fn check_gguf_fits(g: &GgufFile, plan: &Plan) -> Result<(), TrainError> {
    let differ = |what: &str, spec: String, file: String| TrainError::WeightsDoNotFitSpec {
        path: g.path().to_path_buf(),
        what: what.into(),
        spec,
        file,
    };
    let arch = g.string("general.architecture").unwrap_or("(none)");
    if !["llama", "qwen2", "qwen3"].contains(&arch) {
        return Err(differ(
            "architecture",
            "llama, qwen2 or qwen3".into(),
            arch.into(),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    // The embedding's rows, not the tokenizer's length: converters may pad one and not the other.
    let vocab = g.uint(&key("vocab_size")).or_else(|| {
        g.tensor("token_embd.weight")
            .and_then(|t| t.shape().first().copied())
    });
    let heads = g.uint(&key("attention.head_count"));
    let hidden = g.uint(&key("embedding_length"));
    let head_dim = g
        .uint(&key("attention.key_length"))
        .or(hidden.zip(heads).map(|(h, n)| h / n.max(1)));
    let file_dims = [
        ("layers", g.uint(&key("block_count"))),
        ("hidden", hidden),
        ("ffn", g.uint(&key("feed_forward_length"))),
        ("heads", heads),
        (
            "kv_heads",
            g.uint(&key("attention.head_count_kv")).or(heads),
        ),
        ("head_dim", head_dim),
        ("vocab", vocab),
    ];
    for (dim, file) in file_dims {
        if let (Some(&spec), Some(file)) = (plan.model.dims.get(dim), file)
            && spec != file
        {
            return Err(differ(dim, spec.to_string(), file.to_string()));
        }
    }
    let spec_theta = plan.steps.iter().find_map(|s| match &s.node.op {
        Op::Rope(r) => Some(r.theta as f64),
        Op::SplitRope(r) => Some(r.theta as f64),
        _ => None,
    });
    if let (Some(spec), Some(file)) = (spec_theta, g.float(&key("rope.freq_base")))
        && (spec - file).abs() > 1e-6 * file.abs()
    {
        return Err(differ("rope_theta", spec.to_string(), file.to_string()));
    }
    Ok(())
}

/// The shards named by a `model.safetensors.index.json` (its `weight_map` values).
fn open_sharded(index: &Path) -> Result<Source, TrainError> {
    let bad = |message: String| TrainError::BadWeights {
        path: index.to_path_buf(),
        message,
    };
    let text = std::fs::read(index).map_err(TrainError::io(index, "read"))?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    let dir = super::parent_dir(index);
    open_safetensors(&files.iter().map(|f| dir.join(f)).collect::<Vec<_>>())
}

/// Maps each safetensors file and indexes its tensors; a name in two shards is refused.
fn open_safetensors(paths: &[PathBuf]) -> Result<Source, TrainError> {
    let mut shards = Vec::new();
    let mut index = BTreeMap::new();
    for path in paths {
        let bad = |message: String| TrainError::BadWeights {
            path: path.clone(),
            message,
        };
        let file = std::fs::File::open(path).map_err(TrainError::io(path, "open"))?;
        // SAFETY: read-only map kept as long as the import; the file must not change meanwhile.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(TrainError::io(path, "map"))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| {
            bad(format!(
                "not a safetensors or GGUF file ({e}); --init-from takes model.safetensors, a \
                 directory of shards, or a .gguf"
            ))
        })?;
        let base = map.as_ptr() as usize;
        for (name, view) in st.tensors() {
            let start = view.data().as_ptr() as usize - base;
            let entry = Entry {
                shard: shards.len(),
                dtype: view.dtype(),
                shape: view.shape().iter().map(|&d| d as u64).collect(),
                bytes: start..start + view.data().len(),
            };
            if index.insert(name.clone(), entry).is_some() {
                return Err(bad(format!("tensor `{name}` is in two shards")));
            }
        }
        shards.push(Shard {
            path: path.clone(),
            map,
        });
    }
    Ok(Source::Safetensors { shards, index })
}

/// Little-endian `F32`, `F16` or `BF16` bytes as `f32`; `None` for other dtypes.
fn safetensors_values(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    let halves = |f: fn(u16) -> f32| {
        bytes
            .chunks_exact(2)
            .map(|b| f(u16::from_le_bytes([b[0], b[1]])))
            .collect()
    };
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect(),
        Dtype::BF16 => halves(|b| half::bf16::from_bits(b).to_f32()),
        Dtype::F16 => halves(|b| half::f16::from_bits(b).to_f32()),
        _ => return None,
    })
}

/// The first few names, quoted and comma-separated, with a count of the rest.
fn list<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let names: Vec<&String> = names.into_iter().collect();
    let mut text: Vec<String> = names
        .iter()
        .take(LISTED)
        .map(|n| format!("`{n}`"))
        .collect();
    if names.len() > LISTED {
        text.push(format!("and {} more", names.len() - LISTED));
    }
    text.join(", ")
}

#[cfg(test)]
#[path = "import_tests.rs"]
mod tests;
