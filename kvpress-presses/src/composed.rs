//! ComposedPress (kvpress `composed`): several presses applied one after the other on each
//! layer; each sees the cache the previous one left, and the original layer inputs.

use burn::tensor::backend::Backend;
use kvpress_core::error::Result;
use kvpress_core::press::ContextModel;
use kvpress_core::{KvCache, LayerCache, LayerInputs, Press};

/// A chain of presses.
pub struct Composed<B: Backend> {
    /// Applied in order.
    pub presses: Vec<Box<dyn Press<B>>>,
}

impl<B: Backend> Press<B> for Composed<B> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        for press in &self.presses {
            press.compress(inputs, cache)?;
        }
        Ok(())
    }

    fn compress_decoding(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &mut LayerCache<B>,
    ) -> Result<()> {
        for press in &self.presses {
            press.compress_decoding(inputs, cache)?;
        }
        Ok(())
    }

    fn compresses_during_decoding(&self) -> bool {
        self.presses.iter().any(|p| p.compresses_during_decoding())
    }

    fn reset(&self) {
        for press in &self.presses {
            press.reset();
        }
    }

    fn after_prefill(
        &self,
        model: &dyn ContextModel<B>,
        context_ids: &[u32],
        cache: &mut KvCache<B>,
    ) -> Result<()> {
        for press in &self.presses {
            press.after_prefill(model, context_ids, cache)?;
        }
        Ok(())
    }
}
