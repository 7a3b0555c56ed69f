//! `plan.bin`: magic, format version, payload length, CRC-32 of the payload, then the plan
//! serialised with postcard (compact and deterministic: the same plan gives the same bytes).
//!
//! ```text
//! offset 0   8 bytes  b"LLMQPLAN"
//! offset 8   u32 LE   format version
//! offset 12  u64 LE   payload length
//! offset 20  u32 LE   CRC-32 (IEEE) of the payload
//! offset 24  payload
//! ```

use super::Plan;

/// The first eight bytes of every plan file.
pub const MAGIC: &[u8; 8] = b"LLMQPLAN";
/// Bumped whenever the payload's layout changes; older files are refused.
pub const FORMAT_VERSION: u32 = 9;
const HEADER: usize = 24;

/// Why a plan file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not a plan file at all.
    #[error("not an LLMQ plan file (the first bytes are not `LLMQPLAN`)")]
    BadMagic,
    /// A plan from another version of the compiler.
    #[error(
        "plan format version {found}, but this build reads version {expected}: re-run `llmqc plan`"
    )]
    Version {
        /// The file's version.
        found: u32,
        /// This build's version.
        expected: u32,
    },
    /// The file ends early.
    #[error("truncated plan file: {got} bytes, expected {expected}")]
    Truncated {
        /// Bytes present.
        got: u64,
        /// Bytes the header announces.
        expected: u64,
    },
    /// The payload does not match its checksum.
    #[error(
        "corrupted plan file: checksum {found:08x} does not match the payload's {computed:08x}"
    )]
    Checksum {
        /// The stored checksum.
        found: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// The payload does not decode.
    #[error("the plan payload does not decode: {0}")]
    Decode(String),
}

impl Plan {
    /// The bytes of `plan.bin`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload = postcard::to_stdvec(self).expect("a plan always serialises");
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Reads `plan.bin`, checking magic, version, length and checksum.
    pub fn from_bytes(bytes: &[u8]) -> Result<Plan, FormatError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        if bytes.len() < HEADER {
            return Err(FormatError::Truncated {
                got: bytes.len() as u64,
                expected: HEADER as u64,
            });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(FormatError::Version {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
        let found = u32::from_le_bytes(bytes[20..24].try_into().unwrap());
        let expected = HEADER as u64 + len;
        if (bytes.len() as u64) < expected {
            return Err(FormatError::Truncated {
                got: bytes.len() as u64,
                expected,
            });
        }
        let payload = &bytes[HEADER..expected as usize];
        let computed = crc32fast::hash(payload);
        if computed != found {
            return Err(FormatError::Checksum { found, computed });
        }
        postcard::from_bytes(payload).map_err(|e| FormatError::Decode(e.to_string()))
    }
}
