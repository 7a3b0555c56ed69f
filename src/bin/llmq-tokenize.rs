//! `llmq-tokenize`: turns text into a token file (llm.c format, docs/data.md) with a pretrained
//! model's byte-level BPE tokenizer, read from its `.gguf` or `tokenizer.json`.

use clap::Parser;
use llmq_runtime::train::bpe::BpeTokenizer;
use llmq_runtime::train::data::{TokenVersion, write_token_file};
use miette::{IntoDiagnostic, Result, WrapErr};
use std::path::PathBuf;
use std::process::ExitCode;

/// Tokenize text files into one token file for `llmq-run --data`.
///
/// The files are read as UTF-8 and tokenized one after the other, each from its start; no
/// special token (BOS, EOS) is added. The token width (u16 or u32) follows the vocabulary.
///
/// Example:
///   llmq-tokenize --tokenizer SmolLM2-135M-Instruct.Q4_1.gguf data/pride-and-prejudice.txt -o austen-smollm.bin
#[derive(Parser)]
#[command(name = "llmq-tokenize", version, verbatim_doc_comment)]
struct Args {
    /// Text files (UTF-8), tokenized in the order given.
    #[arg(required = true)]
    text: Vec<PathBuf>,
    /// The tokenizer: a .gguf file (its tokenizer.ggml.* entries) or a Hugging Face
    /// tokenizer.json (byte-level BPE).
    #[arg(long)]
    tokenizer: PathBuf,
    /// The token file to write.
    #[arg(short, long)]
    output: PathBuf,
}

fn run(args: Args) -> Result<()> {
    let tokenizer = BpeTokenizer::open(&args.tokenizer).into_diagnostic()?;
    let (mut tokens, mut chars) = (Vec::new(), 0usize);
    for path in &args.text {
        let text = std::fs::read_to_string(path)
            .into_diagnostic()
            .wrap_err_with(|| format!("reading {}", path.display()))?;
        let ids = tokenizer
            .encode(&text)
            .into_diagnostic()
            .wrap_err_with(|| format!("tokenizing {}", path.display()))?;
        chars += text.chars().count();
        tokens.extend(ids);
    }
    let version = TokenVersion::for_vocab(tokenizer.vocab_size());
    write_token_file(&args.output, &tokens, version).into_diagnostic()?;
    println!(
        "{chars} characters → {} tokens ({:.2} characters a token), vocabulary {}: wrote {}",
        tokens.len(),
        chars as f64 / tokens.len().max(1) as f64,
        tokenizer.vocab_size(),
        args.output.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:?}");
            ExitCode::FAILURE
        }
    }
}
