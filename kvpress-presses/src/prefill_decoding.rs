//! PrefillDecodingPress (kvpress `prefill_decoding`): one press for the prefill, another during
//! decoding.

use burn::tensor::backend::Backend;
use kvpress_core::error::Result;
use kvpress_core::press::ContextModel;
use kvpress_core::{KvCache, LayerCache, LayerInputs, Press};

/// Dispatches the prefill to `prefill` and later forwards to `decoding` (either may be absent).
pub struct PrefillDecoding<B: Backend> {
    /// Compresses the context.
    pub prefill: Option<Box<dyn Press<B>>>,
    /// Compresses during decoding.
    pub decoding: Option<Box<dyn Press<B>>>,
}

impl<B: Backend> Press<B> for PrefillDecoding<B> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        match &self.prefill {
            Some(p) => p.compress(inputs, cache),
            None => Ok(()),
        }
    }

    fn compress_decoding(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &mut LayerCache<B>,
    ) -> Result<()> {
        match &self.decoding {
            Some(p) => p.compress_decoding(inputs, cache),
            None => Ok(()),
        }
    }

    fn compresses_during_decoding(&self) -> bool {
        self.decoding
            .as_ref()
            .is_some_and(|p| p.compresses_during_decoding())
    }

    fn reset(&self) {
        for p in self.prefill.iter().chain(&self.decoding) {
            p.reset();
        }
    }

    fn after_prefill(
        &self,
        model: &dyn ContextModel<B>,
        context_ids: &[u32],
        cache: &mut KvCache<B>,
    ) -> Result<()> {
        match &self.prefill {
            Some(p) => p.after_prefill(model, context_ids, cache),
            None => Ok(()),
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;
    use burn::backend::Flex;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the calls of each phase.
    #[derive(Default)]
    struct Counting {
        prefill: AtomicUsize,
        decoding: AtomicUsize,
    }

    struct Counter(Arc<Counting>);

    impl Press<Flex> for Counter {
        fn compress(&self, _: &LayerInputs<'_, Flex>, _: &mut LayerCache<Flex>) -> Result<()> {
            self.0.prefill.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        fn compress_decoding(
            &self,
            _: &LayerInputs<'_, Flex>,
            _: &mut LayerCache<Flex>,
        ) -> Result<()> {
            self.0.decoding.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn each_phase_goes_to_its_press() {
        let (a, b) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
        let press = PrefillDecoding::<Flex> {
            prefill: Some(Box::new(Counter(a.clone()))),
            decoding: Some(Box::new(Counter(b.clone()))),
        };
        let f = Fixture::new(1, 1, 8, 4);
        let mut cache = LayerCache::default();
        press.compress(&f.inputs(), &mut cache).expect("prefill");
        press
            .compress_decoding(&f.inputs(), &mut cache)
            .expect("decode");
        press
            .compress_decoding(&f.inputs(), &mut cache)
            .expect("decode");
        assert_eq!(a.prefill.load(Ordering::Relaxed), 1);
        assert_eq!(a.decoding.load(Ordering::Relaxed), 0);
        assert_eq!(b.prefill.load(Ordering::Relaxed), 0);
        assert_eq!(b.decoding.load(Ordering::Relaxed), 2);
    }
}
