//! # kvpress-presses
//!
//! KV-cache compression methods ("presses"), one file per press, each implementing
//! [`kvpress_core::Press`] over any burn backend, with the defaults of kvpress 0.5.5.
//!
//! This crate is the home of the presses issue; the foundation (model, loading, generation)
//! ships first and calls presses through the `Press` hook of `kvpress-core` only.

pub use kvpress_core::{LayerInputs, Press};

pub mod chunk;
pub mod composed;
pub mod expected_attention;
pub mod expr;
pub mod keydiff;
pub mod knorm;
pub mod pyramidkv;
pub mod random;
pub mod snapkv;
pub mod streaming_llm;
#[cfg(all(test, feature = "flex"))]
mod test_support;
pub mod think;
pub mod tova;
