//! Byte-level BPE (GPT-2 style), the tokenizer of Llama-3, Qwen2.5 and SmolLM2, built from a
//! GGUF file's `tokenizer.ggml.*` entries or a Hugging Face `tokenizer.json`.
//!
//! Encoding, as in GPT-2 and Hugging Face `tokenizers`:
//! 1. **pre-tokenize**: split the text by the model's regexes in turn (each match and each gap
//!    between matches becomes a piece), e.g. GPT-2's `'s|'t|…| ?\p{L}+| ?\p{N}+|…|\s+(?!\S)|\s+`;
//!    SmolLM2 (`tokenizer.ggml.pre = smollm`) first isolates every digit (`\p{N}`);
//! 2. map each piece's UTF-8 bytes to printable characters (GPT-2's `bytes_to_unicode`: the
//!    188 printable bytes stand for themselves, the others for U+0100 onwards, so a space is `Ġ`
//!    and a newline `Ċ`), start from one symbol per byte;
//! 3. **merge**: repeatedly join the adjacent pair whose merge rule comes first in the merge list
//!    (leftmost on a tie), until no pair has a rule; each final symbol is a token.
//!
//! Decoding maps tokens back to bytes and the bytes to text (invalid UTF-8 becomes U+FFFD).
//! Special tokens (`<|im_start|>`, …) are never produced from text: text that spells one is
//! encoded as ordinary characters, and no BOS/EOS is added. The regexes need Unicode classes
//! and a look-ahead (`\s+(?!\S)`), hence `fancy-regex`.

use std::collections::HashMap;
use std::path::Path;

use fancy_regex::Regex;

use super::TrainError;
use super::gguf::{GgufFile, is_gguf};

/// GPT-2's pre-tokenizer pattern (Hugging Face `ByteLevel(use_regex = true)`).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Qwen2's pattern (its `tokenizer.json`, llama.cpp's `qwen2` pre-tokenizer).
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Each digit alone (Hugging Face `Digits(individual_digits = true)`).
const DIGITS_PATTERN: &str = r"\p{N}";

/// The GGUF pre-tokenizer names this reader knows, and their regexes in order.
const GGUF_PRE_TOKENIZERS: &[(&str, &[&str])] = &[
    ("gpt2", &[GPT2_PATTERN]),
    ("smollm", &[DIGITS_PATTERN, GPT2_PATTERN]),
    ("qwen2", &[QWEN2_PATTERN]),
];

/// A byte-level BPE tokenizer.
#[derive(Debug)]
pub struct BpeTokenizer {
    /// Token id → its text in the byte-mapped alphabet.
    tokens: Vec<String>,
    /// Byte → the id of its one-byte token (some vocabularies lack control characters).
    byte_ids: [Option<u32>; 256],
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Applied in turn to split the text.
    pre: Vec<Regex>,
    /// The alphabet: byte → character, and back.
    byte_char: [char; 256],
    char_byte: HashMap<char, u8>,
}

impl BpeTokenizer {
    /// The tokenizer of a `.gguf` file (recognised by its magic number) or a `tokenizer.json`.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        if is_gguf(path)? {
            Self::from_gguf(&GgufFile::open(path)?)
        } else {
            Self::from_tokenizer_json(path)
        }
    }

    /// The tokenizer stored in a GGUF file (`tokenizer.ggml.model = gpt2`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self, TrainError> {
        let bad = |message: String| TrainError::BadTokenizer {
            path: g.path().to_path_buf(),
            message,
        };
        match g.string("tokenizer.ggml.model") {
            Some("gpt2") => {}
            other => {
                return Err(bad(format!(
                    "tokenizer.ggml.model is {other:?}; only byte-level BPE (`gpt2`) is supported"
                )));
            }
        }
        let pre = g.string("tokenizer.ggml.pre").unwrap_or("gpt2");
        let patterns = GGUF_PRE_TOKENIZERS
            .iter()
            .find(|(name, _)| *name == pre)
            .map(|(_, p)| p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .ok_or_else(|| {
                let known: Vec<&str> = GGUF_PRE_TOKENIZERS.iter().map(|(n, _)| *n).collect();
                bad(format!(
                    "pre-tokenizer `{pre}` is not known (known: {})",
                    known.join(", ")
                ))
            })?;
        let tokens = g
            .strings("tokenizer.ggml.tokens")
            .ok_or_else(|| bad("no tokenizer.ggml.tokens string array".into()))?;
        let merges = g
            .strings("tokenizer.ggml.merges")
            .ok_or_else(|| bad("no tokenizer.ggml.merges string array".into()))?;
        let tokens: Vec<String> = tokens.into_iter().map(String::from).collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .ok_or_else(|| bad(format!("merge `{m}` has no space")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(g.path(), tokens, &merges, &patterns)
    }

    /// The tokenizer of a Hugging Face `tokenizer.json` with a `BPE` model and a byte-level
    /// pre-tokenizer (a `ByteLevel`, or a `Sequence` of `Split`/`Digits` and `ByteLevel`).
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TrainError> {
        let bad = |message: String| TrainError::BadTokenizer {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read(path).map_err(TrainError::io(path, "read"))?;
        let json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return Err(bad(format!(
                "model type {}, expected \"BPE\"",
                model["type"]
            )));
        }
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| bad("no model.vocab object".into()))?;
        let mut entries: Vec<(u64, &str)> = Vec::new();
        for (token, id) in vocab {
            let id = id.as_u64().ok_or_else(|| bad(format!("id of `{token}`")))?;
            entries.push((id, token));
        }
        if let Some(added) = json["added_tokens"].as_array() {
            for t in added {
                if let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) {
                    entries.push((id, content));
                }
            }
        }
        let size = entries.iter().map(|(id, _)| id + 1).max().unwrap_or(0) as usize;
        let mut tokens = vec![String::new(); size];
        for (id, token) in entries {
            tokens[id as usize] = token.to_string();
        }
        // Merges are "a b" strings or, in newer files, ["a", "b"] pairs.
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| bad("no model.merges array".into()))?
            .iter()
            .map(|m| match (m.as_str(), m.as_array()) {
                (Some(s), _) => s.split_once(' '),
                (_, Some(pair)) if pair.len() == 2 => pair[0].as_str().zip(pair[1].as_str()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("a merge is neither \"a b\" nor [\"a\", \"b\"]".into()))?;
        let patterns = json_pre_tokenizer(&json["pre_tokenizer"]).map_err(bad)?;
        Self::new(path, tokens, &merges, &patterns)
    }

    fn new(
        path: &Path,
        tokens: Vec<String>,
        merges: &[(&str, &str)],
        patterns: &[String],
    ) -> Result<Self, TrainError> {
        let bad = |message: String| TrainError::BadTokenizer {
            path: path.to_path_buf(),
            message,
        };
        let ids: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let byte_char = bytes_to_unicode();
        let byte_ids = byte_char.map(|c| ids.get(c.to_string().as_str()).copied());
        if byte_ids.iter().all(Option::is_none) {
            return Err(bad(
                "no token of the byte alphabet: not a byte-level BPE".into()
            ));
        }
        let mut merge_table = HashMap::new();
        for (rank, (a, b)) in merges.iter().enumerate() {
            let merged = format!("{a}{b}");
            let (Some(&l), Some(&r), Some(&m)) = (ids.get(a), ids.get(b), ids.get(&*merged)) else {
                return Err(bad(format!(
                    "merge `{a} {b}` names a token not in the vocabulary"
                )));
            };
            merge_table.entry((l, r)).or_insert((rank as u32, m));
        }
        let pre = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| bad(format!("regex `{p}`: {e}"))))
            .collect::<Result<_, _>>()?;
        let char_byte = byte_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(BpeTokenizer {
            tokens,
            byte_ids,
            merges: merge_table,
            pre,
            byte_char,
            char_byte,
        })
    }

    /// Number of token ids (the vocabulary the model's embedding must cover).
    pub fn vocab_size(&self) -> u32 {
        self.tokens.len() as u32
    }

    /// The token ids of `text`; a byte with no token in the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TrainError> {
        let mut pieces = vec![text];
        for re in &self.pre {
            pieces = pieces.into_iter().flat_map(|p| split(re, p)).collect();
        }
        let mut cache: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut out = Vec::new();
        for piece in pieces {
            if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            let offset = piece.as_ptr() as usize - text.as_ptr() as usize;
            let ids = self.merge(piece, offset)?;
            out.extend_from_slice(&ids);
            cache.insert(piece, ids);
        }
        Ok(out)
    }

    /// BPE of one piece (at byte `offset` of the text): one symbol per byte, then the
    /// best-ranked merges until none applies.
    fn merge(&self, piece: &str, offset: usize) -> Result<Vec<u32>, TrainError> {
        let mut symbols = piece
            .bytes()
            .enumerate()
            .map(|(i, byte)| {
                self.byte_ids[byte as usize].ok_or(TrainError::Untokenizable {
                    byte,
                    offset: offset + i,
                })
            })
            .collect::<Result<Vec<u32>, _>>()?;
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(r, m)| (r, i, m)))
                .min();
            let Some((_, i, merged)) = best else {
                return Ok(symbols);
            };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
    }

    /// The text of `tokens`; ids outside the vocabulary are an error naming the position.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, TrainError> {
        let mut bytes = Vec::new();
        for (position, &id) in tokens.iter().enumerate() {
            let token = self
                .tokens
                .get(id as usize)
                .ok_or(TrainError::UnknownToken {
                    position,
                    id,
                    vocab_size: self.vocab_size(),
                })?;
            for c in token.chars() {
                match self.char_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    // Special tokens are written in plain text, not the byte alphabet.
                    None => bytes.extend(c.to_string().bytes()),
                }
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The text of one token in the byte-mapped alphabet (`Ġthe`).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The character byte `b` is written as in token texts (`Ġ` for a space).
    pub fn byte_char(&self, b: u8) -> char {
        self.byte_char[b as usize]
    }
}

/// `text` cut at `re`'s matches, keeping the matches and the gaps between them (Hugging Face's
/// `Isolated` behaviour), none empty.
fn split<'t>(re: &Regex, text: &'t str) -> Vec<&'t str> {
    let mut pieces = Vec::new();
    let mut last = 0;
    // A match error is a backtracking limit: the rest of the text stays one piece.
    for m in re.find_iter(text).map_while(Result::ok) {
        if m.start() > last {
            pieces.push(&text[last..m.start()]);
        }
        if m.end() > m.start() {
            pieces.push(m.as_str());
        }
        last = m.end();
    }
    if last < text.len() {
        pieces.push(&text[last..]);
    }
    pieces
}

/// GPT-2's byte alphabet: printable bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for themselves,
/// the other 68 bytes for U+0100, U+0101, … in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut out = ['\0'; 256];
    let mut next = 0x100;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).expect("a Latin-1 code point")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("a code point below U+0200")
        };
    }
    out
}

/// The regexes of a `tokenizer.json` pre-tokenizer.
fn json_pre_tokenizer(pre: &serde_json::Value) -> Result<Vec<String>, String> {
    match pre["type"].as_str() {
        Some("Sequence") => {
            let parts = pre["pretokenizers"]
                .as_array()
                .ok_or("a Sequence without parts")?;
            let mut out = Vec::new();
            for p in parts {
                out.extend(json_pre_tokenizer(p)?);
            }
            Ok(out)
        }
        Some("ByteLevel") if pre["use_regex"] == false => Ok(Vec::new()),
        Some("ByteLevel") => Ok(vec![GPT2_PATTERN.into()]),
        Some("Digits") if pre["individual_digits"] == true => Ok(vec![DIGITS_PATTERN.into()]),
        Some("Split") if pre["behavior"] == "Isolated" && pre["invert"] != true => {
            pre["pattern"]["Regex"]
                .as_str()
                .map(|r| vec![r.to_string()])
                .ok_or_else(|| "a Split without a Regex pattern".to_string())
        }
        _ => Err(format!("pre-tokenizer {pre} is not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny vocabulary: the 256 byte tokens, then merges `Ġ t` → `Ġt`, `Ġt h` → `Ġth`,
    /// `Ġth e` → `Ġthe`, `e r` → `er`.
    fn tiny() -> BpeTokenizer {
        let alphabet = bytes_to_unicode();
        let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        tokens.extend(["Ġt", "Ġth", "Ġthe", "er"].map(String::from));
        let merges = [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("e", "r")];
        let pre = [DIGITS_PATTERN.to_string(), GPT2_PATTERN.to_string()];
        BpeTokenizer::new(Path::new("tiny"), tokens, &merges, &pre).unwrap()
    }

    #[test]
    fn the_byte_alphabet_is_gpt2s() {
        let a = bytes_to_unicode();
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[0], 'Ā');
        assert_eq!(a[0xAD], 'Ń'); // the soft hyphen is not printable: the 68th replacement
        let distinct: std::collections::HashSet<char> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn gpt2_pre_tokenizer_splits_as_documented() {
        let re = Regex::new(GPT2_PATTERN).unwrap();
        assert_eq!(
            split(&re, "Hello world's  end!\n"),
            ["Hello", " world", "'s", " ", " end", "!", "\n"]
        );
        let digits = Regex::new(DIGITS_PATTERN).unwrap();
        assert_eq!(split(&digits, "in 1813"), ["in ", "1", "8", "1", "3"]);
    }

    #[test]
    fn merges_follow_rank_and_round_trip() {
        let t = tiny();
        let ids = t.encode(" the other").unwrap();
        let texts: Vec<&str> = ids.iter().map(|&i| t.token(i).unwrap()).collect();
        // " the" merges fully; " other" has no "Ġo" rule, so only "er" merges.
        assert_eq!(texts, ["Ġthe", "Ġ", "o", "t", "h", "er"]);
        for text in [" the other", "naïve — 日本 1813\n\n x", ""] {
            assert_eq!(t.decode(&t.encode(text).unwrap()).unwrap(), text);
        }
        assert!(t.decode(&[9999]).is_err());
    }

    #[test]
    fn a_byte_without_a_token_is_an_error_naming_its_offset() {
        let alphabet = bytes_to_unicode();
        let tokens: Vec<String> = alphabet[1..].iter().map(|c| c.to_string()).collect();
        let t = BpeTokenizer::new(Path::new("t"), tokens, &[], &[GPT2_PATTERN.into()]).unwrap();
        let err = t.encode("ab \0").unwrap_err();
        assert!(
            matches!(err, TrainError::Untokenizable { byte: 0, offset: 3 }),
            "{err}"
        );
    }

    #[test]
    fn a_tokenizer_json_gives_the_same_tokenizer() {
        let alphabet = bytes_to_unicode();
        let mut vocab = serde_json::Map::new();
        for (i, c) in alphabet.iter().enumerate() {
            vocab.insert(c.to_string(), i.into());
        }
        for (i, t) in ["Ġt", "Ġth", "Ġthe", "er"].iter().enumerate() {
            vocab.insert(t.to_string(), (256 + i).into());
        }
        let json = serde_json::json!({
            "model": {"type": "BPE", "vocab": vocab, "merges": ["Ġ t", ["Ġt", "h"], "Ġth e", "e r"]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}
            ]},
            "added_tokens": [{"id": 260, "content": "<|endoftext|>"}],
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let t = BpeTokenizer::open(&path).unwrap();
        assert_eq!(t.vocab_size(), 261);
        let text = " the other 1813";
        assert_eq!(t.encode(text).unwrap(), tiny().encode(text).unwrap());
        assert_eq!(t.decode(&[260]).unwrap(), "<|endoftext|>");
    }

    #[test]
    fn json_pre_tokenizers_are_read_or_refused() {
        let qwen = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
        ]});
        assert_eq!(json_pre_tokenizer(&qwen).unwrap(), [QWEN2_PATTERN]);
        let unknown = serde_json::json!({"type": "Metaspace"});
        assert!(
            json_pre_tokenizer(&unknown)
                .unwrap_err()
                .contains("Metaspace")
        );
    }
}
