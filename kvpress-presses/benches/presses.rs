//! Time of one press on one layer of a 1k- and a 4k-token prefill at the default model's shape
//! (9 query heads, 3 KV heads, head dimension 64, hidden 576), random inputs, on the flex
//! backend: scoring, choosing and evicting, as the model calls it.
//! `cargo bench -p kvpress-presses`.
//!
//! Against a layer's prefill (`cargo xtask bench` reports the share inside presses end to end),
//! this isolates the press so that its cost can be profiled (`perf record` on the bench binary).

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use kvpress_core::{
    AttentionWeights, LayerCache, LayerInputs, Press, RopeScaling, RotaryEmbedding,
};

fn main() {
    // as the binaries run (kvpress, cargo xtask bench)
    kvpress_core::allocator::tune_for_tensors();
    divan::main();
}

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const HIDDEN: usize = 576;

/// One layer's press inputs and full cache for `n` tokens.
struct Layer {
    hidden: Tensor<Flex, 3>,
    queries: Tensor<Flex, 4>,
    keys: Tensor<Flex, 4>,
    values: Tensor<Flex, 4>,
    positions: Vec<usize>,
    rope: RotaryEmbedding,
    w_q: Tensor<Flex, 2>,
    w_k: Tensor<Flex, 2>,
    w_o: Tensor<Flex, 2>,
}

impl Layer {
    fn new(n: usize) -> Self {
        let dev = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        let Ok(rope) = RotaryEmbedding::new(HEAD_DIM, 100_000.0, &RopeScaling::None) else {
            panic!("the bench's RoPE configuration is valid");
        };
        Self {
            hidden: Tensor::random([1, n, HIDDEN], normal, &dev),
            // Heads-first views of token-major projections, as the model hands them over.
            // (the cache lays keys and values out contiguously as it takes them).
            queries: Tensor::random([1, n, HEADS, HEAD_DIM], normal, &dev).swap_dims(1, 2),
            keys: Tensor::random([1, n, KV_HEADS, HEAD_DIM], normal, &dev).swap_dims(1, 2),
            values: Tensor::random([1, n, KV_HEADS, HEAD_DIM], normal, &dev).swap_dims(1, 2),
            positions: (0..n).collect(),
            rope,
            w_q: Tensor::random([HIDDEN, HEADS * HEAD_DIM], normal, &dev),
            w_k: Tensor::random([HIDDEN, KV_HEADS * HEAD_DIM], normal, &dev),
            w_o: Tensor::random([HEADS * HEAD_DIM, HIDDEN], normal, &dev),
        }
    }

    fn inputs(&self) -> LayerInputs<'_, Flex> {
        LayerInputs {
            layer: 0,
            num_layers: 30,
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

    fn cache(&self) -> LayerCache<Flex> {
        let mut cache = LayerCache::default();
        if let Err(e) = cache.append(self.keys.clone(), self.values.clone(), &self.positions) {
            panic!("appending the bench's cache: {e}");
        }
        cache
    }
}

#[divan::bench(
    args = ["knorm", "snapkv", "expected_attention", "adakv(expected_attention)"],
    consts = [1024, 4096],
)]
fn compress_at_half<const N: usize>(bencher: divan::Bencher, press: &str) {
    let layer = Layer::new(N);
    let press: Box<dyn Press<Flex>> = match kvpress_presses::registry::build(press, Some(0.5)) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    bencher
        .with_inputs(|| layer.cache())
        .bench_local_values(|mut cache| {
            if let Err(e) = press.compress(&layer.inputs(), &mut cache) {
                panic!("{e}");
            }
            cache
        });
}
