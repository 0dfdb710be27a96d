//! ThinKPress (kvpress `think`): prune key *channels* instead of tokens. Channels where both the
//! recent queries and the keys carry little energy are zeroed for every token of the KV head.
//! Paper: arXiv 2407.21018.
//!
//! With the last `window_size` post-RoPE queries `Q_w` (`[h_q, w, d]`) and the cached keys `K`
//! (`[h_kv, n, d]`): `σ_c = mean_group(mean_t Q_w[t, c]²) · mean_i K[i, c]²`; the
//! `⌊d·ratio⌋` channels with the lowest `σ_c` of each KV head are set to 0. Shapes are unchanged
//! (kvpress saves no memory here either); its `compression_ratio` is `ratio / 2`.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::check_ratio;
use kvpress_core::{LayerCache, LayerInputs, Press};

/// The ThinK press (default window 32).
#[derive(Debug, Clone, Copy)]
pub struct Think {
    /// Fraction of key channels zeroed.
    pub key_channel_compression_ratio: f64,
    /// Recent queries whose energy is measured.
    pub window_size: usize,
}

impl Think {
    /// A press zeroing `key_channel_compression_ratio` of the key channels.
    pub fn new(key_channel_compression_ratio: f64) -> Result<Self> {
        check_ratio(key_channel_compression_ratio)?;
        Ok(Self {
            key_channel_compression_ratio,
            window_size: 32,
        })
    }

    /// The equivalent token compression ratio (only keys are touched): `ratio / 2`.
    pub fn compression_ratio(&self) -> f64 {
        self.key_channel_compression_ratio / 2.0
    }
}

impl<B: Backend> Press<B> for Think {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        if self.key_channel_compression_ratio == 0.0 {
            return Ok(());
        }
        let Some((ref keys, _)) = cache.keys_values()? else {
            return Ok(());
        };
        let [_, h_kv, _, d] = keys.dims();
        let [_, h, n, _] = inputs.queries.dims();
        let w = self.window_size;
        if n < w || h % h_kv != 0 {
            return Err(CoreError::Invalid {
                name: "window_size",
                detail: format!("think needs at least {w} query tokens, got {n}"),
            });
        }
        let q = inputs.queries.clone().narrow(2, n - w, w);
        let q_energy = (q.clone() * q)
            .mean_dim(2)
            .reshape([1, h_kv, h / h_kv, d])
            .mean_dim(2); // [1, h_kv, 1, d]
        let k_energy = (keys.clone() * keys.clone()).mean_dim(2); // [1, h_kv, 1, d]
        let sigma: Vec<f32> = (q_energy * k_energy)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| CoreError::Data(format!("{e:?}")))?;
        let pruned = (d as f64 * self.key_channel_compression_ratio) as usize;
        let mut mask = vec![1f32; h_kv * d];
        for (head, row) in sigma.chunks(d).enumerate() {
            let mut channels: Vec<usize> = (0..d).collect();
            channels.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
            for &c in channels.iter().take(pruned) {
                mask[head * d + c] = 0.0;
            }
        }
        let mask =
            Tensor::<B, 4>::from_data(TensorData::new(mask, [1, h_kv, 1, d]), &keys.device());
        cache.map_keys(|k| k * mask)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;
    use burn::backend::Flex;

    #[test]
    fn zeroes_the_weakest_channels_of_each_head() {
        let mut f = Fixture::new(1, 1, 40, 4);
        // keys: channel c has magnitude c + 1 → channel 0 is weakest; queries uniform
        let keys: Vec<f32> = (0..40).flat_map(|_| [1.0f32, 2.0, 3.0, 4.0]).collect();
        f.keys = Tensor::from_data(TensorData::new(keys, [1, 1, 40, 4]), &Default::default());
        f.queries = Tensor::ones([1, 1, 40, 4], &Default::default());
        let mut cache = LayerCache::<Flex>::default();
        cache
            .append(f.keys.clone(), f.keys.clone(), &f.positions)
            .expect("append");
        Think::new(0.5)
            .expect("press")
            .compress(&f.inputs(), &mut cache)
            .expect("compress");
        let (k, _) = cache.keys_values().expect("dense").expect("kv");
        let row: Vec<f32> = k.clone().narrow(2, 0, 1).into_data().to_vec().expect("f32");
        assert_eq!(row, vec![0.0, 0.0, 3.0, 4.0]);
        assert_eq!(cache.len(), 40);
    }
}
