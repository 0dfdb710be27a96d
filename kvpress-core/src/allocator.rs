//! Process-wide settings of the C allocator for binaries that run models on the host.
//!
//! A CPU forward allocates and frees tensors of megabytes per layer. glibc serves such blocks
//! with `mmap` (its threshold grows only to 32 MiB) and hands freed heap tops back to the kernel
//! above 128 KiB, so every layer faults its pages in again: a tenth of a 4k-token prefill was
//! page faults (`perf`). Keeping blocks up to 64 MiB in the heap reuses the pages (a 4k-token
//! prefill of the default model: 6.2 → 4.9 s). Free memory above 256 MiB at a heap's top still
//! goes back to the kernel. The trim threshold trades speed for memory (measured with `cargo
//! xtask bench`, docs/bench/README.md): at 64 MiB a 4k-token prefill gave back and faulted in
//! its layers' temporaries (830–848 tokens/s against 884–894 at 256 MiB); at 512 MiB every
//! thread's arena held its freed layers, and a 16k-token prefill compressed at 0.5 peaked only
//! 38% of the cache below an uncompressed one (256 MiB: 47%).

/// Blocks above this many bytes still get their own mapping.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 64 << 20;
/// Free memory at a heap's top beyond this many bytes goes back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Applies the settings above (glibc on Linux; elsewhere nothing). Call it once at the start
/// of `main`, before threads start; it returns whether glibc accepted both.
pub fn tune_for_tensors() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called with valid options.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
