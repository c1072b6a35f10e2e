//! One SGD step of an MLP 784-256-256-10 (relu, softmax cross-entropy, mean) through the Rust
//! tape, no Python: forward (records the tape), backward (VJP sweep), and the fused SGD update.
//! Throughput is `Elements(batch)`, so criterion prints examples/s.
//!
//!   cargo bench --bench train_step -- --quick
mod common;

use std::hint::black_box;

use batchgrad::ops::Op;
use batchgrad::optim::Rule;
use batchgrad::tape::step::update_vars;
use batchgrad::tape::{self, build, Grad};
use batchgrad::{Tensor, Var};
use common::{config, lcg};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

struct Mlp {
    params: Vec<Var>, // w1, b1, w2, b2, w3, b3
}

impl Mlp {
    fn new() -> Mlp {
        let dims = [784usize, 256, 256, 10];
        let mut params = Vec::new();
        for (i, w) in dims.windows(2).enumerate() {
            let (fan_in, fan_out) = (w[0], w[1]);
            let s = 2.0 * (1.0 / fan_in as f32).sqrt();
            params.push(Var::leaf(Tensor::new(lcg(10 + i as u64, fan_in * fan_out, s), vec![fan_in, fan_out]).unwrap(), true));
            params.push(Var::leaf(Tensor::new(vec![0.0; fan_out], vec![fan_out]).unwrap(), true));
        }
        Mlp { params }
    }

    /// forward + backward + SGD(lr) update; returns the loss.
    fn step(&self, x: &Var, labels: &Var, lr: f32) -> f32 {
        let p = &self.params;
        let mut h = x.clone();
        for layer in 0..3 {
            let z = build::add(&build::matmul(&h, &p[2 * layer], false, false).unwrap(), &p[2 * layer + 1]).unwrap();
            h = if layer < 2 { Var::apply(Op::Relu, &[z]).unwrap() } else { z };
        }
        let per_ex = Var::apply(Op::SoftmaxXent, &[h, labels.clone()]).unwrap();
        let loss = Var::apply(Op::Mean { axes: vec![], keepdims: false }, &[per_ex]).unwrap();
        tape::backward(&loss, None, false).unwrap();
        // the update as `optimizer.step()` runs it (the shared Rule; inline when small or 1 thread)
        // (as stored: at batch 1 the weight gradients stay deferred, see `tape::Grad`)
        let grads: Vec<Grad> = p.iter().map(|v| v.grad_state().unwrap()).collect();
        let rule = Rule::Sgd { lr, momentum: 0.0, dampening: 0.0, nesterov: false, wd: 0.0, first: false, maximize: false };
        update_vars(&rule, p, &[None], &grads.iter().collect::<Vec<_>>()).unwrap();
        p.iter().for_each(|v| v.set_grad(None));
        loss.value().data()[0]
    }
}

fn train_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step_mlp784");
    for batch in [1usize, 32, 512] {
        let x = Var::leaf(Tensor::new(lcg(1, batch * 784, 2.0), vec![batch, 784]).unwrap(), false);
        let labels = Var::leaf(Tensor::new((0..batch).map(|i| (i % 10) as f32).collect(), vec![batch]).unwrap(), false);
        g.throughput(Throughput::Elements(batch as u64));
        g.sample_size(if batch >= 512 { 20 } else { 50 });
        for t in [1usize, 2] {
            let mlp = Mlp::new();
            g.bench_function(BenchmarkId::new(format!("b{batch}"), format!("t{t}")), |b| {
                batchgrad::kernels::set_num_threads(t);
                b.iter(|| black_box(mlp.step(&x, &labels, 1e-3)))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = train_step
}
criterion_main!(benches);
