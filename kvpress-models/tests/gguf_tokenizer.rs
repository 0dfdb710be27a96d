//! The tokenizer rebuilt from GGUF metadata on a synthetic vocabulary: special tokens, merges,
//! `add_bos_token`, and unsupported tokenizer kinds.

mod common;

use common::{Meta, gguf_file};
use kvpress_models::loading::gguf::{GgufFile, tokenizer_json};
use kvpress_models::tokenizer::TextTokenizer;

fn tokenizer(add_bos: bool, model: &str) -> kvpress_models::Result<TextTokenizer> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.gguf");
    let bytes = gguf_file(
        b"GGUF",
        &[
            ("general.architecture", Meta::Str("llama")),
            ("tokenizer.ggml.model", Meta::Str(model)),
            ("tokenizer.ggml.pre", Meta::Str("smollm")),
            (
                "tokenizer.ggml.tokens",
                Meta::Strs(vec!["<s>", "</s>", "a", "b", "ab", "1", "2", "Ġ", "Ġab"]),
            ),
            (
                "tokenizer.ggml.token_type",
                Meta::I32s(vec![3, 3, 1, 1, 1, 1, 1, 1, 1]),
            ),
            ("tokenizer.ggml.merges", Meta::Strs(vec!["a b", "Ġ ab"])),
            ("tokenizer.ggml.bos_token_id", Meta::U32(0)),
            ("tokenizer.ggml.eos_token_id", Meta::U32(1)),
            ("tokenizer.ggml.add_bos_token", Meta::Bool(add_bos)),
        ],
        &[],
    );
    std::fs::write(&path, bytes).expect("write");
    let file = GgufFile::open(&path)?;
    let (tok, cfg) = tokenizer_json(&file)?;
    TextTokenizer::from_values(&tok, &cfg, None)
}

#[test]
fn merges_digits_and_special_tokens() {
    let t = tokenizer(false, "gpt2").expect("tokenizer");
    assert_eq!(t.encode("ab ab", false).expect("encode"), vec![4, 8]);
    // smollm splits every digit on its own
    assert_eq!(t.encode("12", false).expect("encode"), vec![5, 6]);
    assert_eq!(t.encode("<s>ab</s>", false).expect("encode"), vec![0, 4, 1]);
    assert_eq!(t.decode(&[0, 4, 1], true).expect("decode"), "ab");
    assert_eq!(t.eos_token(), Some("</s>"));
}

#[test]
fn add_bos_token_prepends_bos_with_special_tokens_only() {
    let t = tokenizer(true, "gpt2").expect("tokenizer");
    assert_eq!(t.encode("ab", true).expect("encode"), vec![0, 4]);
    assert_eq!(t.encode("ab", false).expect("encode"), vec![4]);
    let t = tokenizer(false, "gpt2").expect("tokenizer");
    assert_eq!(t.encode("ab", true).expect("encode"), vec![4]);
}

#[test]
fn sentencepiece_gguf_tokenizers_are_refused_clearly() {
    let err = tokenizer(false, "llama")
        .expect_err("unsupported")
        .to_string();
    assert!(err.contains("tokenizer model `llama`"), "{err}");
}
