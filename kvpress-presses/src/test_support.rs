//! Small random fixtures for the presses' unit tests.

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use kvpress_core::{
    AttentionWeights, LayerCache, LayerInputs, Press, RopeScaling, RotaryEmbedding,
};

/// Random keys, queries and hidden states of one layer (batch 1).
pub struct Fixture {
    /// `[1, h_kv, n, d]`
    pub keys: Tensor<Flex, 4>,
    /// `[1, h_kv · g, n, d]`
    pub queries: Tensor<Flex, 4>,
    /// `[1, n, 8]`
    pub hidden: Tensor<Flex, 3>,
    /// `0..n`
    pub positions: Vec<usize>,
    /// RoPE of head dimension `d`.
    pub rope: RotaryEmbedding,
    /// W_Q `[8, h_q·d]`, W_K `[8, h_kv·d]`, W_O `[h_q·d, 8]`.
    pub w_q: Tensor<Flex, 2>,
    /// W_K.
    pub w_k: Tensor<Flex, 2>,
    /// W_O.
    pub w_o: Tensor<Flex, 2>,
    /// The layer index the inputs report (0).
    pub layer: usize,
    /// The layer count the inputs report (1).
    pub num_layers: usize,
}

impl Fixture {
    /// `g` query heads per KV head, `h_kv` KV heads, `n` tokens, head dimension `d`.
    pub fn new(g: usize, h_kv: usize, n: usize, d: usize) -> Self {
        let dev = Default::default();
        Self {
            keys: Tensor::random([1, h_kv, n, d], Distribution::Normal(0.0, 1.0), &dev),
            queries: Tensor::random([1, h_kv * g, n, d], Distribution::Normal(0.0, 1.0), &dev),
            hidden: Tensor::random([1, n, 8], Distribution::Normal(0.0, 1.0), &dev),
            positions: (0..n).collect(),
            rope: RotaryEmbedding::new(d, 10000.0, &RopeScaling::None).expect("rope"),
            w_q: Tensor::random([8, h_kv * g * d], Distribution::Normal(0.0, 1.0), &dev),
            w_k: Tensor::random([8, h_kv * d], Distribution::Normal(0.0, 1.0), &dev),
            w_o: Tensor::random([h_kv * g * d, 8], Distribution::Normal(0.0, 1.0), &dev),
            layer: 0,
            num_layers: 1,
        }
    }

    /// The press inputs of this fixture.
    pub fn inputs(&self) -> LayerInputs<'_, Flex> {
        LayerInputs {
            layer: self.layer,
            num_layers: self.num_layers,
            hidden_states: &self.hidden,
            queries: &self.queries,
            queries_pre_rope: &self.queries,
            positions: &self.positions,
            rope: &self.rope,
            question_tokens: 0,
            weights: AttentionWeights {
                q_proj: &self.w_q,
                k_proj: &self.w_k,
                o_proj: &self.w_o,
            },
        }
    }
}

/// Positions each head keeps after `press` compresses the fixture's cache.
pub fn kept_positions(f: &Fixture, press: &dyn Press<Flex>) -> Vec<Vec<usize>> {
    let mut cache = LayerCache::<Flex>::default();
    cache
        .append(f.keys.clone(), f.keys.clone(), &f.positions)
        .expect("append");
    press.compress(&f.inputs(), &mut cache).expect("compress");
    cache.positions().to_vec()
}
