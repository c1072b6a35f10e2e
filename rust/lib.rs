//! batchgrad: float32 tensors, a tape-based reverse-mode autodiff over one op registry,
//! batched CPU kernels, and fused optimizer updates. The Python layer lives in `py/`.

pub mod error;
pub mod kernels;
pub mod ops;
pub mod optim;
pub mod shape;
pub mod tape;
pub mod tensor;

pub use error::{Error, Result};
pub use ops::Op;
pub use tape::{no_grad, Var};
pub use tensor::Tensor;

#[cfg(feature = "python")]
mod py;

// Small allocations (tensor headers, shapes, strides) are a large part of a small step's
// per-op cost; mimalloc serves them ~2x faster than glibc (benches/RESULTS.md, compiled batch 1).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
