//! Errors raised by the core primitives.

/// An error from the cache, the attention kernel or a press.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Tensors handed to a primitive do not have the shapes it documents.
    #[error("shape mismatch in {context}: {detail}")]
    Shape {
        /// The primitive that checked the shapes.
        context: &'static str,
        /// What was expected and what was found.
        detail: String,
    },
    /// A configuration value is outside its valid range.
    #[error("invalid {name}: {detail}")]
    Invalid {
        /// The parameter.
        name: &'static str,
        /// Why it is invalid.
        detail: String,
    },
    /// Reading a tensor back to the host failed.
    #[error("tensor data: {0}")]
    Data(String),
    /// The model run on behalf of a press (KVzip's probes) failed.
    #[error("model: {0}")]
    Model(String),
}

/// Result alias for the core crate.
pub type Result<T> = std::result::Result<T, CoreError>;
