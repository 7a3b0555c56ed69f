//! Checkpoints: one directory per step, written atomically, the last few kept.
//!
//! `<root>/step-000120/` holds
//! - `model.safetensors`: the model weights;
//! - `optimizer.safetensors`: master weights and Adam moments;
//! - `meta.json`: format version, step, data position, RNG seed, the model/spec fingerprint and
//!   whatever else the trainer records (`extra`, any JSON value).
//!
//! Invariants: a directory named `step-<digits>` is always complete. It is first written as
//! `step-000120.tmp-<pid>`, every file and the directory flushed to disk, then renamed; a crash
//! leaves only a `.tmp-` directory, which [`latest_checkpoint`] ignores. An existing checkpoint is
//! never overwritten, and older ones are removed (renamed to a `.tmp-` name first, then deleted)
//! only once the new one is complete. Loading checks the fingerprint before reading tensors and
//! turns every malformed or missing file into a [`TrainError`], never a panic.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::data::DataPosition;
use super::{TrainError, sync_dir};

/// The `meta.json` format version this build writes and reads.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// File name of the model weights.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the optimizer state.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File name of the metadata.
pub const META_FILE: &str = "meta.json";

/// Element types a checkpoint tensor may have; written as safetensors' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TensorDtype {
    /// IEEE binary32.
    F32,
    /// bfloat16.
    BF16,
    /// IEEE binary16.
    F16,
    /// FP8 E4M3 (OCP "FN": no infinities).
    F8E4M3,
    /// FP8 E5M2.
    F8E5M2,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned byte.
    U8,
}

impl TensorDtype {
    /// The safetensors name: `F32`, `BF16`, `F16`, `F8_E4M3`, `F8_E5M2`, `I32`, `U8`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::BF16 => "BF16",
            Self::F16 => "F16",
            Self::F8E4M3 => "F8_E4M3",
            Self::F8E5M2 => "F8_E5M2",
            Self::I32 => "I32",
            Self::U8 => "U8",
        }
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::BF16 | Self::F16 => 2,
            Self::F8E4M3 | Self::F8E5M2 | Self::U8 => 1,
        }
    }

    fn to_safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::BF16 => Dtype::BF16,
            Self::F16 => Dtype::F16,
            Self::F8E4M3 => Dtype::F8_E4M3,
            Self::F8E5M2 => Dtype::F8_E5M2,
            Self::I32 => Dtype::I32,
            Self::U8 => Dtype::U8,
        }
    }

    fn from_safetensors(dtype: Dtype) -> Option<Self> {
        Some(match dtype {
            Dtype::F32 => Self::F32,
            Dtype::BF16 => Self::BF16,
            Dtype::F16 => Self::F16,
            Dtype::F8_E4M3 => Self::F8E4M3,
            Dtype::F8_E5M2 => Self::F8E5M2,
            Dtype::I32 => Self::I32,
            Dtype::U8 => Self::U8,
            _ => return None,
        })
    }
}

/// A tensor to save, borrowed from the caller: raw little-endian bytes of `shape` elements.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// Unique name within its file.
    pub name: &'a str,
    /// Element type.
    pub dtype: TensorDtype,
    /// Dimensions, outermost first.
    pub shape: &'a [usize],
    /// `shape.product() × dtype.size_bytes()` bytes.
    pub data: &'a [u8],
}

/// A tensor loaded from a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Its name.
    pub name: String,
    /// Element type.
    pub dtype: TensorDtype,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Raw little-endian bytes.
    pub data: Vec<u8>,
}

impl Tensor {
    /// A borrowed view, e.g. to save it again.
    pub fn view(&self) -> TensorRef<'_> {
        TensorRef {
            name: &self.name,
            dtype: self.dtype,
            shape: &self.shape,
            data: &self.data,
        }
    }
}

/// What `meta.json` records besides the format version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Optimizer steps completed.
    pub step: u64,
    /// Where the data loader stands, to resume it exactly.
    pub data_position: DataPosition,
    /// The run's RNG seed.
    pub seed: u64,
    /// Identifies the model and spec; a checkpoint loads only into a run with the same one.
    pub fingerprint: String,
    /// Anything else the trainer records (schedule, loss, options...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    format_version: u32,
    #[serde(flatten)]
    meta: CheckpointMeta,
}

/// A loaded checkpoint. Tensors are sorted by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The checkpoint directory.
    pub path: PathBuf,
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// Model weights.
    pub model: Vec<Tensor>,
    /// Optimizer state.
    pub optimizer: Vec<Tensor>,
}

impl Checkpoint {
    /// The model tensor called `name`.
    pub fn model_tensor(&self, name: &str) -> Option<&Tensor> {
        self.model.iter().find(|t| t.name == name)
    }

    /// The optimizer tensor called `name`.
    pub fn optimizer_tensor(&self, name: &str) -> Option<&Tensor> {
        self.optimizer.iter().find(|t| t.name == name)
    }
}

/// The directory name of the checkpoint of `step`: `step-000120`.
pub fn checkpoint_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// The step of a complete checkpoint's directory name (`step-` and digits only).
fn parse_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A `.tmp-` name next to `final_name`, private to this process.
fn tmp_name(final_name: &str, what: &str) -> String {
    format!("{final_name}.tmp-{}{what}", std::process::id())
}

/// Saves a checkpoint of `meta.step` under `root` and returns its directory.
///
/// Writes atomically (see the module doc), refuses to overwrite an existing checkpoint of the
/// same step, then keeps only the `keep_last` newest checkpoints by step (0 keeps all); the one
/// just written is never removed.
pub fn save_checkpoint(
    root: &Path,
    meta: &CheckpointMeta,
    model: &[TensorRef<'_>],
    optimizer: &[TensorRef<'_>],
    keep_last: usize,
) -> Result<PathBuf, TrainError> {
    fs::create_dir_all(root).map_err(TrainError::io(root, "create checkpoint directory"))?;
    let name = checkpoint_dir_name(meta.step);
    let final_dir = root.join(&name);
    if final_dir.exists() {
        return Err(TrainError::CheckpointExists { path: final_dir });
    }
    let tmp_dir = root.join(tmp_name(&name, ""));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir).map_err(TrainError::io(&tmp_dir, "remove stale"))?;
    }
    fs::create_dir(&tmp_dir).map_err(TrainError::io(&tmp_dir, "create"))?;

    let written = write_contents(&tmp_dir, meta, model, optimizer);
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp_dir);
        return Err(e);
    }
    fs::rename(&tmp_dir, &final_dir).map_err(|e| {
        let _ = fs::remove_dir_all(&tmp_dir);
        TrainError::io(&tmp_dir, format!("rename to `{}`", final_dir.display()))(e)
    })?;
    sync_dir(root)?;

    if keep_last > 0 {
        let all = list_checkpoints(root)?;
        let excess = all.len().saturating_sub(keep_last);
        for (_, old) in all.iter().filter(|(_, p)| *p != final_dir).take(excess) {
            remove_checkpoint(old)?;
        }
    }
    Ok(final_dir)
}

/// Writes the three files into `dir` and flushes them and the directory.
fn write_contents(
    dir: &Path,
    meta: &CheckpointMeta,
    model: &[TensorRef<'_>],
    optimizer: &[TensorRef<'_>],
) -> Result<(), TrainError> {
    write_tensors(&dir.join(MODEL_FILE), model)?;
    write_tensors(&dir.join(OPTIMIZER_FILE), optimizer)?;
    let meta_path = dir.join(META_FILE);
    let file = MetaFile {
        format_version: CHECKPOINT_FORMAT_VERSION,
        meta: meta.clone(),
    };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| TrainError::Io {
        path: meta_path.clone(),
        action: "serialize".into(),
        source: e.into(),
    })?;
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&meta_path)?;
        f.write_all(&json)?;
        f.sync_all()
    };
    write().map_err(TrainError::io(&meta_path, "write"))?;
    sync_dir(dir)
}

/// Writes `tensors` to one safetensors file at `path` and flushes it to disk; names must be
/// unique and each tensor's bytes must match its shape and dtype.
pub fn write_tensors(path: &Path, tensors: &[TensorRef<'_>]) -> Result<(), TrainError> {
    let mut names = HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let bad = |message: String| TrainError::BadTensor {
            path: path.to_path_buf(),
            name: t.name.to_string(),
            message,
        };
        if !names.insert(t.name) {
            return Err(bad("the name appears twice".into()));
        }
        let elements: usize = t.shape.iter().product();
        let expected = elements * t.dtype.size_bytes();
        if t.data.len() != expected {
            return Err(bad(format!(
                "shape {:?} of {} needs {expected} bytes, got {}",
                t.shape,
                t.dtype.name(),
                t.data.len()
            )));
        }
        let view = TensorView::new(t.dtype.to_safetensors(), t.shape.to_vec(), t.data)
            .map_err(|e| bad(e.to_string()))?;
        views.push((t.name, view));
    }
    safetensors::serialize_to_file(views, None, path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => TrainError::Io {
            path: path.to_path_buf(),
            action: "write".into(),
            source,
        },
        other => TrainError::Io {
            path: path.to_path_buf(),
            action: "serialize tensors into".into(),
            source: std::io::Error::other(other),
        },
    })?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(TrainError::io(path, "flush"))
}

/// Renames a complete checkpoint out of the `step-N` namespace, then deletes it, so that a crash
/// mid-deletion never leaves a partial directory that looks complete.
fn remove_checkpoint(dir: &Path) -> Result<(), TrainError> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let doomed = dir.with_file_name(tmp_name(&name, "-old"));
    fs::rename(dir, &doomed).map_err(TrainError::io(dir, "retire old checkpoint"))?;
    fs::remove_dir_all(&doomed).map_err(TrainError::io(&doomed, "remove old checkpoint"))
}

/// The complete checkpoints under `root`, sorted by step; none if `root` does not exist.
pub fn list_checkpoints(root: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(root, "list checkpoints in")(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(TrainError::io(root, "list checkpoints in"))?;
        let Some(step) = entry.file_name().to_str().and_then(parse_dir_name) else {
            continue;
        };
        if entry.path().is_dir() {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint under `root`, if any; `.tmp-` leftovers are ignored.
pub fn latest_checkpoint(root: &Path) -> Result<Option<PathBuf>, TrainError> {
    Ok(list_checkpoints(root)?.pop().map(|(_, p)| p))
}

/// Loads the checkpoint in directory `path`, refusing one whose fingerprint is not
/// `expected_fingerprint`, of another format version, or with a missing or corrupt file.
pub fn load_checkpoint(path: &Path, expected_fingerprint: &str) -> Result<Checkpoint, TrainError> {
    let meta_path = path.join(META_FILE);
    let corrupt = |file: &Path, message: String| TrainError::CorruptCheckpoint {
        path: file.to_path_buf(),
        message,
    };
    let text = read_file(&meta_path)?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| corrupt(&meta_path, format!("not valid JSON: {e}")))?;
    let version = value.get("format_version").and_then(|v| v.as_u64());
    match version {
        Some(v) if v == CHECKPOINT_FORMAT_VERSION as u64 => {}
        Some(v) => {
            return Err(TrainError::CheckpointVersion {
                path: meta_path,
                found: v.min(u32::MAX as u64) as u32,
                expected: CHECKPOINT_FORMAT_VERSION,
            });
        }
        None => {
            return Err(corrupt(
                &meta_path,
                "no unsigned integer `format_version` field".into(),
            ));
        }
    }
    let file: MetaFile = serde_json::from_value(value)
        .map_err(|e| corrupt(&meta_path, format!("unexpected contents: {e}")))?;
    if file.meta.fingerprint != expected_fingerprint {
        return Err(TrainError::FingerprintMismatch {
            path: path.to_path_buf(),
            expected: expected_fingerprint.to_string(),
            found: file.meta.fingerprint,
        });
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        meta: file.meta,
        model: read_tensors(&path.join(MODEL_FILE))?,
        optimizer: read_tensors(&path.join(OPTIMIZER_FILE))?,
    })
}

/// Reads a whole checkpoint file; a missing file is a corrupt checkpoint.
fn read_file(path: &Path) -> Result<Vec<u8>, TrainError> {
    fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TrainError::CorruptCheckpoint {
                path: path.to_path_buf(),
                message: "the file is missing".into(),
            }
        } else {
            TrainError::io(path, "read")(e)
        }
    })
}

fn read_tensors(path: &Path) -> Result<Vec<Tensor>, TrainError> {
    let bytes = read_file(path)?;
    let corrupt = |message: String| TrainError::CorruptCheckpoint {
        path: path.to_path_buf(),
        message,
    };
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file ({e})")))?;
    let mut tensors = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        let dtype = TensorDtype::from_safetensors(view.dtype()).ok_or_else(|| {
            corrupt(format!(
                "tensor `{name}` has dtype {:?}, which checkpoints do not use",
                view.dtype()
            ))
        })?;
        tensors.push(Tensor {
            name: name.to_string(),
            dtype,
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "qwen-tiny/sha:1234";

    fn meta(step: u64) -> CheckpointMeta {
        CheckpointMeta {
            step,
            data_position: DataPosition {
                seed: 5,
                epoch: 1,
                index: step,
            },
            seed: 99,
            fingerprint: FP.into(),
            extra: serde_json::json!({ "loss": 2.5, "schedule": "cosine" }),
        }
    }

    /// Tensors whose bytes depend on `salt`, with bit patterns that a float round trip would
    /// not preserve (NaN payloads, -0.0, subnormals).
    fn tensors(salt: u8) -> Vec<Tensor> {
        let f32s: Vec<u8> = [
            f32::from_bits(0x7FC0_1234),
            -0.0,
            1e-45,
            3.5,
            -7.25,
            f32::MAX,
        ]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
        let bytes = |n: usize| (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect();
        vec![
            Tensor {
                name: "wte".into(),
                dtype: TensorDtype::F32,
                shape: vec![2, 3],
                data: f32s,
            },
            Tensor {
                name: "blocks.0.attn.qkv".into(),
                dtype: TensorDtype::BF16,
                shape: vec![4, 2],
                data: bytes(16),
            },
            Tensor {
                name: "blocks.0.mlp.up".into(),
                dtype: TensorDtype::F8E4M3,
                shape: vec![5, 3],
                data: bytes(15),
            },
            Tensor {
                name: "step_counts".into(),
                dtype: TensorDtype::I32,
                shape: vec![3],
                data: bytes(12),
            },
        ]
    }

    fn views(t: &[Tensor]) -> Vec<TensorRef<'_>> {
        t.iter().map(Tensor::view).collect()
    }

    fn save(root: &Path, step: u64, keep: usize) -> PathBuf {
        let (m, o) = (tensors(step as u8), tensors(step as u8 ^ 0xFF));
        save_checkpoint(root, &meta(step), &views(&m), &views(&o), keep).unwrap()
    }

    fn sorted(mut t: Vec<Tensor>) -> Vec<Tensor> {
        t.sort_by(|a, b| a.name.cmp(&b.name));
        t
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let root = tempfile::tempdir().unwrap();
        let path = save(root.path(), 120, 0);
        assert_eq!(path.file_name().unwrap(), "step-000120");
        let ck = load_checkpoint(&path, FP).unwrap();
        assert_eq!(ck.meta, meta(120));
        assert_eq!(ck.model, sorted(tensors(120)));
        assert_eq!(ck.optimizer, sorted(tensors(120 ^ 0xFF)));
        let wte = ck.model_tensor("wte").unwrap();
        assert_eq!(
            f32::from_le_bytes(wte.data[..4].try_into().unwrap()).to_bits(),
            0x7FC0_1234
        );
        // The files are standard safetensors with the standard dtype names.
        let bytes = fs::read(path.join(MODEL_FILE)).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8_lossy(&bytes[8..8 + header_len]);
        assert!(header.contains("\"F8_E4M3\"") && header.contains("\"BF16\""));
    }

    #[test]
    fn keeps_only_the_last_k() {
        let root = tempfile::tempdir().unwrap();
        for step in [10, 20, 30, 40, 50] {
            save(root.path(), step, 2);
        }
        let steps: Vec<u64> = list_checkpoints(root.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, [40, 50]);
        let names: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "leftovers: {names:?}");
        assert_eq!(
            latest_checkpoint(root.path()).unwrap().unwrap(),
            root.path().join("step-000050")
        );
    }

    #[test]
    fn crash_leftovers_are_ignored_and_good_checkpoints_never_overwritten() {
        let root = tempfile::tempdir().unwrap();
        let good = save(root.path(), 50, 3);
        // A crash while writing step 60: a partial .tmp directory stays behind.
        let crashed = root.path().join("step-000060.tmp-4242");
        fs::create_dir(&crashed).unwrap();
        fs::write(crashed.join(MODEL_FILE), b"partial").unwrap();
        fs::create_dir(root.path().join("notes")).unwrap();
        assert_eq!(latest_checkpoint(root.path()).unwrap().unwrap(), good);

        // Saving step 50 again is refused and leaves the good one byte for byte.
        let before = fs::read(good.join(MODEL_FILE)).unwrap();
        let (m, o) = (tensors(1), tensors(2));
        let err = save_checkpoint(root.path(), &meta(50), &views(&m), &views(&o), 3).unwrap_err();
        assert!(matches!(err, TrainError::CheckpointExists { .. }), "{err}");
        assert_eq!(fs::read(good.join(MODEL_FILE)).unwrap(), before);
        assert!(load_checkpoint(&good, FP).is_ok());

        // The resumed run saves step 60 beside the leftover.
        let next = save(root.path(), 60, 3);
        assert_eq!(latest_checkpoint(root.path()).unwrap().unwrap(), next);
        assert!(
            crashed.exists(),
            "another process's leftovers are left alone"
        );
    }

    #[test]
    fn failed_save_leaves_no_directory_behind() {
        let root = tempfile::tempdir().unwrap();
        let m = tensors(0);
        let mut bad = views(&m);
        bad[1].shape = &[3, 3];
        let err = save_checkpoint(root.path(), &meta(7), &bad, &[], 0).unwrap_err();
        assert!(err.to_string().contains("blocks.0.attn.qkv"), "{err}");
        let dup = [views(&m)[0], views(&m)[0]];
        let err = save_checkpoint(root.path(), &meta(7), &dup, &[], 0).unwrap_err();
        assert!(matches!(err, TrainError::BadTensor { .. }), "{err}");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn another_models_checkpoint_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let path = save(root.path(), 3, 0);
        let err = load_checkpoint(&path, "llama-7b/sha:ffff").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TrainError::FingerprintMismatch { .. }));
        assert!(
            msg.contains(FP) && msg.contains("llama-7b/sha:ffff"),
            "{msg}"
        );
    }

    #[test]
    fn corrupt_or_missing_files_are_errors() {
        let root = tempfile::tempdir().unwrap();
        let path = save(root.path(), 3, 0);

        let model = path.join(MODEL_FILE);
        let bytes = fs::read(&model).unwrap();
        fs::write(&model, &bytes[..bytes.len() - 5]).unwrap();
        let err = load_checkpoint(&path, FP).unwrap_err();
        assert!(matches!(err, TrainError::CorruptCheckpoint { ref path, .. } if *path == model));
        fs::write(&model, &bytes[..3]).unwrap();
        assert!(matches!(
            load_checkpoint(&path, FP),
            Err(TrainError::CorruptCheckpoint { .. })
        ));
        fs::write(&model, &bytes).unwrap();

        fs::remove_file(path.join(OPTIMIZER_FILE)).unwrap();
        let err = load_checkpoint(&path, FP).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");

        let meta_path = path.join(META_FILE);
        let text = fs::read_to_string(&meta_path).unwrap();
        fs::write(&meta_path, &text[..text.len() / 2]).unwrap();
        assert!(matches!(
            load_checkpoint(&path, FP),
            Err(TrainError::CorruptCheckpoint { .. })
        ));
        let newer = text.replace("\"format_version\": 1", "\"format_version\": 9");
        assert_ne!(newer, text);
        fs::write(&meta_path, newer).unwrap();
        assert!(matches!(
            load_checkpoint(&path, FP),
            Err(TrainError::CheckpointVersion { found: 9, .. })
        ));
    }

    #[test]
    fn dir_names_parse_strictly() {
        assert_eq!(parse_dir_name(&checkpoint_dir_name(120)), Some(120));
        assert_eq!(
            parse_dir_name(&checkpoint_dir_name(12_345_678)),
            Some(12_345_678)
        );
        assert_eq!(parse_dir_name("step-000120.tmp-77"), None);
        assert_eq!(parse_dir_name("step-"), None);
        assert_eq!(parse_dir_name("step-12a"), None);
    }
}
