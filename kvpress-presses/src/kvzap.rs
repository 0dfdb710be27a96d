//! KVzapPress (kvpress `kvzap`): a tiny per-layer surrogate maps each token's attention-input
//! hidden state to predicted (log KVzip+) scores for every KV head — cheap, usable in prefill and
//! decoding, typically under `dms(kvzap(...), threshold=…)`. Paper: arXiv 2601.07891.
//!
//! Score of token `i` for KV head `h` in layer `l`: `f_l(x_i)[h]` with `f_l` linear
//! (`W x + b`) or an MLP (`W₂ GELU(W₁ x + b₁) + b₂`, exact GELU).
//!
//! **Artefact**: kvpress downloads `nvidia/KVzap-{linear,mlp}-<model>` from the hub; here the
//! weights come from a local safetensors file given as `kvzap(path='…', model_type='mlp')`,
//! in PyTorch `nn.Linear` layout (`weight: [out, in]`), per layer `l`:
//! - linear: `layers.{l}.weight` `[kv_heads, hidden]`, `layers.{l}.bias` `[kv_heads]`;
//! - mlp: `layers.{l}.fc1.weight` `[inner, hidden]`, `layers.{l}.fc1.bias` `[inner]`,
//!   `layers.{l}.fc2.weight` `[kv_heads, inner]`, `layers.{l}.fc2.bias` `[kv_heads]`.

use std::path::Path;

use burn::tensor::{Tensor, TensorData, activation::gelu, backend::Backend};
use kvpress_core::artifacts::Artifact;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::{LayerInputs, Scorer};

/// One affine map `[out, in]` + `[out]`.
#[derive(Debug, Clone)]
struct Affine {
    weight: Vec<f32>,
    bias: Vec<f32>,
    out: usize,
    inp: usize,
}

impl Affine {
    fn read(file: &Artifact, prefix: &str) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let [out, inp] = file.shape(&name).map(<[usize]>::to_vec).unwrap_or_default()[..] else {
            return Err(CoreError::Invalid {
                name: "kvzap",
                detail: format!("the surrogate file needs a 2-D tensor `{name}`"),
            });
        };
        Ok(Self {
            weight: file.tensor(&name, &[out, inp])?.to_vec(),
            bias: file.tensor(&format!("{prefix}.bias"), &[out])?.to_vec(),
            out,
            inp,
        })
    }

    /// `x`: `[n, in]` → `[n, out]`.
    fn apply<B: Backend>(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = x.device();
        let w = Tensor::<B, 2>::from_data(
            TensorData::new(self.weight.clone(), [self.out, self.inp]),
            &device,
        );
        let b =
            Tensor::<B, 2>::from_data(TensorData::new(self.bias.clone(), [1, self.out]), &device);
        x.matmul(w.transpose()) + b
    }
}

/// A layer's surrogate.
#[derive(Debug, Clone)]
enum Surrogate {
    Linear(Affine),
    Mlp(Affine, Affine),
}

/// The KVzap scorer with its per-layer surrogates.
#[derive(Debug, Clone)]
pub struct KvZap {
    layers: Vec<Surrogate>,
}

impl KvZap {
    /// Reads the surrogates of every layer from `path`; `mlp` selects the two-layer form.
    pub fn load(path: &Path, mlp: bool) -> Result<Self> {
        let file = Artifact::open(path, "kvzap")?;
        let mut layers = Vec::new();
        loop {
            let l = layers.len();
            let present = if mlp {
                file.contains(&format!("layers.{l}.fc1.weight"))
            } else {
                file.contains(&format!("layers.{l}.weight"))
            };
            if !present {
                break;
            }
            layers.push(if mlp {
                Surrogate::Mlp(
                    Affine::read(&file, &format!("layers.{l}.fc1"))?,
                    Affine::read(&file, &format!("layers.{l}.fc2"))?,
                )
            } else {
                Surrogate::Linear(Affine::read(&file, &format!("layers.{l}"))?)
            });
        }
        if layers.is_empty() {
            return Err(CoreError::Invalid {
                name: "kvzap",
                detail: format!(
                    "{} has no `layers.0.{}weight` ({} surrogate expected)",
                    path.display(),
                    if mlp { "fc1." } else { "" },
                    if mlp { "mlp" } else { "linear" }
                ),
            });
        }
        Ok(Self { layers })
    }
}

impl<B: Backend> Scorer<B> for KvZap {
    /// `[1, h_kv, n]` predicted scores of the hidden states.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        _values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, _] = keys.dims();
        let [_, m, hidden] = inputs.hidden_states.dims();
        let surrogate = self
            .layers
            .get(inputs.layer)
            .ok_or_else(|| CoreError::Invalid {
                name: "kvzap",
                detail: format!(
                    "the surrogate covers {} layers, not layer {}",
                    self.layers.len(),
                    inputs.layer
                ),
            })?;
        let (first, last) = match surrogate {
            Surrogate::Linear(a) => (a, a),
            Surrogate::Mlp(a, b) => (a, b),
        };
        if m != n || first.inp != hidden || last.out != h_kv {
            return Err(CoreError::Invalid {
                name: "kvzap",
                detail: format!(
                    "a surrogate from {} features to {} heads for {m} tokens of {hidden} features, \
                     {n} entries of {h_kv} heads",
                    first.inp, last.out
                ),
            });
        }
        let x = inputs.hidden_states.clone().reshape([n, hidden]);
        let y = match surrogate {
            Surrogate::Linear(a) => a.apply(x),
            Surrogate::Mlp(a, b) => b.apply(gelu(a.apply(x))),
        };
        Ok(y.transpose().reshape([1, h_kv, n]))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;

    fn write(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let owned: Vec<_> = tensors
            .iter()
            .map(|(n, s, v)| (n.to_string(), s.clone(), v.clone()))
            .collect();
        kvpress_core::artifacts::write_f32(path, &owned).expect("write");
    }

    #[test]
    fn linear_and_mlp_surrogates_from_a_file() {
        let dir = std::env::temp_dir().join(format!("kvzap-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = Fixture::new(1, 2, 3, 4); // hidden [1, 3, 8]
        let hidden: Vec<f32> = f.hidden.clone().into_data().to_vec().expect("f32");
        // linear: head 0 reads feature 0, head 1 twice feature 1, biases 1 and 0
        let mut w = vec![0f32; 16];
        w[0] = 1.0;
        w[8 + 1] = 2.0;
        let linear = dir.join("linear.safetensors");
        write(
            &linear,
            &[
                ("layers.0.weight", vec![2, 8], w),
                ("layers.0.bias", vec![2], vec![1.0, 0.0]),
            ],
        );
        let zap = KvZap::load(&linear, false).expect("load");
        let s: Vec<f32> = zap
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        for i in 0..3 {
            assert!((s[i] - (hidden[i * 8] + 1.0)).abs() < 1e-6);
            assert!((s[3 + i] - 2.0 * hidden[i * 8 + 1]).abs() < 1e-6);
        }
        // mlp with an identity-like first layer on feature 0: GELU(x) then ×1 to both heads
        let mut w1 = vec![0f32; 8];
        w1[0] = 1.0;
        let mlp = dir.join("mlp.safetensors");
        write(
            &mlp,
            &[
                ("layers.0.fc1.weight", vec![1, 8], w1),
                ("layers.0.fc1.bias", vec![1], vec![0.0]),
                ("layers.0.fc2.weight", vec![2, 1], vec![1.0, -1.0]),
                ("layers.0.fc2.bias", vec![2], vec![0.0, 0.0]),
            ],
        );
        let zap = KvZap::load(&mlp, true).expect("load");
        let s: Vec<f32> = zap
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        let gelu = |x: f32| {
            let x = x as f64;
            (0.5 * x * (1.0 + erf(x / 2f64.sqrt()))) as f32
        };
        for i in 0..3 {
            assert!((s[i] - gelu(hidden[i * 8])).abs() < 1e-4, "{s:?}");
            assert!((s[3 + i] + gelu(hidden[i * 8])).abs() < 1e-4);
        }
        assert!(
            KvZap::load(&linear, true).is_err(),
            "a linear file is not an mlp"
        );
        assert!(KvZap::load(&dir.join("missing.safetensors"), false).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// erf by Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7).
    fn erf(x: f64) -> f64 {
        let t = 1.0 / (1.0 + 0.3275911 * x.abs());
        let y = 1.0
            - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
                + 0.254829592)
                * t
                * (-x * x).exp();
        y.copysign(x)
    }
}
