//! Token files in the llm.c / LLMQ format, a memory-mapped data set over several of them, and a
//! deterministic, resumable loader of micro-batches.
//!
//! A token file is a header of 256 little-endian `i32` (magic 20240520, version, token count)
//! followed by the tokens, `u16` for version 1 and `u32` for version 2; `docs/data.md` gives the
//! details. [`TokenDataset`] opens files from paths or glob patterns and checks every token
//! against the vocabulary once, so the loader never has to. [`DataLoader`] cuts each file into
//! windows of `seq + 1` tokens (stride `seq`, windows never cross files), visits the windows of
//! an epoch in an order shuffled by a seed, and can resume from a [`DataPosition`] exactly.
//! The shuffle uses Fisher–Yates over [`SplitMix64`], both written here, so an order depends
//! only on (seed, epoch, number of windows) and stays the same across versions of this crate
//! and of its dependencies.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::{TrainError, parent_dir, sync_dir};

/// header[0] of every token file.
pub const MAGIC: i32 = 20240520;
/// Number of `i32` in the header.
pub const HEADER_INTS: usize = 256;
/// Size of the header in bytes.
pub const HEADER_BYTES: usize = HEADER_INTS * 4;

/// The token-file version, which fixes the width of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenVersion {
    /// Version 1: tokens are `u16` (vocabularies up to 65,536).
    U16,
    /// Version 2: tokens are `u32`.
    U32,
}

impl TokenVersion {
    /// The version for header[1], if it is a known one.
    pub fn from_number(number: i32) -> Option<Self> {
        match number {
            1 => Some(Self::U16),
            2 => Some(Self::U32),
            _ => None,
        }
    }

    /// The number written in header[1].
    pub fn number(self) -> u32 {
        match self {
            Self::U16 => 1,
            Self::U32 => 2,
        }
    }

    /// Bytes per token.
    pub fn token_bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }

    /// The smallest version whose tokens can hold ids below `vocab_size`.
    pub fn for_vocab(vocab_size: u32) -> Self {
        if vocab_size <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }
}

/// One memory-mapped, validated token file.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    map: Mmap,
    version: TokenVersion,
    len: u64,
}

impl TokenFile {
    /// Opens and validates `path`: magic, version, length against the header's count, and every
    /// token id below `vocab_size`.
    pub fn open(path: impl AsRef<Path>, vocab_size: u32) -> Result<Self, TrainError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(TrainError::io(&path, "open token file"))?;
        let actual_bytes = file
            .metadata()
            .map_err(TrainError::io(&path, "read the size of"))?
            .len();
        if actual_bytes < HEADER_BYTES as u64 {
            return Err(TrainError::BadHeader {
                path,
                message: format!(
                    "the file is {actual_bytes} bytes, shorter than the {HEADER_BYTES}-byte header"
                ),
            });
        }
        // SAFETY: the map is read-only; a token file must not be modified while training reads
        // it (docs/data.md says so), as with any memory-mapped input.
        let map = unsafe { Mmap::map(&file) }.map_err(TrainError::io(&path, "memory-map"))?;
        let header = |i: usize| i32::from_le_bytes(map[4 * i..4 * i + 4].try_into().unwrap());
        if header(0) != MAGIC {
            return Err(TrainError::BadMagic {
                path,
                found: header(0),
                expected: MAGIC,
            });
        }
        let version = TokenVersion::from_number(header(1)).ok_or(TrainError::BadVersion {
            path: path.clone(),
            found: header(1),
        })?;
        let count = header(2);
        if count < 0 {
            return Err(TrainError::BadHeader {
                path,
                message: format!("header[2] (the token count) is negative: {count}"),
            });
        }
        let len = count as u64;
        let expected_bytes = HEADER_BYTES as u64 + len * version.token_bytes() as u64;
        if expected_bytes != actual_bytes {
            return Err(TrainError::LengthMismatch {
                path,
                header_tokens: len,
                expected_bytes,
                actual_bytes,
            });
        }
        let file = TokenFile {
            path,
            map,
            version,
            len,
        };
        file.check_vocab(vocab_size)?;
        Ok(file)
    }

    fn check_vocab(&self, vocab_size: u32) -> Result<(), TrainError> {
        let bad = (0..self.len).find(|&i| self.token(i) >= vocab_size);
        match bad {
            None => Ok(()),
            Some(position) => Err(TrainError::TokenOutOfRange {
                path: self.path.clone(),
                position,
                id: self.token(position),
                vocab_size,
            }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's version.
    pub fn version(&self) -> TokenVersion {
        self.version
    }

    /// Number of tokens.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token `index` (`index < len()`).
    pub fn token(&self, index: u64) -> u32 {
        let width = self.version.token_bytes();
        let at = HEADER_BYTES + index as usize * width;
        let bytes = &self.map[at..at + width];
        match self.version {
            TokenVersion::U16 => u16::from_le_bytes([bytes[0], bytes[1]]) as u32,
            TokenVersion::U32 => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        }
    }

    /// Copies tokens `start..start + out.len()` into `out` as `i32`.
    fn copy_to(&self, start: u64, out: &mut [i32]) {
        for (k, slot) in out.iter_mut().enumerate() {
            *slot = self.token(start + k as u64) as i32;
        }
    }
}

/// A set of token files, opened in the order given (each glob pattern expanded in sorted order),
/// with every token checked to lie below the vocabulary size.
#[derive(Debug)]
pub struct TokenDataset {
    files: Vec<TokenFile>,
    vocab_size: u32,
}

impl TokenDataset {
    /// Opens the files named by `patterns`: each is a path or a glob pattern (`data/train_*.bin`).
    /// A pattern matching nothing is an error naming it. A file listed twice is read twice.
    pub fn open<S: AsRef<str>>(patterns: &[S], vocab_size: u32) -> Result<Self, TrainError> {
        if patterns.is_empty() {
            return Err(TrainError::NoFiles);
        }
        let mut files = Vec::new();
        for pattern in patterns {
            for path in expand_pattern(pattern.as_ref())? {
                files.push(TokenFile::open(path, vocab_size)?);
            }
        }
        Ok(TokenDataset { files, vocab_size })
    }

    /// The files, in reading order.
    pub fn files(&self) -> &[TokenFile] {
        &self.files
    }

    /// Tokens in all files.
    pub fn num_tokens(&self) -> u64 {
        self.files.iter().map(TokenFile::len).sum()
    }

    /// The vocabulary size the tokens were checked against.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }
}

/// A literal path if it names an existing file, else a glob pattern expanded in sorted order.
fn expand_pattern(pattern: &str) -> Result<Vec<PathBuf>, TrainError> {
    if Path::new(pattern).is_file() {
        return Ok(vec![PathBuf::from(pattern)]);
    }
    let paths = glob::glob(pattern).map_err(|e| TrainError::BadPattern {
        pattern: pattern.to_string(),
        message: e.to_string(),
    })?;
    let mut found = Vec::new();
    for entry in paths {
        let path = entry.map_err(|e| {
            let path = e.path().to_path_buf();
            TrainError::io(path, format!("read while expanding `{pattern}`"))(e.into())
        })?;
        if path.is_file() {
            found.push(path);
        }
    }
    if found.is_empty() {
        return Err(TrainError::NoMatch {
            pattern: pattern.to_string(),
        });
    }
    found.sort();
    Ok(found)
}

/// Writes `tokens` as a token file of `version`, atomically: into `<path>.tmp-<pid>`, flushed to
/// disk, then renamed over `path`. A token too wide for the version is an error.
pub fn write_token_file(
    path: impl AsRef<Path>,
    tokens: &[u32],
    version: TokenVersion,
) -> Result<(), TrainError> {
    let path = path.as_ref();
    let limit = i32::MAX as u64;
    if tokens.len() as u64 > limit {
        return Err(TrainError::TooManyTokens {
            path: path.to_path_buf(),
            count: tokens.len() as u64,
            limit,
        });
    }
    if version == TokenVersion::U16
        && let Some(position) = tokens.iter().position(|&t| t > u16::MAX as u32)
    {
        return Err(TrainError::TokenTooWide {
            path: path.to_path_buf(),
            position: position as u64,
            id: tokens[position],
            version: version.number(),
            width: 16,
        });
    }
    let mut header = [0i32; HEADER_INTS];
    header[0] = MAGIC;
    header[1] = version.number() as i32;
    header[2] = tokens.len() as i32;

    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        let mut out = BufWriter::new(&file);
        for h in header {
            out.write_all(&h.to_le_bytes())?;
        }
        for &t in tokens {
            match version {
                TokenVersion::U16 => out.write_all(&(t as u16).to_le_bytes())?,
                TokenVersion::U32 => out.write_all(&t.to_le_bytes())?,
            }
        }
        out.flush()?;
        drop(out);
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(TrainError::io(&tmp, "write token file")(e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        TrainError::io(&tmp, format!("rename to `{}`", path.display()))(e)
    })?;
    sync_dir(parent_dir(path))
}

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny generator whose output depends only on its
/// seed, used for the data order so that it never changes with a dependency's version.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64-bit word.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// A uniform integer in `0..n` (`n > 0`), without modulo bias (rejection sampling).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below needs n > 0");
        // Accept words below the largest multiple of n that fits in 2^64.
        let reject = (u64::MAX % n + 1) % n; // 2^64 mod n
        loop {
            let r = self.next_u64();
            if r <= u64::MAX - reject {
                return r % n;
            }
        }
    }
}

/// SplitMix64's finaliser: a bijective mix of a 64-bit word.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The order in which epoch `epoch` visits windows `0..n` under `seed`: Fisher–Yates driven by a
/// SplitMix64 whose seed mixes `seed` and `epoch`, so every epoch has an unrelated order.
pub fn epoch_order(seed: u64, epoch: u64, n: u64) -> Vec<u64> {
    let mut rng = SplitMix64::new(seed ^ mix64(epoch.wrapping_add(0x6A09_E667_F3BC_C908)));
    let mut order: Vec<u64> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        order.swap(i as usize, j as usize);
    }
    order
}

/// Where a [`DataLoader`] stands: the next batch is batch `index` of epoch `epoch` under `seed`.
/// Resuming from it needs the same files, batch size and sequence length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataPosition {
    /// The shuffle seed.
    pub seed: u64,
    /// The epoch, from 0.
    pub epoch: u64,
    /// Batches of this epoch already given out.
    pub index: u64,
}

/// One micro-batch: `batch` rows of `seq` tokens, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Input tokens, `batch × seq`.
    pub inputs: Vec<i32>,
    /// Target tokens: each row's inputs shifted left by one, `batch × seq`.
    pub targets: Vec<i32>,
}

/// Gives out micro-batches of a [`TokenDataset`] forever, epoch after epoch, each epoch in a
/// seeded shuffled order of windows. The last `windows mod batch` windows of an epoch's order
/// are skipped, so every batch is full.
#[derive(Debug)]
pub struct DataLoader {
    dataset: TokenDataset,
    batch: usize,
    seq: usize,
    /// `window_starts[f]` is the first global window index of file `f`; one more entry at the end.
    window_starts: Vec<u64>,
    position: DataPosition,
    order: Vec<u64>,
}

impl DataLoader {
    /// A loader at the start of epoch 0.
    pub fn new(
        dataset: TokenDataset,
        batch: usize,
        seq: usize,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let start = DataPosition {
            seed,
            epoch: 0,
            index: 0,
        };
        Self::from_position(dataset, batch, seq, start)
    }

    /// A loader that continues exactly where the loader that reported `position` stood.
    pub fn from_position(
        dataset: TokenDataset,
        batch: usize,
        seq: usize,
        position: DataPosition,
    ) -> Result<Self, TrainError> {
        if batch == 0 || seq == 0 {
            return Err(TrainError::BadLoaderShape {
                message: format!("batch ({batch}) and sequence length ({seq}) must be at least 1"),
            });
        }
        let mut window_starts = vec![0u64];
        for file in dataset.files() {
            let windows = file.len().saturating_sub(1) / seq as u64;
            window_starts.push(window_starts.last().unwrap() + windows);
        }
        let windows = *window_starts.last().unwrap();
        if windows < batch as u64 {
            return Err(TrainError::NotEnoughTokens {
                tokens: dataset.num_tokens(),
                files: dataset.files().len(),
                windows,
                window_len: seq + 1,
                batch,
                seq,
                needed: (batch * seq + 1) as u64,
            });
        }
        let batches_per_epoch = windows / batch as u64;
        if position.index > batches_per_epoch {
            return Err(TrainError::BadDataPosition {
                epoch: position.epoch,
                index: position.index,
                batches_per_epoch,
            });
        }
        let order = epoch_order(position.seed, position.epoch, windows);
        Ok(DataLoader {
            dataset,
            batch,
            seq,
            window_starts,
            position,
            order,
        })
    }

    /// Moves the loader to `position` (same files, batch and sequence length), as
    /// [`Self::from_position`] would have built it.
    pub fn seek(&mut self, position: DataPosition) -> Result<(), TrainError> {
        let batches_per_epoch = self.batches_per_epoch();
        if position.index > batches_per_epoch {
            return Err(TrainError::BadDataPosition {
                epoch: position.epoch,
                index: position.index,
                batches_per_epoch,
            });
        }
        self.order = epoch_order(position.seed, position.epoch, self.num_windows());
        self.position = position;
        Ok(())
    }

    /// Where the loader stands; save it in a checkpoint to resume with [`Self::from_position`].
    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// Full batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        self.num_windows() / self.batch as u64
    }

    /// Windows of `seq + 1` tokens in the data set.
    pub fn num_windows(&self) -> u64 {
        *self.window_starts.last().unwrap()
    }

    /// Sequences per batch.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Tokens per sequence.
    pub fn seq_len(&self) -> usize {
        self.seq
    }

    /// The data set read.
    pub fn dataset(&self) -> &TokenDataset {
        &self.dataset
    }

    /// The next micro-batch; moves to the next epoch (and its new order) when one is used up.
    pub fn next_batch(&mut self) -> Batch {
        if self.position.index == self.batches_per_epoch() {
            self.position.epoch += 1;
            self.position.index = 0;
            self.order = epoch_order(self.position.seed, self.position.epoch, self.num_windows());
        }
        let (batch, seq) = (self.batch, self.seq);
        let mut inputs = vec![0i32; batch * seq];
        let mut targets = vec![0i32; batch * seq];
        let mut window = vec![0i32; seq + 1];
        let first = self.position.index as usize * batch;
        for row in 0..batch {
            let (file, start) = self.locate(self.order[first + row]);
            self.dataset.files[file].copy_to(start, &mut window);
            inputs[row * seq..(row + 1) * seq].copy_from_slice(&window[..seq]);
            targets[row * seq..(row + 1) * seq].copy_from_slice(&window[1..]);
        }
        self.position.index += 1;
        Batch { inputs, targets }
    }

    /// The file and first token of global window `w`.
    fn locate(&self, w: u64) -> (usize, u64) {
        let file = self.window_starts.partition_point(|&s| s <= w) - 1;
        (file, (w - self.window_starts[file]) * self.seq as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn write(dir: &Path, name: &str, tokens: &[u32], version: TokenVersion) -> PathBuf {
        let path = dir.join(name);
        write_token_file(&path, tokens, version).unwrap();
        path
    }

    fn s(p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }

    #[test]
    fn round_trip_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let tokens: Vec<u32> = (0..1000u32).map(|i| (i * 7919) % 65_536).collect();
        for version in [TokenVersion::U16, TokenVersion::U32] {
            let path = write(dir.path(), "t.bin", &tokens, version);
            let bytes = fs::metadata(&path).unwrap().len();
            assert_eq!(bytes, 1024 + 1000 * version.token_bytes() as u64);
            let file = TokenFile::open(&path, 65_536).unwrap();
            assert_eq!(file.version(), version);
            let back: Vec<u32> = (0..file.len()).map(|i| file.token(i)).collect();
            assert_eq!(back, tokens);
        }
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn wide_token_needs_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_token_file(dir.path().join("w.bin"), &[1, 70_000], TokenVersion::U16)
            .unwrap_err();
        assert!(matches!(
            err,
            TrainError::TokenTooWide {
                position: 1,
                id: 70_000,
                ..
            }
        ));
        let path = write(dir.path(), "w.bin", &[1, 70_000], TokenVersion::U32);
        assert_eq!(TokenFile::open(path, 100_000).unwrap().token(1), 70_000);
    }

    #[test]
    fn bad_header_fields_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.bin", &[1, 2, 3], TokenVersion::U16);
        let good = fs::read(&path).unwrap();

        let mut bytes = good.clone();
        bytes[0..4].copy_from_slice(&7i32.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = TokenFile::open(&path, 10).unwrap_err();
        assert!(
            matches!(err, TrainError::BadMagic { found: 7, .. }),
            "{err}"
        );

        let mut bytes = good.clone();
        bytes[4..8].copy_from_slice(&3i32.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = TokenFile::open(&path, 10).unwrap_err();
        assert!(
            matches!(err, TrainError::BadVersion { found: 3, .. }),
            "{err}"
        );

        fs::write(&path, &good[..100]).unwrap();
        let err = TokenFile::open(&path, 10).unwrap_err();
        assert!(matches!(err, TrainError::BadHeader { .. }), "{err}");
    }

    #[test]
    fn truncated_file_names_both_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.bin", &[5; 100], TokenVersion::U16);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = TokenFile::open(&path, 10).unwrap_err();
        match &err {
            TrainError::LengthMismatch {
                header_tokens,
                expected_bytes,
                actual_bytes,
                ..
            } => {
                assert_eq!(*header_tokens, 100);
                assert_eq!(*expected_bytes, 1224);
                assert_eq!(*actual_bytes, 1221);
            }
            other => panic!("unexpected error {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("1224") && msg.contains("1221") && msg.contains("a.bin"));
    }

    #[test]
    fn token_out_of_vocab_names_position_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "a.bin",
            &[1, 2, 3, 50, 4, 60],
            TokenVersion::U16,
        );
        let err = TokenFile::open(&path, 50).unwrap_err();
        assert!(
            matches!(
                err,
                TrainError::TokenOutOfRange {
                    position: 3,
                    id: 50,
                    vocab_size: 50,
                    ..
                }
            ),
            "{err}"
        );
        assert!(TokenFile::open(&path, 61).is_ok());
    }

    #[test]
    fn glob_expands_sorted_and_reports_empty_patterns() {
        let dir = tempfile::tempdir().unwrap();
        // Written out of order: the data set must read them sorted by name.
        write(dir.path(), "train_02.bin", &[2; 10], TokenVersion::U16);
        write(dir.path(), "train_00.bin", &[0; 10], TokenVersion::U16);
        write(dir.path(), "train_01.bin", &[1; 10], TokenVersion::U16);
        write(dir.path(), "val_00.bin", &[9; 10], TokenVersion::U16);
        let pattern = s(&dir.path().join("train_*.bin"));
        let ds = TokenDataset::open(&[pattern], 16).unwrap();
        let first: Vec<u32> = ds.files().iter().map(|f| f.token(0)).collect();
        assert_eq!(first, [0, 1, 2]);
        assert_eq!(ds.num_tokens(), 30);

        let missing = s(&dir.path().join("test_*.bin"));
        let err = TokenDataset::open(std::slice::from_ref(&missing), 16).unwrap_err();
        assert!(err.to_string().contains(&missing), "{err}");
        let err = TokenDataset::open::<String>(&[], 16).unwrap_err();
        assert!(matches!(err, TrainError::NoFiles));
    }

    /// A data set whose token at position `i` of file `f` is `f * 10_000 + i`, so a batch row
    /// tells which window it came from.
    fn counting_dataset(dir: &Path, lens: &[u32]) -> TokenDataset {
        let mut names = Vec::new();
        for (f, &len) in lens.iter().enumerate() {
            let tokens: Vec<u32> = (0..len).map(|i| f as u32 * 10_000 + i).collect();
            names.push(s(&write(
                dir,
                &format!("{f}.bin"),
                &tokens,
                TokenVersion::U32,
            )));
        }
        TokenDataset::open(&names, 100_000).unwrap()
    }

    /// (file, first token) of every row of `batch`, checking that targets are inputs shifted.
    fn rows(batch: &Batch, seq: usize) -> Vec<(i32, i32)> {
        let rows = batch.inputs.len() / seq;
        (0..rows)
            .map(|r| {
                let inp = &batch.inputs[r * seq..(r + 1) * seq];
                let tgt = &batch.targets[r * seq..(r + 1) * seq];
                for k in 0..seq {
                    assert_eq!(tgt[k], inp[k] + 1, "target is not the next token");
                }
                (inp[0] / 10_000, inp[0] % 10_000)
            })
            .collect()
    }

    #[test]
    fn an_epoch_visits_every_window_once() {
        let dir = tempfile::tempdir().unwrap();
        let seq = 8;
        // Windows per file: (41-1)/8 = 5, (17-1)/8 = 2, (30-1)/8 = 3 → 10 windows.
        let ds = counting_dataset(dir.path(), &[41, 17, 30]);
        let mut loader = DataLoader::new(ds, 2, seq, 42).unwrap();
        assert_eq!(loader.num_windows(), 10);
        assert_eq!(loader.batches_per_epoch(), 5);
        let mut seen = BTreeSet::new();
        for _ in 0..5 {
            let b = loader.next_batch();
            for (file, start) in rows(&b, seq) {
                assert_eq!(start % seq as i32, 0, "windows start at multiples of seq");
                assert!(seen.insert((file, start)), "window visited twice");
            }
        }
        let expected: BTreeSet<(i32, i32)> = [(0, 5), (1, 2), (2, 3)]
            .iter()
            .flat_map(|&(f, n)| (0..n).map(move |w| (f, w * seq as i32)))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(
            loader.position(),
            DataPosition {
                seed: 42,
                epoch: 0,
                index: 5
            }
        );
        loader.next_batch();
        assert_eq!(loader.position().epoch, 1);
        assert_eq!(loader.position().index, 1);
    }

    #[test]
    fn order_depends_on_seed_and_epoch_only() {
        let dir = tempfile::tempdir().unwrap();
        let ds = || counting_dataset(dir.path(), &[200]);
        let take = |seed, n| {
            let mut l = DataLoader::new(ds(), 3, 4, seed).unwrap();
            (0..n).map(|_| l.next_batch()).collect::<Vec<_>>()
        };
        // 49 windows, 16 batches per epoch: 40 batches cross two epoch boundaries.
        assert_eq!(take(7, 40), take(7, 40));
        assert_ne!(take(7, 5), take(8, 5));
        let (e0, e1) = (epoch_order(7, 0, 49), epoch_order(7, 1, 49));
        assert_ne!(e0, e1, "each epoch should have its own order");
    }

    #[test]
    fn resume_continues_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let ds = || counting_dataset(dir.path(), &[100, 57]);
        let mut full = DataLoader::new(ds(), 2, 5, 3).unwrap();
        // 19 + 11 = 30 windows, 15 batches per epoch; stop inside epoch 1.
        let mut saved = None;
        let mut expected = Vec::new();
        for step in 0..40 {
            if step == 23 {
                saved = Some(full.position());
            }
            let b = full.next_batch();
            if step >= 23 {
                expected.push(b);
            }
        }
        let pos = saved.unwrap();
        assert_eq!((pos.epoch, pos.index), (1, 8));
        let mut resumed = DataLoader::from_position(ds(), 2, 5, pos).unwrap();
        let got: Vec<Batch> = (0..17).map(|_| resumed.next_batch()).collect();
        assert_eq!(got, expected);

        let bad = DataPosition { index: 16, ..pos };
        let err = DataLoader::from_position(ds(), 2, 5, bad).unwrap_err();
        assert!(matches!(err, TrainError::BadDataPosition { .. }), "{err}");
    }

    #[test]
    fn too_small_data_set_says_how_much_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let ds = counting_dataset(dir.path(), &[40, 40]);
        // (40-1)/16 = 2 windows per file: 4 windows, a batch of 5 does not fit.
        let err = DataLoader::new(ds, 5, 16, 0).unwrap_err();
        match &err {
            TrainError::NotEnoughTokens {
                windows, needed, ..
            } => assert_eq!((*windows, *needed), (4, 81)),
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains("81"));
    }

    #[test]
    fn splitmix64_matches_the_reference() {
        // First outputs of the reference C implementation (Vigna, splitmix64.c) from seed 0.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut rng = SplitMix64::new(123);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[rng.below(6) as usize] += 1;
        }
        // Each bucket expects 10,000 with σ ≈ 91; 6σ bounds.
        for c in counts {
            assert!((9_450..=10_550).contains(&c), "{counts:?}");
        }
    }

    proptest! {
        #[test]
        fn epoch_order_is_a_permutation(seed: u64, epoch in 0u64..1000, n in 0u64..300) {
            let mut order = epoch_order(seed, epoch, n);
            order.sort_unstable();
            prop_assert_eq!(order, (0..n).collect::<Vec<_>>());
        }
    }
}
