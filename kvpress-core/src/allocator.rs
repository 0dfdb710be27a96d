//! Process-wide settings of the C allocator for binaries that run models on the host.
//!
//! A CPU forward allocates and frees tensors of megabytes per layer. glibc serves such blocks
//! with `mmap` (its threshold grows only to 32 MiB) and hands freed heap tops back to the kernel
//! above 128 KiB, so every layer faults its pages in again: a tenth of a 4k-token prefill was
//! page faults (`perf`). Keeping blocks up to 64 MiB in the heap reuses the pages (a 4k-token
//! prefill of the default model: 6.2 → 4.9 s). Free memory above 256 MiB at a heap's top still
//! goes back to the kernel; at 64 MiB a 4k-token prefill gave back and faulted in its layers'
//! temporaries (830–848 tokens/s against 884–894 at 256 MiB). What a press frees inside the
//! heaps goes back through [`release_freed`] (measured with `cargo xtask bench`,
//! docs/bench/README.md).

/// Blocks above this many bytes still get their own mapping.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 64 << 20;
/// Free memory at a heap's top beyond this many bytes goes back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Whether [`tune_for_tensors`] ran (then [`release_freed`] trims the heaps).
static TUNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Applies the settings above (glibc on Linux; elsewhere nothing). Call it once at the start
/// of `main`, before threads start; it returns whether glibc accepted both.
pub fn tune_for_tensors() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called with valid options.
        let tuned = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        };
        TUNED.store(tuned, std::sync::atomic::Ordering::Relaxed);
        tuned
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Freed bytes at which [`release_freed`] trims the heaps: a 16k-token prefill of the default
/// model frees 12 MiB per layer at 0.5 and peaked 1601–1861 MiB untrimmed (none: 1943),
/// 1474–1498 MiB trimmed; at 4k tokens (3 MiB per layer) trimming every layer cost a fifth of
/// the prefill (the layers' temporaries faulted in again) for no memory that matters.
const RELEASE_THRESHOLD: usize = 8 << 20;

/// Hands the free memory of every heap back to the kernel (glibc's `malloc_trim`) once a press
/// has freed at least 8 MiB of a layer's cache, in a process whose heaps
/// [`tune_for_tensors`] set up; nothing otherwise. The freed uncompressed entries lie between
/// long-lived compressed ones, where the trim threshold never reaches them.
pub fn release_freed(freed_bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if freed_bytes >= RELEASE_THRESHOLD && TUNED.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: malloc_trim only returns free pages to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (freed_bytes, RELEASE_THRESHOLD);
}
