//! Kernel micro-benchmarks (criterion). Throughput is reported so criterion prints rates:
//!   * GEMM: `Throughput::Elements(2*m*n*k)`  -> "Gelem/s" reads as GFLOP/s;
//!   * elementwise / reductions: `Throughput::Bytes(bytes read + bytes written)` -> GB/s
//!     (GiB/s as criterion prints it).
//!
//! Every kernel runs at 1 and 2 threads (`kernels::set_num_threads`); the bench id carries `t1`/`t2`.
//! Each output is wrapped in a `Tensor` and dropped inside the timed loop, as an op's result is,
//! so large buffers go back to the crate's storage pool and are reused by the next call;
//! `unary_relu_fresh_vec` drops the bare `Vec` instead and shows the cost of fresh memory.
//!
//!   cargo bench --bench kernels -- --quick            # a few minutes on 2 cores
//!   cargo bench --bench kernels -- 'gemm_square'      # one group (criterion's filter)
//!   BENCH_SECS=3 cargo bench --bench kernels          # longer measurement per benchmark
//!
//! Speed is compared as ratios between benchmarks of one run, never asserted.
mod common;

use std::hint::black_box;

use batchgrad::kernels::gemm::{matmul, Operand};
use batchgrad::kernels::map::{binary, unary, View};
use batchgrad::kernels::reduce::{reduce3, softmax_rows, Reduce};
use batchgrad::kernels::{install, run_blocks, set_num_threads, simd};
use batchgrad::shape::{broadcast_strides, strides};
use batchgrad::Tensor;
use common::config;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const THREADS: [usize; 2] = [1, 2];

/// Wrap a kernel's output as an op does (dropping the Tensor returns big buffers to the pool).
fn keep(v: Vec<f32>) -> Tensor {
    let n = v.len();
    Tensor::new(v, vec![n]).unwrap()
}

fn lcg(seed: u64, n: usize) -> Vec<f32> {
    common::lcg(seed, n, 1.0)
}

/// GEMM variant: which operand is read transposed.
#[derive(Clone, Copy)]
enum Var {
    NN,
    NT,
    TN,
}

impl Var {
    fn name(self) -> &'static str {
        match self {
            Var::NN => "NN",
            Var::NT => "NT",
            Var::TN => "TN",
        }
    }
}

/// Inputs for C (m x n) = op(A) (m x k) @ op(B) (k x n), with A/B stored as the variant needs:
/// NN: A m x k, B k x n;  NT: A m x k, B stored n x k (C = A B^T);  TN: A stored k x m (C = A^T B), B k x n.
struct GemmCase {
    a: Vec<f32>,
    b: Vec<f32>,
    v: Var,
    m: usize,
    k: usize,
    n: usize,
}

impl GemmCase {
    fn new(v: Var, m: usize, k: usize, n: usize) -> Self {
        GemmCase { a: lcg(1, m * k), b: lcg(2, k * n), v, m, k, n }
    }
    fn run(&self) -> Tensor {
        let (m, k, n) = (self.m, self.k, self.n);
        let (a, b) = match self.v {
            Var::NN => (
                Operand { data: &self.a, rows: m, cols: k, trans: false },
                Operand { data: &self.b, rows: k, cols: n, trans: false },
            ),
            Var::NT => (
                Operand { data: &self.a, rows: m, cols: k, trans: false },
                Operand { data: &self.b, rows: n, cols: k, trans: true },
            ),
            Var::TN => (
                Operand { data: &self.a, rows: k, cols: m, trans: true },
                Operand { data: &self.b, rows: k, cols: n, trans: false },
            ),
        };
        keep(matmul(&a, &b, &[0], &[0], m, k, n).unwrap())
    }
    fn flops(&self) -> u64 {
        2 * (self.m * self.k * self.n) as u64
    }
}

fn gemm_group(c: &mut Criterion, group: &str, shapes: &[(String, usize, usize, usize)]) {
    let mut g = c.benchmark_group(group);
    for (label, m, k, n) in shapes.iter().map(|(l, m, k, n)| (l, *m, *k, *n)) {
        for v in [Var::NN, Var::NT, Var::TN] {
            let case = GemmCase::new(v, m, k, n);
            g.throughput(Throughput::Elements(case.flops()));
            // big problems: fewer samples so the suite stays within minutes
            if case.flops() > 1 << 30 {
                g.sample_size(10);
            } else {
                g.sample_size(20);
            }
            for t in THREADS {
                set_num_threads(t);
                g.bench_with_input(BenchmarkId::new(format!("{}/{}", v.name(), label), format!("t{t}")), &case, |bch, case| {
                    set_num_threads(t);
                    bch.iter(|| black_box(case.run()))
                });
            }
        }
    }
    g.finish();
}

fn gemm_square(c: &mut Criterion) {
    let shapes: Vec<_> = [256usize, 512, 1024].iter().map(|&s| (format!("{s}"), s, s, s)).collect();
    gemm_group(c, "gemm_square", &shapes);
}

/// The MLP 784-256-256-10 layer shapes at batch B: (B x 784) @ (784 x 256), (B x 256) @ (256 x 256),
/// (B x 256) @ (256 x 10). NT and TN at the same (m, k, n) are the transposed reads the backward
/// pass issues (dX = G W^T, dW = X^T G).
fn gemm_mlp(c: &mut Criterion) {
    let mut shapes = Vec::new();
    for b in [32usize, 512, 4096] {
        for (k, n) in [(784usize, 256usize), (256, 256), (256, 10)] {
            shapes.push((format!("{b}x{k}x{n}"), b, k, n));
        }
    }
    gemm_group(c, "gemm_mlp", &shapes);
}

/// The small-batch shapes with their own kernel paths: batch-1 GEMV, A·Bᵀ with a few rows
/// (dX = G Wᵀ at batch 2-8: row-wise matrix-vector products), the k = 1 outer product (dW at batch 1).
fn gemm_thin(c: &mut Criterion) {
    let shapes: Vec<_> = [(1usize, 784usize, 256usize), (2, 256, 256), (8, 256, 256), (8, 784, 256), (784, 1, 256), (256, 1, 256), (256, 2048, 10)]
        .iter()
        .map(|&(m, k, n)| (format!("{m}x{k}x{n}"), m, k, n))
        .collect();
    gemm_group(c, "gemm_thin", &shapes);
}

/// Fused registry ops against the ops they replace, on a (B x 256) activation, through the
/// registry's forward (as the executor runs them); and the compiled step's fused SGD epilogue
/// (W += -lr Xᵀ G) against the gradient product plus a separate SGD update.
fn fused(c: &mut Criterion) {
    use batchgrad::ops::{forward, Op};
    let mut g = c.benchmark_group("fused");
    for rows in [32usize, 512, 4096] {
        let (x, bias, gr) = (lcg(1, rows * 256), lcg(2, 256), lcg(3, rows * 256));
        let t = |v: &[f32], s: Vec<usize>| Tensor::new(v.to_vec(), s).unwrap();
        let (xt, bt, gt) = (t(&x, vec![rows, 256]), t(&bias, vec![256]), t(&gr, vec![rows, 256]));
        let zero = t(&[0.0], vec![]);
        g.throughput(Throughput::Bytes((8 * rows * 256) as u64));
        for th in THREADS {
            set_num_threads(th);
            g.bench_function(BenchmarkId::new(format!("add_relu/{rows}x256"), format!("t{th}")), |b| {
                set_num_threads(th);
                b.iter(|| black_box(forward(&Op::AddRelu, &[&xt, &bt]).unwrap()))
            });
            g.bench_function(BenchmarkId::new(format!("add_then_relu/{rows}x256"), format!("t{th}")), |b| {
                set_num_threads(th);
                b.iter(|| black_box(forward(&Op::Relu, &[&forward(&Op::Add, &[&xt, &bt]).unwrap()]).unwrap()))
            });
            g.bench_function(BenchmarkId::new(format!("relu_grad/{rows}x256"), format!("t{th}")), |b| {
                set_num_threads(th);
                b.iter(|| black_box(forward(&Op::ReluGrad, &[&gt, &xt]).unwrap()))
            });
            g.bench_function(BenchmarkId::new(format!("gt_then_mul/{rows}x256"), format!("t{th}")), |b| {
                set_num_threads(th);
                b.iter(|| black_box(forward(&Op::Mul, &[&gt, &forward(&Op::Gt, &[&xt, &zero]).unwrap()]).unwrap()))
            });
        }
    }
    // fused SGD epilogue at batch 1 and 32: W (784 x 256) += -lr * Xᵀ G
    for b in [1usize, 32] {
        let (xv, gv) = (lcg(4, b * 784), lcg(5, b * 256));
        let mut w = lcg(6, 784 * 256);
        let a = Operand { data: &xv, rows: b, cols: 784, trans: true };
        let gg = Operand { data: &gv, rows: b, cols: 256, trans: false };
        g.throughput(Throughput::Bytes((2 * 4 * 784 * 256) as u64));
        for th in THREADS {
            set_num_threads(th);
            g.bench_function(BenchmarkId::new(format!("sgd_epilogue/{b}x784x256"), format!("t{th}")), |bch| {
                set_num_threads(th);
                bch.iter(|| {
                    let e = batchgrad::kernels::gemm::Epilogue { accumulate: true, alpha: 1.0, beta: -1e-3 };
                    batchgrad::kernels::gemm::matmul_into(&mut w, e, &a, &gg, &[0], &[0], 784, b, 256);
                    black_box(w[0])
                })
            });
            g.bench_function(BenchmarkId::new(format!("grad_then_sgd/{b}x784x256"), format!("t{th}")), |bch| {
                set_num_threads(th);
                bch.iter(|| {
                    let d = keep(matmul(&a, &gg, &[0], &[0], 784, b, 256).unwrap());
                    batchgrad::optim::sgd(&mut w, d.data(), None, 1e-3, 0.0, 0.0, false, 0.0, false, false);
                    black_box(w[0])
                })
            });
        }
    }
    g.finish();
}

const SIZES: [(usize, &str); 3] = [(10_000, "1e4"), (1_000_000, "1e6"), (10_000_000, "1e7")];

fn sample_size_for(n: usize) -> usize {
    if n >= 10_000_000 {
        10
    } else {
        30
    }
}

fn elementwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("elementwise");
    for (n, label) in SIZES {
        let x = lcg(3, n);
        let y = lcg(4, n);
        g.sample_size(sample_size_for(n));
        // unary: read n, write n
        g.throughput(Throughput::Bytes((8 * n) as u64));
        for t in THREADS {
            set_num_threads(t);
            // the registry's tanh / exp (vectorisable polynomials, run under SIMD dispatch by `unary`)
            g.bench_function(BenchmarkId::new(format!("unary_tanh/{label}"), format!("t{t}")), |b| {
                set_num_threads(t);
                b.iter(|| black_box(keep(unary(black_box(&x), simd::tanh).unwrap())))
            });
            g.bench_function(BenchmarkId::new(format!("unary_exp/{label}"), format!("t{t}")), |b| {
                set_num_threads(t);
                b.iter(|| black_box(keep(unary(black_box(&x), simd::exp).unwrap())))
            });
            if n <= 1_000_000 {
                // reference: the standard library's scalar tanhf
                g.bench_function(BenchmarkId::new(format!("unary_tanh_libm/{label}"), format!("t{t}")), |b| {
                    set_num_threads(t);
                    b.iter(|| black_box(keep(unary(black_box(&x), |v| v.tanh()).unwrap())))
                });
            }
            g.bench_function(BenchmarkId::new(format!("unary_relu/{label}"), format!("t{t}")), |b| {
                set_num_threads(t);
                b.iter(|| black_box(keep(unary(black_box(&x), |v| v.max(0.0)).unwrap())))
            });
            if n >= 1_000_000 {
                // the machine's bandwidth in this same harness: memcpy (non-temporal stores at this
                // size) into a buffer from the same pool, split over the same chunks at t threads
                g.bench_function(BenchmarkId::new(format!("copy_reference/{label}"), format!("t{t}")), |b| {
                    set_num_threads(t);
                    b.iter(|| {
                        let mut out = batchgrad::tensor::alloc_for_overwrite(n).unwrap();
                        batchgrad::kernels::maybe_par(n, |par| {
                            use rayon::prelude::*;
                            if par {
                                out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(o, s)| o.copy_from_slice(s));
                            } else {
                                out.copy_from_slice(&x);
                            }
                        });
                        black_box(keep(out))
                    })
                });
                g.bench_function(BenchmarkId::new(format!("unary_relu_fresh_vec/{label}"), format!("t{t}")), |b| {
                    set_num_threads(t);
                    b.iter(|| black_box(unary(black_box(&x), |v| v.max(0.0)).unwrap()))
                });
            }
        }
        // binary contiguous: read 2n, write n
        g.throughput(Throughput::Bytes((12 * n) as u64));
        let shape = [n];
        for t in THREADS {
            g.bench_function(BenchmarkId::new(format!("binary_add/{label}"), format!("t{t}")), |b| {
                set_num_threads(t);
                b.iter(|| {
                    let va = View { data: &x, offset: 0, strides: strides(&shape) };
                    let vb = View { data: &y, offset: 0, strides: strides(&shape) };
                    black_box(keep(binary(&shape, va, vb, |p, q| p + q).unwrap()))
                })
            });
        }
        // broadcast bias add: (n/256, 256) + (256,): read n + 256, write n
        let cols = 256usize;
        let rows = n / cols;
        let out_shape = [rows, cols];
        let bias = lcg(5, cols);
        let xs = &x[..rows * cols];
        g.throughput(Throughput::Bytes((8 * rows * cols + 4 * cols) as u64));
        for t in THREADS {
            g.bench_function(BenchmarkId::new(format!("bias_add/{label}"), format!("t{t}")), |b| {
                set_num_threads(t);
                b.iter(|| {
                    let va = View { data: xs, offset: 0, strides: strides(&out_shape) };
                    let vb = View { data: &bias, offset: 0, strides: broadcast_strides(&[cols], &out_shape) };
                    black_box(keep(binary(&out_shape, va, vb, |p, q| p + q).unwrap()))
                })
            });
        }
    }
    g.finish();
}

fn reductions(c: &mut Criterion) {
    let mut g = c.benchmark_group("reduce");
    for (n, label) in SIZES {
        let x = lcg(6, n);
        g.sample_size(sample_size_for(n));
        // full sum / max: read n
        g.throughput(Throughput::Bytes((4 * n) as u64));
        for t in THREADS {
            g.bench_function(BenchmarkId::new(format!("sum_all/{label}"), format!("t{t}")), |b| {
                set_num_threads(t);
                b.iter(|| black_box(reduce3(black_box(&x), 1, n, 1, Reduce::Sum).unwrap()))
            });
            g.bench_function(BenchmarkId::new(format!("max_all/{label}"), format!("t{t}")), |b| {
                set_num_threads(t);
                b.iter(|| black_box(reduce3(black_box(&x), 1, n, 1, Reduce::Max).unwrap()))
            });
        }
        // column sum of a (n/256, 256) matrix over axis 0 (the bias gradient): read n, write 256
        let cols = 256usize;
        let rows = n / cols;
        g.throughput(Throughput::Bytes((4 * rows * cols + 4 * cols) as u64));
        for t in THREADS {
            g.bench_function(BenchmarkId::new(format!("sum_axis0_256/{label}"), format!("t{t}")), |b| {
                set_num_threads(t);
                b.iter(|| black_box(reduce3(black_box(&x[..rows * cols]), 1, rows, cols, Reduce::Sum).unwrap()))
            });
        }
        // row softmax, rows of 256 and of 10 (the classifier head): read n, write n
        for width in [256usize, 10] {
            let rows = n / width;
            g.throughput(Throughput::Bytes((8 * rows * width) as u64));
            for t in THREADS {
                g.bench_function(BenchmarkId::new(format!("softmax_rows{width}/{label}"), format!("t{t}")), |b| {
                    set_num_threads(t);
                    b.iter(|| black_box(keep(softmax_rows(black_box(&x[..rows * width]), width, false).unwrap())))
                });
            }
        }
    }
    g.finish();
}

/// A fork-join of 2 blocks of ~20 us each (a hand-split 8 MFLOP product per thread) at 2
/// threads: serial, through the rayon pool (`install` + `join`), and on the spinning team
/// (`run_blocks`). The time above one block's is the fork-join's cost. `_gap5us` variants wait
/// 5 us (untimed) between calls, as a Python caller does between two products; back to back,
/// rayon's workers never get the chance to fall asleep.
fn fork_join(c: &mut Criterion) {
    use std::time::{Duration, Instant};
    let mut g = c.benchmark_group("fork_join");
    set_num_threads(2);
    let work = |seed: u64| {
        // ~20 us of dependent integer work, kept alive by black_box
        let mut x = seed;
        for i in 0..black_box(18_000u64) {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        x
    };
    let rayon_fj = || install(|| rayon::join(|| work(1), || work(2)));
    let team_fj = || {
        run_blocks(2, |i| {
            black_box(work(i as u64));
        })
    };
    let gapped = |f: &dyn Fn(), iters: u64| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(5) {
                std::hint::spin_loop();
            }
            let t = Instant::now();
            f();
            total += t.elapsed();
        }
        total
    };
    g.bench_function("one_block", |bch| bch.iter(|| work(1)));
    g.bench_function("rayon_install_join_t2", |bch| bch.iter(rayon_fj));
    g.bench_function("team_run_blocks_t2", |bch| bch.iter(team_fj));
    g.bench_function("rayon_install_join_t2_gap5us", |bch| bch.iter_custom(|n| gapped(&|| { black_box(rayon_fj()); }, n)));
    g.bench_function("team_run_blocks_t2_gap5us", |bch| bch.iter_custom(|n| gapped(&team_fj, n)));
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = gemm_square, gemm_mlp, gemm_thin, fused, elementwise, reductions, fork_join
}
criterion_main!(benches);
