//! PerLayerCompressionPress (kvpress `per_layer_compression`): a scorer with its own
//! compression ratio for every layer (layers end with different lengths).

use burn::tensor::backend::Backend;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{check_ratio, kept_count};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer, keep_top_scored};

/// A scorer press whose ratio depends on the layer.
#[derive(Debug, Clone)]
pub struct PerLayerCompression<S> {
    /// The scorer.
    pub scorer: S,
    /// One ratio in `[0, 1)` per layer.
    pub compression_ratios: Vec<f64>,
}

impl<S> PerLayerCompression<S> {
    /// `scorer` with ratio `compression_ratios[l]` on layer `l`.
    pub fn new(scorer: S, compression_ratios: Vec<f64>) -> Result<Self> {
        for &r in &compression_ratios {
            check_ratio(r)?;
        }
        Ok(Self {
            scorer,
            compression_ratios,
        })
    }

    /// The mean ratio over the layers (kvpress's `compression_ratio` of this press).
    pub fn mean_ratio(&self) -> f64 {
        self.compression_ratios.iter().sum::<f64>() / self.compression_ratios.len().max(1) as f64
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for PerLayerCompression<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        if self.compression_ratios.len() != inputs.num_layers {
            return Err(CoreError::Invalid {
                name: "compression_ratios",
                detail: format!(
                    "per_layer_compression has {} ratios but the model has {} layers",
                    self.compression_ratios.len(),
                    inputs.num_layers
                ),
            });
        }
        let ratio = self.compression_ratios[inputs.layer];
        if ratio == 0.0 {
            return Ok(());
        }
        keep_top_scored(&self.scorer, inputs, cache, |n| kept_count(n, ratio))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::knorm::Knorm;
    use crate::test_support::{Fixture, kept_positions};

    #[test]
    fn each_layer_uses_its_ratio() {
        let mut f = Fixture::new(1, 2, 10, 4);
        f.num_layers = 2;
        let press = PerLayerCompression::new(Knorm, vec![0.0, 0.7]).expect("press");
        assert_eq!(kept_positions(&f, &press)[0].len(), 10);
        f.layer = 1;
        assert_eq!(kept_positions(&f, &press)[0].len(), 3);
        assert!(PerLayerCompression::new(Knorm, vec![0.2, 1.0]).is_err());
    }

    #[test]
    fn a_ratio_list_of_the_wrong_length_is_an_error() {
        let f = Fixture::new(1, 2, 10, 4); // one layer
        let press = PerLayerCompression::new(Knorm, vec![0.1, 0.2]).expect("press");
        let mut cache = LayerCache::default();
        cache
            .append(f.keys.clone(), f.keys.clone(), &f.positions)
            .expect("append");
        let err = press
            .compress(&f.inputs(), &mut cache)
            .expect_err("2 ratios for 1 layer");
        assert!(err.to_string().contains("2 ratios"), "{err}");
    }
}
