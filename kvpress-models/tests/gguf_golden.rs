//! The GGUF reader against the reference: dequantized tensors equal transformers' float32
//! checkpoint and the tokenizer rebuilt from GGUF metadata equals the SmolLM2 tokenizer.

mod common;

use kvpress_models::loading::gguf::{GgufFile, GgufWeights, tokenizer_json};
use kvpress_models::tokenizer::TextTokenizer;
use kvpress_models::weights::WeightSource;

#[test]
fn dequantized_tensors_match_reference_checksums() {
    let golden = common::golden("weights_checksums.json");
    let tensors = golden["tensors"].as_object().expect("tensors");
    let weights =
        GgufWeights::new(GgufFile::open(&common::default_gguf()).expect("open")).expect("weights");
    assert_eq!(tensors.len(), weights.names().len(), "same tensor count");
    let mut worst = 0f64;
    for (name, want) in tensors {
        let t = weights
            .tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_u64().expect("dim") as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        let sum: f64 = t.data.iter().map(|&x| x as f64).sum();
        let sum_sq: f64 = t.data.iter().map(|&x| (x as f64) * (x as f64)).sum();
        let (ws, wq) = (
            want["sum"].as_f64().expect("sum"),
            want["sum_sq"].as_f64().expect("sum_sq"),
        );
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
        // The sum can cancel to near zero; compare it relative to the sum of magnitudes too.
        let abs_sum: f64 = t.data.iter().map(|&x| (x as f64).abs()).sum();
        let sum_dev = (sum - ws).abs() / abs_sum.max(1e-12);
        worst = worst.max(sum_dev).max(rel(sum_sq, wq));
        assert!(sum_dev <= 1e-6, "{name}: sum {sum} vs {ws}");
        assert!(rel(sum_sq, wq) <= 1e-6, "{name}: sum_sq {sum_sq} vs {wq}");
        for (i, w) in want["first8"]
            .as_array()
            .expect("first8")
            .iter()
            .enumerate()
        {
            assert_eq!(t.data[i], w.as_f64().expect("value") as f32, "{name}[{i}]");
        }
    }
    eprintln!("worst relative deviation: {worst:e}");
}

#[test]
fn gguf_tokenizer_matches_reference_cases() {
    let file = GgufFile::open(&common::default_gguf()).expect("open");
    let (tok, cfg) = tokenizer_json(&file).expect("tokenizer json");
    let tokenizer = TextTokenizer::from_values(&tok, &cfg, None).expect("tokenizer");
    let golden = common::golden("tokenizer_cases.json");
    for case in golden["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let got = tokenizer.encode(text, false).expect("encode");
        assert_eq!(got, want, "ids of {text:?}");
        // Encoding with special tokens adds nothing for this tokenizer (no BOS).
        assert_eq!(
            tokenizer.encode(text, true).expect("encode"),
            want,
            "{text:?} with specials"
        );
        let decoded = tokenizer.decode(&got, false).expect("decode");
        assert_eq!(
            decoded,
            case["decoded"].as_str().expect("decoded"),
            "decode of {text:?}"
        );
    }
}
