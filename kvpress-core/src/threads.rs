//! Where a model's forward runs.
//!
//! On the flex backend the matmuls and the decoding kernels spread their work over rayon's
//! pool. Called from a thread outside the pool, every such call wakes the pool through a lock
//! and a condition variable and puts the caller to sleep until the work is done; a decoding step
//! makes such calls for every dense layer and attention of every layer (1k tokens: 43–48 →
//! 51–53 tok/s measured once the forward ran on the pool). Running the whole forward on one of
//! the pool's threads makes each of them a plain fork-join instead.
//!
//! The pool's idle threads still fall asleep between those passes: rayon puts a thread to
//! sleep after a few dozen rounds of looking for work (a few microseconds here), and the next
//! pass then waits for the kernel to wake it, tens of microseconds on these virtual machines,
//! for each of the many short passes of a decoding step or a press. So while the forward runs,
//! a second thread of the pool keeps looking for its work (`rayon::yield_now`) instead: at 1k
//! tokens a press's passes took 480 → 420 µs per layer, decoding 53.6–54.2 → 55.7–58.0
//! tokens/s, at 4k 36.1 → 40.6 tokens/s.

/// Runs `f` on a thread of the compute pool (flex: rayon's global pool, another of whose
/// threads keeps looking for `f`'s parallel work until `f` returns; other backends: here) and
/// returns its result. Calls from inside the pool run on the calling thread.
pub fn on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "flex")]
    {
        rayon::scope(|_| with_pool_awake(f))
    }
    #[cfg(not(feature = "flex"))]
    {
        f()
    }
}

/// `f()` on this pool thread while a job on another thread of the pool (if one takes it) runs
/// what `f` hands out, through `rayon::yield_now`, until `f` returns.
#[cfg(feature = "flex")]
fn with_pool_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(here) = rayon::current_thread_index() else {
        return f();
    };
    let done = AtomicBool::new(false);
    let (result, ()) = rayon::join(
        || {
            let result = f();
            done.store(true, Ordering::Release);
            result
        },
        || {
            // left to this thread itself (no other took it, or the pool has one thread): `f`
            // is over, nothing to wait for
            if rayon::current_thread_index() == Some(here) {
                return;
            }
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        },
    );
    result
}
