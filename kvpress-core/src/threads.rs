//! Where a model's forward runs.
//!
//! On the flex backend the matmuls and the decoding kernels spread their work over rayon's
//! pool. Called from a thread outside the pool, every such call wakes the pool through a lock
//! and a condition variable and puts the caller to sleep until the work is done; a decoding step
//! makes such calls for every dense layer and attention of every layer (1k tokens: 43–48 →
//! 51–53 tok/s measured once the forward ran on the pool). Running the whole forward on one of
//! the pool's threads makes each of them a plain fork-join instead.

/// Runs `f` on a thread of the compute pool (flex: rayon's global pool; other backends: here)
/// and returns its result. Calls from inside the pool run in place.
pub fn on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "flex")]
    {
        rayon::scope(|_| f())
    }
    #[cfg(not(feature = "flex"))]
    {
        f()
    }
}
