//! Shapes, numpy broadcasting, axis normalisation and stride helpers.
use crate::bail;
use crate::error::Result;

pub type Shape = Vec<usize>;

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major (C-order) strides in elements.
pub fn strides(shape: &[usize]) -> Vec<isize> {
    let mut s = vec![0isize; shape.len()];
    let mut acc = 1isize;
    for i in (0..shape.len()).rev() {
        s[i] = acc;
        acc *= shape[i] as isize;
    }
    s
}

/// numpy broadcasting of two shapes; `op` names the operation in the error.
pub fn broadcast_shapes(a: &[usize], b: &[usize], op: &str) -> Result<Shape> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            bail!(Shape, "{op}: shapes {a:?} and {b:?} cannot be broadcast together");
        };
    }
    Ok(out)
}

/// Strides of `shape` seen as broadcast to `out` (0 on broadcast dimensions).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<isize> {
    let st = strides(shape);
    let off = out.len() - shape.len();
    (0..out.len())
        .map(|i| if i < off || shape[i - off] == 1 { 0 } else { st[i - off] })
        .collect()
}

/// Normalise a possibly negative axis against `ndim`.
pub fn norm_axis(axis: i64, ndim: usize, op: &str) -> Result<usize> {
    let n = ndim as i64;
    if axis < -n || axis >= n {
        bail!(Value, "{op}: axis {axis} is out of bounds for a tensor of dimension {ndim}");
    }
    Ok(if axis < 0 { (axis + n) as usize } else { axis as usize })
}

/// Normalise a list of axes (empty list = all axes), sorted, without duplicates.
pub fn norm_axes(axes: &[i64], ndim: usize, op: &str) -> Result<Vec<usize>> {
    if axes.is_empty() {
        return Ok((0..ndim).collect());
    }
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = ndim as i64;
        if a < -n || a >= n {
            bail!(Value, "{op}: axis {a} is out of bounds for a tensor of dimension {ndim}");
        }
        let a = if a < 0 { (a + n) as usize } else { a as usize };
        if out.contains(&a) {
            bail!(Value, "{op}: duplicate axis {a}");
        }
        out.push(a);
    }
    out.sort_unstable();
    Ok(out)
}

/// Shape after reducing `axes` (sorted, normalised).
pub fn reduced_shape(shape: &[usize], axes: &[usize], keepdims: bool) -> Shape {
    let mut out = Vec::with_capacity(shape.len());
    for (i, &d) in shape.iter().enumerate() {
        if axes.contains(&i) {
            if keepdims {
                out.push(1);
            }
        } else {
            out.push(d);
        }
    }
    out
}

/// Resolve a reshape target that may contain one -1.
pub fn resolve_reshape(from: &[usize], to: &[i64]) -> Result<Shape> {
    let n = numel(from);
    let mut infer = None;
    let mut known = 1usize;
    for (i, &d) in to.iter().enumerate() {
        if d == -1 {
            if infer.is_some() {
                bail!(Value, "reshape: can only specify one unknown dimension (-1), got {to:?}");
            }
            infer = Some(i);
        } else if d < 0 {
            bail!(Value, "reshape: negative dimension {d} in {to:?}");
        } else {
            known = known.saturating_mul(d as usize);
        }
    }
    let mut out: Shape = to.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(i) = infer {
        if known == 0 || n % known != 0 {
            bail!(Shape, "reshape: cannot reshape tensor of shape {from:?} into shape {to:?}");
        }
        out[i] = n / known;
    } else if known != n {
        bail!(Shape, "reshape: cannot reshape tensor of shape {from:?} (size {n}) into shape {to:?}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn broadcasting() {
        assert_eq!(broadcast_shapes(&[3, 1], &[4], "add").unwrap(), vec![3, 4]);
        assert_eq!(broadcast_shapes(&[], &[2, 2], "add").unwrap(), vec![2, 2]);
        assert!(broadcast_shapes(&[3], &[4], "add").is_err());
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), vec![0, 1, 0]);
    }
    #[test]
    fn reshape_infer() {
        assert_eq!(resolve_reshape(&[2, 6], &[-1, 4]).unwrap(), vec![3, 4]);
        assert!(resolve_reshape(&[2, 6], &[5, -1]).is_err());
        assert!(resolve_reshape(&[2, 6], &[-1, -1]).is_err());
    }
}

/// `a == b` for shapes and strides without a call to `memcmp` (which the slice comparison
/// becomes): these are a handful of dims, compared once or twice per op, and on the 0-d ops of
/// small graphs that libc call was 8% of the time.
#[inline]
pub fn same<T: Copy + PartialEq>(a: &[T], b: &[T]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut eq = true;
    for i in 0..a.len() {
        eq &= a[i] == b[i];
    }
    eq
}
