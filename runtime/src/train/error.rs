//! The one error type of the trainer's pieces: data files, tokenizers, schedules, checkpoints and
//! imported weights.
//!
//! Every variant that concerns a file carries its path, and says what was expected, so the
//! message alone tells a user what to fix.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::train`].
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An operating-system call on a file or directory failed.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done, as a verb phrase ("open", "rename to step-000120", ...).
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A glob pattern does not parse.
    #[error("invalid file pattern `{pattern}`: {message}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// What the glob parser objected to.
        message: String,
    },

    /// A path or glob pattern matches no file.
    #[error("no token file matches `{pattern}`; check the path or quote the pattern")]
    NoMatch {
        /// The pattern as given.
        pattern: String,
    },

    /// A data set was opened from an empty list of paths.
    #[error("no token files given; pass at least one path or glob pattern")]
    NoFiles,

    /// A token file's header does not start with the magic number.
    #[error(
        "`{path}` is not a token file: header[0] is {found}, expected the magic number {expected} \
         (llm.c / LLMQ format)"
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The value found in header[0].
        found: i32,
        /// The magic number, 20240520.
        expected: i32,
    },

    /// A token file's version is neither 1 (u16 tokens) nor 2 (u32 tokens).
    #[error("`{path}` has token-file version {found}; expected 1 (u16 tokens) or 2 (u32 tokens)")]
    BadVersion {
        /// The file.
        path: PathBuf,
        /// The value found in header[1].
        found: i32,
    },

    /// A token file's header is shorter than 1024 bytes, or its token count is negative.
    #[error("`{path}` has a damaged header: {message}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A token file's length does not match the token count in its header.
    #[error(
        "`{path}`: the header announces {header_tokens} tokens, so the file should be \
         {expected_bytes} bytes, but it is {actual_bytes} bytes (truncated or padded; re-create it)"
    )]
    LengthMismatch {
        /// The file.
        path: PathBuf,
        /// header[2].
        header_tokens: u64,
        /// 1024 + header_tokens × token width.
        expected_bytes: u64,
        /// The file's actual length.
        actual_bytes: u64,
    },

    /// A token id is not below the model's vocabulary size.
    #[error(
        "`{path}`: token {position} has id {id}, but the vocabulary has only {vocab_size} ids \
         (0..{vocab_size}); was the file made with another tokenizer?"
    )]
    TokenOutOfRange {
        /// The file.
        path: PathBuf,
        /// Index of the token in the file (0 = first token after the header).
        position: u64,
        /// The offending id.
        id: u32,
        /// The vocabulary size the data was checked against.
        vocab_size: u32,
    },

    /// A token does not fit the width of the file version it is being written with.
    #[error(
        "cannot write `{path}`: token {position} is {id}, which does not fit version {version} \
         ({width}-bit tokens); write version 2 instead"
    )]
    TokenTooWide {
        /// The file to be written.
        path: PathBuf,
        /// Index of the token.
        position: u64,
        /// Its value.
        id: u32,
        /// The requested version.
        version: u32,
        /// Bits per token of that version.
        width: u32,
    },

    /// More tokens than the header's i32 count can hold.
    #[error("cannot write `{path}`: {count} tokens exceed the format's limit of {limit} per file")]
    TooManyTokens {
        /// The file to be written.
        path: PathBuf,
        /// Tokens requested.
        count: u64,
        /// i32::MAX.
        limit: u64,
    },

    /// The data set is too small for one micro-batch.
    #[error(
        "the data set has {windows} windows of {window_len} tokens ({tokens} tokens in {files} \
         file(s)), but one micro-batch of {batch} × {seq} needs {batch} windows, i.e. at least \
         {needed} tokens; add data or lower the batch size or sequence length"
    )]
    NotEnoughTokens {
        /// Tokens in all files.
        tokens: u64,
        /// Number of files.
        files: usize,
        /// Windows available (each file gives ⌊(tokens − 1) / seq⌋).
        windows: u64,
        /// seq + 1.
        window_len: usize,
        /// Sequences per micro-batch.
        batch: usize,
        /// Sequence length.
        seq: usize,
        /// batch × seq + 1: the tokens a single file would need.
        needed: u64,
    },

    /// A data position to resume from lies outside its epoch.
    #[error(
        "cannot resume the data loader at batch {index} of epoch {epoch}: an epoch has only \
         {batches_per_epoch} batches (were batch size or sequence length changed since the \
         checkpoint?)"
    )]
    BadDataPosition {
        /// The epoch.
        epoch: u64,
        /// The batch index asked for.
        index: u64,
        /// Batches in one epoch with the current batch size and data.
        batches_per_epoch: u64,
    },

    /// A batch or sequence length of zero.
    #[error("invalid data-loader shape: {message}")]
    BadLoaderShape {
        /// What is wrong.
        message: String,
    },

    /// A token id outside the byte tokenizer's 256 ids was given to decode.
    #[error(
        "cannot decode token {position}: id {id} is not a byte (the byte tokenizer has 256 ids)"
    )]
    NotAByte {
        /// Index in the sequence being decoded.
        position: usize,
        /// The id.
        id: u32,
    },

    /// A token id outside a tokenizer's vocabulary was given to decode.
    #[error(
        "cannot decode token {position}: id {id} is not below the vocabulary size {vocab_size}"
    )]
    UnknownToken {
        /// Index in the sequence being decoded.
        position: usize,
        /// The id.
        id: u32,
        /// The tokenizer's vocabulary size.
        vocab_size: u32,
    },

    /// Text holds a byte the tokenizer's vocabulary has no token for.
    #[error(
        "cannot tokenize byte {byte:#04x} at byte offset {offset} of the text: the vocabulary \
         has no token for it (such vocabularies leave out control characters)"
    )]
    Untokenizable {
        /// The byte.
        byte: u8,
        /// Its offset in the text.
        offset: usize,
    },

    /// A learning-rate schedule name is unknown.
    #[error("unknown learning-rate schedule `{name}`; expected one of: {expected}")]
    UnknownSchedule {
        /// The name as given.
        name: String,
        /// The valid names, comma-separated.
        expected: String,
    },

    /// A schedule's parameters are inconsistent.
    #[error("invalid learning-rate schedule: {message}")]
    BadSchedule {
        /// What is wrong.
        message: String,
    },

    /// A checkpoint tensor's bytes do not match its dtype and shape, or a name repeats.
    #[error("cannot save tensor `{name}` to `{path}`: {message}")]
    BadTensor {
        /// The file being written.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What is wrong.
        message: String,
    },

    /// A checkpoint already exists for this step; it is never overwritten.
    #[error(
        "a checkpoint already exists at `{path}`; it is never overwritten: remove it or save \
         into another directory"
    )]
    CheckpointExists {
        /// The existing checkpoint directory.
        path: PathBuf,
    },

    /// A checkpoint belongs to another model or spec.
    #[error(
        "checkpoint `{path}` was written for model fingerprint `{found}`, but this run's model \
         has fingerprint `{expected}`; load a checkpoint of the same model and spec"
    )]
    FingerprintMismatch {
        /// The checkpoint directory.
        path: PathBuf,
        /// The fingerprint this run expects.
        expected: String,
        /// The fingerprint recorded in meta.json.
        found: String,
    },

    /// A checkpoint file is missing, truncated or malformed.
    #[error("checkpoint file `{path}` is corrupt: {message}")]
    CorruptCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A checkpoint has a format version this build cannot read.
    #[error("checkpoint `{path}` has format version {found}; this build reads version {expected}")]
    CheckpointVersion {
        /// The meta.json file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build writes and reads.
        expected: u32,
    },

    /// A GGUF file is malformed or truncated.
    #[error("`{path}` is not a readable GGUF file: {message}")]
    BadGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A GGUF tensor is stored in a type this reader does not dequantise.
    #[error(
        "`{path}`: tensor `{tensor}` is stored as {ggml_type}, which cannot be read yet \
         (supported: {supported}); convert the file to one of those types"
    )]
    UnsupportedGgufType {
        /// The file.
        path: PathBuf,
        /// The tensor's name in the file.
        tensor: String,
        /// ggml's name of its type.
        ggml_type: String,
        /// The types that can be read.
        supported: &'static str,
    },

    /// A weight file (safetensors or its index) is malformed, or a tensor has an unusable dtype.
    #[error("cannot import weights from `{path}`: {message}")]
    BadWeights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A weight file's architecture or dimensions disagree with the model spec.
    #[error(
        "`{path}` does not hold this model: {what}: spec {spec}, file {file} (is it the right \
         model file for this spec?)"
    )]
    WeightsDoNotFitSpec {
        /// The file.
        path: PathBuf,
        /// The quantity (`layers`, `architecture`, ...).
        what: String,
        /// The spec's value.
        spec: String,
        /// The file's value.
        file: String,
    },

    /// Parameters of the plan have no tensor in the weight file.
    #[error("`{path}` lacks {count} of the model's tensors, e.g. {names}")]
    MissingWeights {
        /// The file (or directory of shards).
        path: PathBuf,
        /// How many are missing.
        count: usize,
        /// The first few missing names (Hugging Face names), comma-separated.
        names: String,
    },

    /// A tensor's shape in the weight file is not the parameter's.
    #[error("`{path}`: tensor `{tensor}` has shape {file:?} in the file, the model needs {plan:?}")]
    WeightShape {
        /// The file.
        path: PathBuf,
        /// The tensor (Hugging Face name).
        tensor: String,
        /// Its shape in the file, outermost first.
        file: Vec<u64>,
        /// The parameter's shape (or the part of it the tensor fills).
        plan: Vec<u64>,
    },

    /// The weight file holds tensors the model has no parameter for.
    #[error(
        "`{path}` holds {count} tensor(s) this model has no parameter for, e.g. {names}; \
         refusing to drop them silently (is it another architecture or size?)"
    )]
    ExtraWeights {
        /// The file (or directory of shards).
        path: PathBuf,
        /// How many.
        count: usize,
        /// The first few names (as in the file), comma-separated.
        names: String,
    },

    /// A tokenizer cannot be built from a file.
    #[error("cannot build a tokenizer from `{path}`: {message}")]
    BadTokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl TrainError {
    /// Wraps an I/O error with the path and the action that failed.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: impl Into<String>,
    ) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        let action = action.into();
        move |source| TrainError::Io {
            path,
            action,
            source,
        }
    }
}
