//! `Tensor`: an immutable, contiguous, row-major float32 buffer and its shape.
//! It knows nothing about gradients; the tape wraps it in `Var`.
use std::sync::{Arc, OnceLock};

use crate::bail;
use crate::error::Result;
use crate::shape::{numel, Shape};

#[derive(Clone, Debug)]
pub struct Tensor {
    pub data: Arc<Vec<f32>>,
    pub shape: Shape,
}

fn total_memory_bytes() -> usize {
    static MEM: OnceLock<usize> = OnceLock::new();
    *MEM.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<usize>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(usize::MAX / 2)
    })
}

/// Allocate `n` zeroed floats, or a `Memory` error (never an abort) when the request cannot fit.
pub fn alloc(n: usize) -> Result<Vec<f32>> {
    let bytes = n.checked_mul(4).filter(|&b| b <= isize::MAX as usize);
    match bytes {
        Some(b) if b <= total_memory_bytes() => {}
        _ => bail!(Memory, "cannot allocate a tensor of {n} float32 elements ({:.1} GiB): not enough memory", n as f64 * 4.0 / (1u64 << 30) as f64),
    }
    let mut v: Vec<f32> = Vec::new();
    if v.try_reserve_exact(n).is_err() {
        bail!(Memory, "cannot allocate a tensor of {n} float32 elements: out of memory");
    }
    v.resize(n, 0.0);
    Ok(v)
}

/// Checked element count of a shape (overflow is a Memory error).
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    let mut n = 1usize;
    for &d in shape {
        n = match n.checked_mul(d) {
            Some(v) => v,
            None => bail!(Memory, "shape {shape:?} has more elements than can be addressed"),
        };
    }
    Ok(n)
}

impl Tensor {
    pub fn new(data: Vec<f32>, shape: Shape) -> Result<Tensor> {
        if data.len() != checked_numel(&shape)? {
            bail!(Shape, "data of length {} does not fit shape {shape:?}", data.len());
        }
        Ok(Tensor { data: Arc::new(data), shape })
    }
    pub fn zeros(shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor { data: Arc::new(alloc(checked_numel(shape)?)?), shape: shape.to_vec() })
    }
    pub fn full(shape: &[usize], v: f32) -> Result<Tensor> {
        let mut d = alloc(checked_numel(shape)?)?;
        d.iter_mut().for_each(|x| *x = v);
        Ok(Tensor { data: Arc::new(d), shape: shape.to_vec() })
    }
    pub fn scalar(v: f32) -> Tensor {
        Tensor { data: Arc::new(vec![v]), shape: vec![] }
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    /// Same buffer, new shape (caller checked the element count).
    pub fn reshaped(&self, shape: Shape) -> Tensor {
        debug_assert_eq!(numel(&shape), self.numel());
        Tensor { data: self.data.clone(), shape }
    }
    /// Mutable access, copying first if the buffer is shared (copy-on-write).
    pub fn make_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).as_mut_slice()
    }
}
