//! Fused optimizer steps over lists of parameters: each reads `param.grad`, updates the
//! parameter and its state buffers in place (copy-on-write if a buffer is shared).
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::PyVar;
use crate::optim;
use crate::tensor::Tensor;

fn grad_of(p: &PyVar) -> PyResult<Tensor> {
    p.0.grad().ok_or_else(|| PyValueError::new_err("optimizer step: a parameter has no gradient (call backward first)"))
}

fn check_len(what: &str, a: usize, b: usize) -> PyResult<()> {
    if a != b {
        return Err(PyValueError::new_err(format!("optimizer step: {a} parameters but {b} {what} buffers")));
    }
    Ok(())
}

/// Run `f(param, grad, states)` for each parameter on the kernel pool, GIL released.
fn each(py: Python<'_>, params: &[PyRef<PyVar>], states: &[&[PyRef<PyVar>]], f: impl Fn(&mut [f32], &[f32], &mut [&mut [f32]]) + Send + Sync) -> PyResult<()> {
    let grads: Vec<Tensor> = params.iter().map(|p| grad_of(p)).collect::<PyResult<_>>()?;
    for (i, p) in params.iter().enumerate() {
        if grads[i].shape != p.0.shape() {
            return Err(PyValueError::new_err(format!("optimizer step: gradient shape {:?} does not match parameter shape {:?}", grads[i].shape, p.0.shape())));
        }
        for s in states {
            if s[i].0.shape() != p.0.shape() {
                return Err(PyValueError::new_err("optimizer step: state buffer shape does not match its parameter"));
            }
        }
    }
    let ps: Vec<crate::Var> = params.iter().map(|p| p.0.clone()).collect();
    let ss: Vec<Vec<crate::Var>> = states.iter().map(|s| s.iter().map(|v| v.0.clone()).collect()).collect();
    let work: usize = ps.iter().map(|p| p.shape().iter().product::<usize>()).sum();
    let inline = work < crate::kernels::PAR_MIN_LEN || crate::kernels::num_threads() == 1;
    py.detach(|| {
        let run = || {
            for (i, p) in ps.iter().enumerate() {
                // update inside the Vars' own storage: no copy unless a buffer is shared
                let mut pv = p.value_mut();
                let mut bufs: Vec<_> = ss.iter().map(|s| s[i].value_mut()).collect();
                let mut slices: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.make_mut()).collect();
                f(pv.make_mut(), grads[i].data(), &mut slices);
            }
        };
        // small or single-threaded updates run on the calling thread (no pool handoff)
        if inline { run() } else { crate::kernels::pool().install(run) }
    });
    Ok(())
}

#[pyfunction]
#[pyo3(signature = (params, bufs, lr, momentum, dampening, nesterov, weight_decay, first, maximize))]
#[allow(clippy::too_many_arguments)]
fn sgd_step(py: Python<'_>, params: Vec<PyRef<PyVar>>, bufs: Vec<PyRef<PyVar>>, lr: f32, momentum: f32, dampening: f32, nesterov: bool, weight_decay: f32, first: bool, maximize: bool) -> PyResult<()> {
    if momentum != 0.0 {
        check_len("momentum", params.len(), bufs.len())?;
        each(py, &params, &[&bufs], |p, g, s| optim::sgd(p, g, Some(&mut *s[0]), lr, momentum, dampening, nesterov, weight_decay, first, maximize))
    } else {
        each(py, &params, &[], |p, g, _| optim::sgd(p, g, None, lr, 0.0, dampening, nesterov, weight_decay, first, maximize))
    }
}

#[pyfunction]
#[pyo3(signature = (params, m, v, max_v, lr, beta1, beta2, eps, weight_decay, step, decoupled, maximize))]
#[allow(clippy::too_many_arguments)]
fn adam_step(py: Python<'_>, params: Vec<PyRef<PyVar>>, m: Vec<PyRef<PyVar>>, v: Vec<PyRef<PyVar>>, max_v: Option<Vec<PyRef<PyVar>>>, lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, step: u64, decoupled: bool, maximize: bool) -> PyResult<()> {
    check_len("exp_avg", params.len(), m.len())?;
    check_len("exp_avg_sq", params.len(), v.len())?;
    match &max_v {
        Some(mv) => {
            check_len("max_exp_avg_sq", params.len(), mv.len())?;
            each(py, &params, &[&m, &v, mv], |p, g, s| {
                let [a, b, c] = s else { unreachable!() };
                optim::adam(p, g, a, b, Some(c), lr, beta1, beta2, eps, weight_decay, step, decoupled, maximize)
            })
        }
        None => each(py, &params, &[&m, &v], |p, g, s| {
            let [a, b] = s else { unreachable!() };
            optim::adam(p, g, a, b, None, lr, beta1, beta2, eps, weight_decay, step, decoupled, maximize)
        }),
    }
}

#[pyfunction]
#[pyo3(signature = (params, sq, mom, grad_avg, lr, alpha, eps, weight_decay, momentum, maximize))]
#[allow(clippy::too_many_arguments)]
fn rmsprop_step(py: Python<'_>, params: Vec<PyRef<PyVar>>, sq: Vec<PyRef<PyVar>>, mom: Option<Vec<PyRef<PyVar>>>, grad_avg: Option<Vec<PyRef<PyVar>>>, lr: f32, alpha: f32, eps: f32, weight_decay: f32, momentum: f32, maximize: bool) -> PyResult<()> {
    check_len("square_avg", params.len(), sq.len())?;
    let mut states: Vec<&[PyRef<PyVar>]> = vec![&sq];
    if let Some(m) = &mom {
        check_len("momentum", params.len(), m.len())?;
        states.push(m);
    }
    if let Some(a) = &grad_avg {
        check_len("grad_avg", params.len(), a.len())?;
        states.push(a);
    }
    let (has_m, has_a) = (mom.is_some(), grad_avg.is_some());
    each(py, &params, &states, |p, g, s| {
        let (sq, rest) = s.split_first_mut().unwrap();
        let (m, rest) = if has_m { let (a, r) = rest.split_first_mut().unwrap(); (Some(&mut **a), r) } else { (None, rest) };
        let a = if has_a { Some(&mut *rest[0]) } else { None };
        optim::rmsprop(p, g, sq, m, a, lr, alpha, eps, weight_decay, momentum, maximize)
    })
}

#[pyfunction]
#[pyo3(signature = (params, sums, lr, lr_decay, weight_decay, eps, step, maximize))]
#[allow(clippy::too_many_arguments)]
fn adagrad_step(py: Python<'_>, params: Vec<PyRef<PyVar>>, sums: Vec<PyRef<PyVar>>, lr: f32, lr_decay: f32, weight_decay: f32, eps: f32, step: u64, maximize: bool) -> PyResult<()> {
    check_len("sum", params.len(), sums.len())?;
    each(py, &params, &[&sums], |p, g, s| optim::adagrad(p, g, s[0], lr, lr_decay, weight_decay, eps, step, maximize))
}

/// Sum of squares of the given tensors' gradients (f64, fixed order).
#[pyfunction]
fn grad_sq_norm(py: Python<'_>, params: Vec<PyRef<PyVar>>) -> f64 {
    let gs: Vec<Tensor> = params.iter().filter_map(|p| p.0.grad()).collect();
    py.detach(|| gs.iter().map(|g| optim::sum_sq(g.data())).sum())
}

/// Multiply every given gradient by `s` in place.
#[pyfunction]
fn scale_grads(py: Python<'_>, params: Vec<PyRef<PyVar>>, s: f32) {
    let ps: Vec<crate::Var> = params.iter().map(|p| p.0.clone()).collect();
    py.detach(|| {
        for p in ps {
            if let Some(mut g) = p.grad() {
                optim::scale_inplace(g.make_mut(), s);
                p.set_grad(Some(g));
            }
        }
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sgd_step, m)?)?;
    m.add_function(wrap_pyfunction!(adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(rmsprop_step, m)?)?;
    m.add_function(wrap_pyfunction!(adagrad_step, m)?)?;
    m.add_function(wrap_pyfunction!(grad_sq_norm, m)?)?;
    m.add_function(wrap_pyfunction!(scale_grads, m)?)?;
    Ok(())
}
