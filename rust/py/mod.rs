//! PyO3 layer: argument conversion, `py.detach` around every kernel call (but those on tiny inputs,
//! see `run_op`), and error mapping.
//! No logic lives here.
use numpy::ndarray::{ArrayViewD, IxDyn};
use numpy::{PyArrayDyn, PyReadonlyArray1, PyReadonlyArrayDyn, PyReadwriteArray1, PyUntypedArrayMethods};
use pyo3::exceptions::{PyIndexError, PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::sync::Arc;

use crate::error::Error;
use crate::ops::{Attr, Op, TABLE};
use crate::optim::Rule;
use crate::tape::program::{Program, Slot, SlotKind};
use crate::tape::step::{Call, TrainStep};
use crate::tape::{self, Var};
use crate::tensor::Tensor;

mod optim;

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Shape(s) | Error::Value(s) => PyValueError::new_err(s),
            Error::Index(s) => PyIndexError::new_err(s),
            Error::Type(s) => PyTypeError::new_err(s),
            Error::Memory(s) => PyMemoryError::new_err(s),
            Error::Runtime(s) => PyRuntimeError::new_err(s),
        }
    }
}

/// Keeps a tensor buffer alive while numpy views it.
#[pyclass(frozen)]
struct Storage(#[allow(dead_code)] Arc<crate::tensor::Buffer>);

/// A tensor on the tape (the Python `batchgrad.Tensor` wraps one).
#[pyclass(name = "Var", module = "batchgrad._core", frozen)]
pub struct PyVar(pub Var);

fn wrap(v: Var) -> PyVar {
    PyVar(v)
}

#[pymethods]
impl PyVar {
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.0.shape()
    }
    /// Number of dimensions (no shape list built).
    #[getter]
    fn ndim(&self) -> usize {
        self.0.ndim()
    }
    /// Number of elements (no shape list built).
    #[getter]
    fn numel(&self) -> usize {
        self.0.numel()
    }
    #[getter]
    fn id(&self) -> u64 {
        self.0.id()
    }
    #[getter]
    fn requires_grad(&self) -> bool {
        self.0.requires_grad()
    }
    fn set_requires_grad(&self, on: bool) -> PyResult<()> {
        Ok(self.0.set_requires_grad(on)?)
    }
    #[getter]
    fn is_leaf(&self) -> bool {
        self.0.is_leaf()
    }
    /// Name of the op that produced this tensor, or None for a leaf.
    #[getter]
    fn op(&self) -> Option<&'static str> {
        self.0.op_name()
    }
    /// A read-only numpy view of the buffer (no copy).
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let t = self.0.value();
        let view = ArrayViewD::from_shape(IxDyn(&t.shape), t.data()).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let owner = Bound::new(py, Storage(t.data.clone()))?.into_any();
        // SAFETY: `owner` keeps the Arc'd buffer alive for the array's lifetime; buffers are never
        // mutated while shared (copy-on-write), and the array is made read-only.
        let arr = unsafe { PyArrayDyn::borrow_from_array(&view, owner) };
        let kw = PyDict::new(py);
        kw.set_item("write", false)?;
        arr.call_method("setflags", (), Some(&kw))?;
        Ok(arr)
    }
    fn item(&self) -> PyResult<f32> {
        let t = self.0.value();
        if t.numel() != 1 {
            return Err(PyValueError::new_err(format!("item(): only a tensor with one element can be converted to a Python scalar, this one has shape {:?}", t.shape)));
        }
        Ok(t.data()[0])
    }
    #[getter]
    fn grad(&self) -> PyResult<Option<PyVar>> {
        Ok(self.0.grad()?.map(|g| wrap(Var::leaf(g, false))))
    }
    /// Whether a gradient is stored, without computing a deferred one.
    #[getter]
    fn has_grad(&self) -> bool {
        self.0.has_grad()
    }
    /// Whether the stored gradient is still deferred (the two vectors of an outer product).
    #[getter]
    fn grad_deferred(&self) -> bool {
        matches!(self.0.grad_state(), Some(crate::tape::Grad::Outer(_)))
    }
    fn set_grad(&self, g: Option<PyRef<PyVar>>) -> PyResult<()> {
        if let Some(g) = &g {
            if g.0.shape() != self.0.shape() {
                return Err(PyValueError::new_err(format!("grad of shape {:?} does not match the tensor's shape {:?}", g.0.shape(), self.0.shape())));
            }
        }
        self.0.set_grad(g.map(|g| g.0.value()));
        Ok(())
    }
    fn detach(&self) -> PyVar {
        wrap(self.0.detach())
    }
    #[pyo3(signature = (grad=None, retain_graph=false))]
    fn backward(&self, py: Python<'_>, grad: Option<PyRef<PyVar>>, retain_graph: bool) -> PyResult<()> {
        let seed = grad.map(|g| g.0.value());
        let v = self.0.clone();
        Ok(py.detach(move || tape::backward(&v, seed, retain_graph))?)
    }
    /// Overwrite this leaf's value (same shape) with another tensor's value.
    fn assign(&self, other: PyRef<PyVar>) -> PyResult<()> {
        let t = other.0.value();
        if t.shape != self.0.shape() {
            return Err(PyValueError::new_err(format!("assign: shape {:?} does not match {:?}", t.shape, self.0.shape())));
        }
        self.0.set_value(t);
        Ok(())
    }
}

fn to_attrs(d: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, Attr)>> {
    let mut out = Vec::new();
    if let Some(d) = d {
        for (k, v) in d.iter() {
            let k: String = k.extract()?;
            let a = if v.is_instance_of::<pyo3::types::PyBool>() {
                Attr::Bool(v.extract()?)
            } else if let Ok(i) = v.extract::<i64>() {
                Attr::Int(i)
            } else if let Ok(f) = v.extract::<f64>() {
                Attr::Float(f)
            } else if let Ok(l) = v.extract::<Vec<i64>>() {
                Attr::Ints(l)
            } else {
                return Err(PyTypeError::new_err(format!("attribute '{k}': unsupported value {v}")));
            };
            out.push((k, a));
        }
    }
    Ok(out)
}

fn attrs_to_py<'py>(py: Python<'py>, op: &Op) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, a) in op.attrs() {
        match a {
            Attr::Int(i) => d.set_item(k, i)?,
            Attr::Ints(v) => d.set_item(k, v)?,
            Attr::Float(f) => d.set_item(k, f)?,
            Attr::Bool(b) => d.set_item(k, b)?,
        }
    }
    Ok(d)
}

/// Copy a float32 numpy array (any layout) into a new tensor.
#[pyfunction]
#[pyo3(signature = (arr, requires_grad=false))]
fn from_numpy(py: Python<'_>, arr: PyReadonlyArrayDyn<'_, f32>, requires_grad: bool) -> PyResult<PyVar> {
    let shape = arr.shape().to_vec();
    let a = arr.as_array();
    let n = a.len();
    let mut data = crate::tensor::alloc(n)?;
    if let Some(s) = a.as_slice() {
        py.detach(|| data.copy_from_slice(s));
    } else {
        data.iter_mut().zip(a.iter()).for_each(|(d, &s)| *d = s);
    }
    Ok(wrap(Var::leaf(Tensor::new(data, shape)?, requires_grad)))
}

/// A 0-d tensor.
#[pyfunction]
fn scalar(v: f32) -> PyVar {
    wrap(Var::scalar(v))
}

/// Apply a registry op by name: `apply("sum", [x], {"axes": [1], "keepdims": True})`.
#[pyfunction]
#[pyo3(signature = (name, inputs, attrs=None))]
fn apply(py: Python<'_>, name: &str, inputs: Vec<PyRef<PyVar>>, attrs: Option<&Bound<'_, PyDict>>) -> PyResult<PyVar> {
    let op = Op::parse(name, &to_attrs(attrs)?)?;
    let ins: Vec<Var> = inputs.iter().map(|v| v.0.clone()).collect();
    drop(inputs);
    run_op(py, op, ins)
}

/// Inputs of at most this many elements in all run with the GIL held: releasing and retaking it
/// costs more than such a kernel (a 0-d op takes well under a microsecond).
const KEEP_GIL_MAX: usize = 1024;

/// Run an op, releasing the GIL unless its inputs are tiny (a matmul counts its products).
fn run_op(py: Python<'_>, op: Op, ins: Vec<Var>) -> PyResult<PyVar> {
    let small = match &op {
        Op::MatMul { .. } => false,
        _ => ins.iter().map(|v| v.numel()).sum::<usize>() <= KEEP_GIL_MAX,
    };
    let out = if small { Var::apply_owned(op, ins) } else { py.detach(move || Var::apply_owned(op, ins)) }?;
    Ok(wrap(out))
}

/// A registry op parsed once (name and attributes), for the hot paths of the Python layer:
/// `call1` / `call2` / `call_scalar` apply it without parsing anything.
#[pyclass(name = "OpCode", module = "batchgrad._core", frozen)]
pub struct PyOpCode(Op);

#[pymethods]
impl PyOpCode {
    #[getter]
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn __repr__(&self) -> String {
        format!("OpCode({:?})", self.0.name())
    }
}

/// Parse an op once: `op_code("mul")`, `op_code("sum", {"axes": [0]})`.
#[pyfunction]
#[pyo3(signature = (name, attrs=None))]
fn op_code(name: &str, attrs: Option<&Bound<'_, PyDict>>) -> PyResult<PyOpCode> {
    Ok(PyOpCode(Op::parse(name, &to_attrs(attrs)?)?))
}

/// Apply a parsed unary op.
#[pyfunction]
fn call1(py: Python<'_>, op: PyRef<'_, PyOpCode>, a: PyRef<'_, PyVar>) -> PyResult<PyVar> {
    run_op(py, op.0.clone(), vec![a.0.clone()])
}

/// Apply a parsed binary op.
#[pyfunction]
fn call2(py: Python<'_>, op: PyRef<'_, PyOpCode>, a: PyRef<'_, PyVar>, b: PyRef<'_, PyVar>) -> PyResult<PyVar> {
    run_op(py, op.0.clone(), vec![a.0.clone(), b.0.clone()])
}

/// Apply a parsed binary op to a tensor and a Python number (a 0-d float32 constant), the
/// number second, or first when `reflected` (`2 - x`).
#[pyfunction]
fn call_scalar(py: Python<'_>, op: PyRef<'_, PyOpCode>, a: PyRef<'_, PyVar>, s: f64, reflected: bool) -> PyResult<PyVar> {
    let c = Var::constant(s as f32);
    let ins = if reflected { vec![c, a.0.clone()] } else { vec![a.0.clone(), c] };
    run_op(py, op.0.clone(), ins)
}

/// torch.autograd.grad: gradients of outputs (weighted by seeds) w.r.t. inputs.
#[pyfunction]
#[pyo3(signature = (outputs, seeds, inputs, retain_graph=false, create_graph=false))]
fn grad(py: Python<'_>, outputs: Vec<PyRef<PyVar>>, seeds: Vec<Option<PyRef<PyVar>>>, inputs: Vec<PyRef<PyVar>>, retain_graph: bool, create_graph: bool) -> PyResult<Vec<Option<PyVar>>> {
    let outs: Vec<Var> = outputs.iter().map(|v| v.0.clone()).collect();
    let seeds: Vec<Option<Tensor>> = seeds.iter().map(|s| s.as_ref().map(|s| s.0.value())).collect();
    let ins: Vec<Var> = inputs.iter().map(|v| v.0.clone()).collect();
    let r = py.detach(move || tape::grad(&outs, seeds, &ins, retain_graph, create_graph))?;
    Ok(r.into_iter().map(|g| g.map(wrap)).collect())
}

#[pyfunction]
fn set_grad_enabled(on: bool) -> bool {
    tape::set_grad_enabled(on)
}

#[pyfunction]
fn is_grad_enabled() -> bool {
    tape::is_grad_enabled()
}

/// The op registry: one dict per op (name, arity, saves, differentiable, doc).
#[pyfunction]
fn op_table(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let l = PyList::empty(py);
    for s in TABLE {
        let d = PyDict::new(py);
        d.set_item("name", s.name)?;
        d.set_item("arity", s.arity)?;
        d.set_item("saves", s.saves)?;
        d.set_item("differentiable", s.differentiable)?;
        d.set_item("doc", s.doc)?;
        l.append(d)?;
    }
    Ok(l)
}

#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    if n == 0 || n > crate::kernels::MAX_THREADS {
        return Err(PyValueError::new_err(format!("set_num_threads: n must be in 1..={}, got {n}", crate::kernels::MAX_THREADS)));
    }
    crate::kernels::set_num_threads(n);
    Ok(())
}

#[pyfunction]
fn get_num_threads() -> usize {
    crate::kernels::num_threads()
}

#[pyfunction]
fn simd_level() -> &'static str {
    crate::kernels::simd_level()
}

/// The machine's float32 FMA peak in GFLOP/s on `threads` threads at once (no memory traffic;
/// best of `repeats` runs of `rounds` rounds of 12 FMA chains per thread): the benchmarks'
/// reference for GEMM and training-step GFLOP/s.
#[pyfunction]
#[pyo3(signature = (threads=1, rounds=2_000_000, repeats=5))]
fn fma_peak(py: Python<'_>, threads: usize, rounds: usize, repeats: usize) -> PyResult<f64> {
    if threads == 0 || threads > crate::kernels::MAX_THREADS {
        return Err(PyValueError::new_err(format!("fma_peak: threads must be in 1..={}, got {threads}", crate::kernels::MAX_THREADS)));
    }
    Ok(py.detach(|| crate::kernels::fma_peak(threads, rounds, repeats)))
}

/// Outputs of at least this many bytes are written with non-temporal stores (3/4 of the LLC).
#[pyfunction]
fn stream_min_bytes() -> usize {
    crate::kernels::simd::stream_min_bytes()
}

/// A flat program of registry ops (the tape exported), replayable on the CPU executor.
#[pyclass(name = "Program", module = "batchgrad._core", frozen)]
pub struct PyProgram(Program);

#[pymethods]
impl PyProgram {
    /// Trace back from `outputs` to the placeholder `inputs` through the recorded graph.
    #[staticmethod]
    fn from_graph(inputs: Vec<PyRef<PyVar>>, outputs: Vec<PyRef<PyVar>>) -> PyResult<PyProgram> {
        let ins: Vec<Var> = inputs.iter().map(|v| v.0.clone()).collect();
        let outs: Vec<Var> = outputs.iter().map(|v| v.0.clone()).collect();
        Ok(PyProgram(Program::from_graph(&ins, &outs)?))
    }
    /// Build from node dicts as returned by `nodes()` (graph transforms build new programs).
    /// Captured slots take a `var`; node slots take `op`, `attrs`, `args`; shapes are re-inferred.
    #[staticmethod]
    fn from_nodes(py: Python<'_>, nodes: Vec<Bound<'_, PyDict>>, outputs: Vec<usize>) -> PyResult<PyProgram> {
        let mut slots = Vec::with_capacity(nodes.len());
        for d in &nodes {
            let kind: String = d.get_item("kind")?.ok_or_else(|| PyValueError::new_err("node without 'kind'"))?.extract()?;
            let shape: Vec<usize> = d.get_item("shape")?.map(|s| s.extract()).transpose()?.unwrap_or_default();
            let k = match kind.as_str() {
                "input" => SlotKind::Input(d.get_item("index")?.ok_or_else(|| PyValueError::new_err("input without 'index'"))?.extract()?),
                "captured" => {
                    let v: PyRef<PyVar> = d.get_item("var")?.ok_or_else(|| PyValueError::new_err("captured without 'var'"))?.extract()?;
                    SlotKind::Captured(v.0.clone())
                }
                "node" => {
                    let name: String = d.get_item("op")?.ok_or_else(|| PyValueError::new_err("node without 'op'"))?.extract()?;
                    let attrs = d.get_item("attrs")?;
                    let attrs = attrs.as_ref().map(|a| a.cast::<PyDict>()).transpose().map_err(|e| PyTypeError::new_err(e.to_string()))?;
                    let op = Op::parse(&name, &to_attrs(attrs)?)?;
                    let args: Vec<usize> = d.get_item("args")?.ok_or_else(|| PyValueError::new_err("node without 'args'"))?.extract()?;
                    SlotKind::Node { op, args }
                }
                other => return Err(PyValueError::new_err(format!("unknown node kind '{other}'"))),
            };
            slots.push(Slot { kind: k, shape });
        }
        let _ = py;
        Ok(PyProgram(Program::from_slots(slots, outputs)?))
    }
    /// One dict per slot: kind ("input" | "captured" | "node"), shape, and op/attrs/args for nodes.
    fn nodes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let l = PyList::empty(py);
        for (i, s) in self.0.slots.iter().enumerate() {
            let d = PyDict::new(py);
            d.set_item("id", i)?;
            d.set_item("shape", s.shape.clone())?;
            match &s.kind {
                SlotKind::Input(k) => {
                    d.set_item("kind", "input")?;
                    d.set_item("index", *k)?;
                }
                SlotKind::Captured(v) => {
                    d.set_item("kind", "captured")?;
                    d.set_item("var", Py::new(py, wrap(v.clone()))?)?;
                }
                SlotKind::Node { op, args } => {
                    d.set_item("kind", "node")?;
                    d.set_item("op", op.name())?;
                    d.set_item("attrs", attrs_to_py(py, op)?)?;
                    d.set_item("args", args.clone())?;
                }
            }
            l.append(d)?;
        }
        Ok(l)
    }
    #[getter]
    fn outputs(&self) -> Vec<usize> {
        self.0.outputs.clone()
    }
    /// Replay with the CPU executor (one call, no Python per op).
    fn run(&self, py: Python<'_>, inputs: Vec<PyRef<PyVar>>) -> PyResult<Vec<PyVar>> {
        let ins: Vec<Tensor> = inputs.iter().map(|v| v.0.value()).collect();
        let outs = py.detach(|| self.0.run(&ins))?;
        Ok(outs.into_iter().map(|t| wrap(Var::leaf(t, false))).collect())
    }
}

/// One optimizer call from Python: (rule name, parameter indices, state buffer lists by
/// position or None, scalars in the eager binding's order).
type PyCall<'py> = (String, Vec<usize>, Vec<Option<Vec<PyRef<'py, PyVar>>>>, Vec<f64>);

fn calls_from_py(calls: Vec<PyCall<'_>>) -> PyResult<Vec<Call>> {
    calls
        .into_iter()
        .map(|(kind, params, states, scalars)| {
            let rule = Rule::parse(&kind, &scalars)?;
            if states.len() > rule.num_states() {
                return Err(PyValueError::new_err(format!("optimizer update {kind:?}: {} state lists, at most {}", states.len(), rule.num_states())));
            }
            let states = states.into_iter().map(|s| s.map(|s| s.iter().map(|v| v.0.clone()).collect())).collect();
            Ok(Call { rule, params, states })
        })
        .collect()
}

/// A compiled training step: forward + backward program and the optimizer update, replayed in
/// one call (see `tape::step`).
#[pyclass(name = "TrainStep", module = "batchgrad._core", frozen)]
pub struct PyTrainStep(TrainStep);

#[pymethods]
impl PyTrainStep {
    /// `program` outputs the loss then one gradient per entry of `params`.
    #[new]
    fn new(program: PyRef<PyProgram>, params: Vec<PyRef<PyVar>>) -> PyResult<PyTrainStep> {
        Ok(PyTrainStep(TrainStep::new(program.0.clone(), params.iter().map(|p| p.0.clone()).collect())?))
    }
    /// Replay forward, backward and every optimizer call; returns the loss. Each call is
    /// `(rule, param_indices, state_lists, scalars)` with the scalars of `_core.<rule>_step`.
    fn run(&self, py: Python<'_>, inputs: Vec<PyRef<PyVar>>, calls: Vec<PyCall<'_>>) -> PyResult<f32> {
        let ins: Vec<Tensor> = inputs.iter().map(|v| v.0.value()).collect();
        let calls = calls_from_py(calls)?;
        Ok(py.detach(|| self.0.run(&ins, &calls))?)
    }
    /// Forward and backward only: every parameter's gradient, in parameter order, copied into
    /// `flat` (a writeable C-contiguous float32 1-D array with as many elements as the
    /// parameters in all); returns the loss. `update_from` then applies the update: the two
    /// halves of `run`, for an all-reduce of `flat` in between (data-parallel training). The
    /// gradients are multiplied by `scale` as they are copied. With `ready`, a callable, each
    /// gradient is copied as soon as the backward has computed it and `ready(i)` is called (with
    /// the GIL) right after parameter i's gradient is in `flat`: an all-reduce of the finished
    /// part can start while the backward goes on. An exception in `ready` stops the replay and
    /// is raised here.
    #[pyo3(signature = (inputs, flat, scale = 1.0, ready = None))]
    fn grads_into(&self, py: Python<'_>, inputs: Vec<PyRef<PyVar>>, mut flat: PyReadwriteArray1<'_, f32>, scale: f32, ready: Option<Py<PyAny>>) -> PyResult<f32> {
        let ins: Vec<Tensor> = inputs.iter().map(|v| v.0.value()).collect();
        let strides = flat.strides().to_vec();
        let flat = flat.as_slice_mut().map_err(|_| PyValueError::new_err(format!("TrainStep.grads_into: flat must be a C-contiguous float32 array, got strides {strides:?}")))?;
        let Some(ready) = ready else {
            return Ok(py.detach(|| self.0.grads_into(&ins, flat, scale, None))?);
        };
        let raised: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
        let mut cb = |i: usize| -> crate::error::Result<()> {
            Python::attach(|py| match ready.call1(py, (i,)) {
                Ok(_) => Ok(()),
                Err(e) => {
                    let msg = e.to_string();
                    *raised.lock().unwrap() = Some(e);
                    crate::bail!(Value, "TrainStep.grads_into: ready({i}) raised {msg}")
                }
            })
        };
        let out = py.detach(|| self.0.grads_into(&ins, flat, scale, Some(&mut cb)));
        if let Some(e) = raised.lock().unwrap().take() {
            return Err(e);
        }
        Ok(out?)
    }
    /// Apply every optimizer call (as `run` does, never fused) with the gradients read from
    /// `flat` (float32, contiguous, the layout `grads_into` writes), or from the elementwise sum
    /// of a list of such arrays, added in list order block by block as the update reads them
    /// (the ranks of one machine, each having written its gradients into shared memory).
    fn update_from(&self, py: Python<'_>, flat: &Bound<'_, PyAny>, calls: Vec<PyCall<'_>>) -> PyResult<()> {
        let calls = calls_from_py(calls)?;
        let arrays: Vec<PyReadonlyArray1<'_, f32>> = match flat.extract::<PyReadonlyArray1<'_, f32>>() {
            Ok(a) => vec![a],
            Err(_) => flat.extract().map_err(|_| {
                PyTypeError::new_err("TrainStep.update_from: flat must be a 1-D float32 array or a list of them")
            })?,
        };
        let mut flats: Vec<&[f32]> = Vec::with_capacity(arrays.len());
        for a in &arrays {
            flats.push(a.as_slice().map_err(|_| PyValueError::new_err(format!("TrainStep.update_from: flat must be a C-contiguous float32 array, got strides {:?}", a.strides())))?);
        }
        Ok(py.detach(|| self.0.update_from_sum(&flats, &calls))?)
    }
    /// Which parameters these calls update through the fused matmul epilogue (no gradient buffer).
    fn fused(&self, calls: Vec<PyCall<'_>>) -> PyResult<Vec<bool>> {
        Ok(self.0.fused(&calls_from_py(calls)?))
    }
    #[getter]
    fn program(&self) -> PyProgram {
        PyProgram(self.0.program().clone())
    }
}

/// Tensor buffers allocated fresh (not reused from the pool or a compiled step's arena) so far.
#[pyfunction]
fn fresh_allocations() -> usize {
    crate::tensor::fresh_allocations()
}

/// Eager optimizer updates run on the spinning team so far (see `tape::step::update_src`).
#[pyfunction]
fn team_updates() -> usize {
    crate::tape::step::team_updates()
}

/// Turn the deferral of small-batch weight gradients in `backward` on or off (process-wide);
/// returns the previous setting. For tests and same-process benchmarks (see `tape::Grad`).
#[pyfunction]
fn set_deferred_grads(on: bool) -> bool {
    crate::tape::set_deferred_grads(on)
}

/// Start (clearing the table) or stop per-op timing; see `bg.profile`.
#[pyfunction]
fn profile_enable(on: bool) {
    crate::ops::profile::set_enabled(on)
}

/// Per-op timings so far: (op, input shapes, calls, total seconds), most expensive first.
#[pyfunction]
fn profile_report() -> Vec<crate::ops::profile::Entry> {
    crate::ops::profile::report()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyVar>()?;
    m.add_class::<PyProgram>()?;
    m.add_class::<PyTrainStep>()?;
    m.add_function(wrap_pyfunction!(fresh_allocations, m)?)?;
    m.add_function(wrap_pyfunction!(team_updates, m)?)?;
    m.add_function(wrap_pyfunction!(set_deferred_grads, m)?)?;
    m.add_function(wrap_pyfunction!(profile_enable, m)?)?;
    m.add_function(wrap_pyfunction!(profile_report, m)?)?;
    m.add_function(wrap_pyfunction!(from_numpy, m)?)?;
    m.add_function(wrap_pyfunction!(scalar, m)?)?;
    m.add_function(wrap_pyfunction!(apply, m)?)?;
    m.add_function(wrap_pyfunction!(op_code, m)?)?;
    m.add_function(wrap_pyfunction!(call1, m)?)?;
    m.add_function(wrap_pyfunction!(call2, m)?)?;
    m.add_function(wrap_pyfunction!(call_scalar, m)?)?;
    m.add_class::<PyOpCode>()?;
    m.add_function(wrap_pyfunction!(grad, m)?)?;
    m.add_function(wrap_pyfunction!(set_grad_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(is_grad_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(op_table, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(fma_peak, m)?)?;
    m.add("MAX_THREADS", crate::kernels::MAX_THREADS)?;
    m.add_function(wrap_pyfunction!(stream_min_bytes, m)?)?;
    optim::register(m)?;
    Ok(())
}
