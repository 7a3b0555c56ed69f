//! A byte-level tokenizer (token = byte value, vocabulary of 256) and a bundled corpus, Jane
//! Austen's "Pride and Prejudice", so that a model can be trained and evaluated with no download.
//!
//! The text's provenance is in `data/README.md`.

use super::TrainError;

/// Vocabulary size of [`ByteTokenizer`].
pub const BYTE_VOCAB_SIZE: u32 = 256;

/// Fraction of the bundled corpus held out for evaluation (its end).
pub const BUNDLED_EVAL_FRACTION: f64 = 0.05;

static CORPUS: &str = include_str!("../../../data/pride-and-prejudice.txt");

/// Token = byte of the UTF-8 text; ids 0..256.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    /// 256.
    pub fn vocab_size(&self) -> u32 {
        BYTE_VOCAB_SIZE
    }

    /// The bytes of `text`, one token each.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    /// The bytes the tokens stand for; an id of 256 or more is an error naming its position.
    pub fn decode_bytes(&self, tokens: &[u32]) -> Result<Vec<u8>, TrainError> {
        tokens
            .iter()
            .enumerate()
            .map(|(position, &id)| {
                u8::try_from(id).map_err(|_| TrainError::NotAByte { position, id })
            })
            .collect()
    }

    /// The text the tokens stand for. A model may emit byte sequences that are not UTF-8;
    /// those become U+FFFD, so a sample can always be printed.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, TrainError> {
        let bytes = self.decode_bytes(tokens)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The full text of the bundled corpus.
pub fn bundled_corpus() -> &'static str {
    CORPUS
}

/// Token vectors for training and evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainEvalSplit {
    /// The first part.
    pub train: Vec<u32>,
    /// The last part.
    pub eval: Vec<u32>,
}

/// Splits `tokens` so that the last `eval_fraction` (rounded up to a whole token) is for
/// evaluation. `eval_fraction` is clamped to `0.0..=1.0`.
pub fn split_train_eval(tokens: &[u32], eval_fraction: f64) -> TrainEvalSplit {
    let fraction = eval_fraction.clamp(0.0, 1.0);
    let eval_len = ((tokens.len() as f64) * fraction).ceil() as usize;
    let cut = tokens.len() - eval_len.min(tokens.len());
    TrainEvalSplit {
        train: tokens[..cut].to_vec(),
        eval: tokens[cut..].to_vec(),
    }
}

/// The bundled corpus, byte-tokenized and split: the last 5% for evaluation.
pub fn bundled_train_eval() -> TrainEvalSplit {
    split_train_eval(
        &ByteTokenizer.encode(bundled_corpus()),
        BUNDLED_EVAL_FRACTION,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_with_multibyte_text() {
        let text = "Mr. Darcy — “proud”, naïve? 日本";
        let tokens = ByteTokenizer.encode(text);
        assert_eq!(tokens.len(), text.len());
        assert!(tokens.iter().all(|&t| t < ByteTokenizer.vocab_size()));
        assert_eq!(ByteTokenizer.decode(&tokens).unwrap(), text);
    }

    #[test]
    fn decode_rejects_non_bytes_and_tolerates_broken_utf8() {
        let err = ByteTokenizer.decode(&[72, 105, 300]).unwrap_err();
        assert!(matches!(
            err,
            TrainError::NotAByte {
                position: 2,
                id: 300
            }
        ));
        // A lone continuation byte is not UTF-8: it decodes to the replacement character.
        assert_eq!(
            ByteTokenizer.decode(&[72, 0x80, 105]).unwrap(),
            "H\u{FFFD}i"
        );
    }

    #[test]
    fn bundled_corpus_is_the_novel() {
        let text = bundled_corpus();
        assert!(text.starts_with("PRIDE AND PREJUDICE"));
        assert!(text.contains("It is a truth universally acknowledged"));
        assert_eq!(
            text.len(),
            std::fs::metadata(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../data/pride-and-prejudice.txt"
            ))
            .unwrap()
            .len() as usize
        );
    }

    #[test]
    fn bundled_split_holds_out_the_last_five_percent() {
        let all = ByteTokenizer.encode(bundled_corpus());
        let split = bundled_train_eval();
        assert_eq!(split.train.len() + split.eval.len(), all.len());
        let eval_share = split.eval.len() as f64 / all.len() as f64;
        assert!((eval_share - 0.05).abs() < 1e-4, "{eval_share}");
        assert_eq!([split.train, split.eval].concat(), all);
    }

    #[test]
    fn split_edges() {
        let t: Vec<u32> = (0..10).collect();
        assert_eq!(split_train_eval(&t, 0.0).eval, Vec::<u32>::new());
        assert_eq!(split_train_eval(&t, 0.25).eval, vec![7, 8, 9]);
        assert_eq!(split_train_eval(&t, 2.0).train, Vec::<u32>::new());
        assert_eq!(split_train_eval(&[], 0.05).eval, Vec::<u32>::new());
    }
}
