//! Fused optimizer steps over lists of parameters: each reads `param.grad`, updates the
//! parameter and its state buffers in place (copy-on-write if a buffer is shared).
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::PyVar;
use crate::optim::{self, Rule};
use crate::tape::step::update_vars;
use crate::tape::Grad;
use crate::tensor::Tensor;

/// A parameter's gradient as stored: a deferred one (`Grad::Outer`) stays deferred, and the
/// update computes it block by block.
fn grad_of(p: &PyVar) -> PyResult<Grad> {
    p.0.grad_state().ok_or_else(|| PyValueError::new_err("optimizer step: a parameter has no gradient (call backward first)"))
}

fn vars(v: &[PyRef<PyVar>]) -> Vec<crate::Var> {
    v.iter().map(|p| p.0.clone()).collect()
}

/// Apply `rule` to every parameter with its `.grad` (the eager `optimizer.step()`), GIL released.
/// `states` are the rule's state buffers by position; `None` for an absent optional one.
fn each(py: Python<'_>, rule: Rule, params: &[PyRef<PyVar>], states: &[Option<&[PyRef<PyVar>]>]) -> PyResult<()> {
    let grads: Vec<Grad> = params.iter().map(|p| grad_of(p)).collect::<PyResult<_>>()?;
    let ps = vars(params);
    let ss: Vec<Option<Vec<crate::Var>>> = states.iter().map(|s| s.map(vars)).collect();
    py.detach(|| update_vars(&rule, &ps, &ss, &grads.iter().collect::<Vec<_>>()))?;
    Ok(())
}

#[pyfunction]
#[pyo3(signature = (params, bufs, lr, momentum, dampening, nesterov, weight_decay, first, maximize))]
#[allow(clippy::too_many_arguments)]
fn sgd_step(py: Python<'_>, params: Vec<PyRef<PyVar>>, bufs: Vec<PyRef<PyVar>>, lr: f32, momentum: f32, dampening: f32, nesterov: bool, weight_decay: f32, first: bool, maximize: bool) -> PyResult<()> {
    let rule = Rule::Sgd { lr, momentum, dampening, nesterov, wd: weight_decay, first, maximize };
    each(py, rule, &params, &[if momentum != 0.0 { Some(&bufs[..]) } else { None }])
}

#[pyfunction]
#[pyo3(signature = (params, m, v, max_v, lr, beta1, beta2, eps, weight_decay, step, decoupled, maximize))]
#[allow(clippy::too_many_arguments)]
fn adam_step(py: Python<'_>, params: Vec<PyRef<PyVar>>, m: Vec<PyRef<PyVar>>, v: Vec<PyRef<PyVar>>, max_v: Option<Vec<PyRef<PyVar>>>, lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, step: u64, decoupled: bool, maximize: bool) -> PyResult<()> {
    let rule = Rule::Adam { lr, beta1, beta2, eps, wd: weight_decay, step, decoupled, maximize };
    each(py, rule, &params, &[Some(&m[..]), Some(&v[..]), max_v.as_deref()])
}

#[pyfunction]
#[pyo3(signature = (params, sq, mom, grad_avg, lr, alpha, eps, weight_decay, momentum, maximize))]
#[allow(clippy::too_many_arguments)]
fn rmsprop_step(py: Python<'_>, params: Vec<PyRef<PyVar>>, sq: Vec<PyRef<PyVar>>, mom: Option<Vec<PyRef<PyVar>>>, grad_avg: Option<Vec<PyRef<PyVar>>>, lr: f32, alpha: f32, eps: f32, weight_decay: f32, momentum: f32, maximize: bool) -> PyResult<()> {
    let rule = Rule::RmsProp { lr, alpha, eps, wd: weight_decay, momentum, maximize };
    each(py, rule, &params, &[Some(&sq[..]), mom.as_deref(), grad_avg.as_deref()])
}

#[pyfunction]
#[pyo3(signature = (params, sums, lr, lr_decay, weight_decay, eps, step, maximize))]
#[allow(clippy::too_many_arguments)]
fn adagrad_step(py: Python<'_>, params: Vec<PyRef<PyVar>>, sums: Vec<PyRef<PyVar>>, lr: f32, lr_decay: f32, weight_decay: f32, eps: f32, step: u64, maximize: bool) -> PyResult<()> {
    let rule = Rule::Adagrad { lr, lr_decay, wd: weight_decay, eps, step, maximize };
    each(py, rule, &params, &[Some(&sums[..])])
}

/// Sum of squares of the given tensors' gradients (f64, fixed order).
#[pyfunction]
fn grad_sq_norm(py: Python<'_>, params: Vec<PyRef<PyVar>>) -> PyResult<f64> {
    let gs: Vec<Option<Tensor>> = params.iter().map(|p| p.0.grad()).collect::<crate::error::Result<_>>()?;
    Ok(py.detach(|| gs.iter().flatten().map(|g| optim::sum_sq(g.data())).sum()))
}

/// Multiply every given gradient by `s` in place.
#[pyfunction]
fn scale_grads(py: Python<'_>, params: Vec<PyRef<PyVar>>, s: f32) -> PyResult<()> {
    let ps: Vec<crate::Var> = params.iter().map(|p| p.0.clone()).collect();
    Ok(py.detach(|| -> crate::error::Result<()> {
        for p in ps {
            if let Some(mut g) = p.grad()? {
                optim::scale_inplace(g.make_mut(), s);
                p.set_grad(Some(g));
            }
        }
        Ok(())
    })?)
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
