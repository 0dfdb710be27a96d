//! The one place where the concrete burn backend is chosen (cargo features `flex` / `cuda`).

#[cfg(feature = "cuda")]
mod chosen {
    /// The backend of this build.
    pub type Backend = burn::backend::Cuda;

    /// The CUDA device 0, after checking that an NVIDIA driver is present (burn-cuda panics
    /// without one).
    pub fn device() -> anyhow::Result<burn::backend::cuda::CudaDevice> {
        if !super::cuda_driver_present() {
            anyhow::bail!(
                "this kvpress was built with the `cuda` feature but no NVIDIA driver (libcuda.so.1) was found; \
                 run it on a machine with an NVIDIA GPU, or rebuild without `--features cuda` for the CPU backend"
            );
        }
        Ok(burn::backend::cuda::CudaDevice::default())
    }

    /// Name for reports.
    pub const NAME: &str = "cuda";

    /// The GPU kernel is parallel already.
    pub fn attention_threads() -> usize {
        1
    }
}

#[cfg(all(feature = "flex", not(feature = "cuda")))]
mod chosen {
    /// The backend of this build.
    pub type Backend = burn::backend::Flex;

    /// The CPU device.
    pub fn device() -> anyhow::Result<burn::backend::flex::FlexDevice> {
        Ok(Default::default())
    }

    /// Name for reports.
    pub const NAME: &str = "flex";

    /// Prefill attention (kvpress-core's CPU kernel) spreads query blocks over the cores.
    pub fn attention_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[cfg(not(any(feature = "flex", feature = "cuda")))]
compile_error!("kvpress-cli needs a backend: enable the `flex` (default) or `cuda` feature");

pub use chosen::{Backend, NAME, attention_threads, device};

/// Whether the NVIDIA driver library can be found (checked before creating a CUDA device).
#[allow(dead_code)]
pub fn cuda_driver_present() -> bool {
    if std::path::Path::new("/proc/driver/nvidia/version").exists() {
        return true;
    }
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/cuda/lib64",
            "/usr/local/nvidia/lib64",
            "/usr/lib/wsl/lib",
        ]
        .map(std::path::PathBuf::from),
    );
    dirs.iter()
        .any(|d| d.join("libcuda.so.1").exists() || d.join("libcuda.so").exists())
}
