//! Integration tests of the tape and kernels without Python: a small MLP's gradients against a
//! float64 reference with a hand-written backward, fan-out, freeing, and the flat program.
use batchgrad::ops::Op;
use batchgrad::tape::{self, build, program::Program};
use batchgrad::{Tensor, Var};

fn leaf(data: Vec<f32>, shape: &[usize], rg: bool) -> Var {
    Var::leaf(Tensor::new(data, shape.to_vec()).unwrap(), rg)
}

fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// loss = mean((tanh(x W1 + b1) W2 - y)^2); returns loss and grads computed by hand in f64.
fn reference(x: &[f32], w1: &[f32], b1: &[f32], w2: &[f32], y: &[f32], n: usize, d: usize, h: usize) -> (f64, Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut a = vec![0f64; n * h];
    for i in 0..n {
        for j in 0..h {
            let mut s = b1[j] as f64;
            for k in 0..d {
                s += x[i * d + k] as f64 * w1[k * h + j] as f64;
            }
            a[i * h + j] = s.tanh();
        }
    }
    let mut r = vec![0f64; n];
    let mut loss = 0.0;
    for i in 0..n {
        let mut o = 0.0;
        for j in 0..h {
            o += a[i * h + j] * w2[j] as f64;
        }
        r[i] = o - y[i] as f64;
        loss += r[i] * r[i] / n as f64;
    }
    let go: Vec<f64> = r.iter().map(|v| 2.0 * v / n as f64).collect();
    let mut gw2 = vec![0f64; h];
    let mut gz = vec![0f64; n * h];
    for i in 0..n {
        for j in 0..h {
            gw2[j] += a[i * h + j] * go[i];
            gz[i * h + j] = go[i] * w2[j] as f64 * (1.0 - a[i * h + j] * a[i * h + j]);
        }
    }
    let mut gw1 = vec![0f64; d * h];
    let mut gb1 = vec![0f64; h];
    for i in 0..n {
        for j in 0..h {
            gb1[j] += gz[i * h + j];
            for k in 0..d {
                gw1[k * h + j] += x[i * d + k] as f64 * gz[i * h + j];
            }
        }
    }
    (loss, gw1, gb1, gw2)
}

fn close(a: &[f32], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((*x as f64 - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn mlp_gradients_match_hand_written_backward() {
    let (n, d, h) = (7, 5, 4);
    let (xd, w1d, b1d, w2d, yd) = (lcg(1, n * d), lcg(2, d * h), lcg(3, h), lcg(4, h), lcg(5, n));
    let x = leaf(xd.clone(), &[n, d], false);
    let w1 = leaf(w1d.clone(), &[d, h], true);
    let b1 = leaf(b1d.clone(), &[h], true);
    let w2 = leaf(w2d.clone(), &[h, 1], true);
    let y = leaf(yd.clone(), &[n, 1], false);
    let z = build::add(&build::matmul(&x, &w1, false, false).unwrap(), &b1).unwrap();
    let a = Var::apply(Op::Tanh, &[z]).unwrap();
    let r = build::sub(&build::matmul(&a, &w2, false, false).unwrap(), &y).unwrap();
    let loss = Var::apply(Op::Mean { axes: vec![], keepdims: false }, &[build::mul(&r, &r).unwrap()]).unwrap();
    tape::backward(&loss, None, false).unwrap();
    let (l, gw1, gb1, gw2) = reference(&xd, &w1d, &b1d, &w2d, &yd, n, d, h);
    close(loss.value().data(), &[l], 1e-5);
    close(w1.grad().unwrap().unwrap().data(), &gw1, 1e-5);
    close(b1.grad().unwrap().unwrap().data(), &gb1, 1e-5);
    close(w2.grad().unwrap().unwrap().data(), &gw2, 1e-5);
    // the graph was freed: a second backward is an error, not a crash
    assert!(tape::backward(&loss, None, false).is_err());
}

#[test]
fn fan_out_sums_and_grads_accumulate() {
    let x = leaf(vec![3.0], &[], true);
    // y = x*x + x  -> dy/dx = 2x + 1 = 7
    let y = build::add(&build::mul(&x, &x).unwrap(), &x).unwrap();
    tape::backward(&y, None, true).unwrap();
    assert_eq!(x.grad().unwrap().unwrap().data(), &[7.0]);
    tape::backward(&y, None, false).unwrap();
    assert_eq!(x.grad().unwrap().unwrap().data(), &[14.0]);
}

#[test]
fn no_grad_records_nothing() {
    let x = leaf(vec![1.0, 2.0], &[2], true);
    let y = tape::no_grad(|| Var::apply(Op::Exp, &[x.clone()]).unwrap());
    assert!(y.is_leaf() && !y.requires_grad());
}

#[test]
fn long_chain_has_no_recursion() {
    let x = leaf(vec![1.0], &[], true);
    let mut y = x.clone();
    for _ in 0..50_000 {
        y = build::scale(&y, 1.0).unwrap();
    }
    tape::backward(&y, None, false).unwrap();
    assert_eq!(x.grad().unwrap().unwrap().data(), &[1.0]);
    drop(y); // iterative drop of a 100k-node chain
}

#[test]
fn program_replays_the_recorded_graph() {
    let x = leaf(vec![1.0, -2.0, 3.0], &[3], true);
    let w = leaf(vec![0.5, 0.25, 2.0], &[3], false);
    let y = Var::apply(Op::Sum { axes: vec![], keepdims: false }, &[build::mul(&Var::apply(Op::Relu, &[x.clone()]).unwrap(), &w).unwrap()]).unwrap();
    let p = Program::from_graph(&[x.clone()], &[y.clone()]).unwrap();
    assert_eq!(p.num_inputs(), 1);
    let out = p.run(&[Tensor::new(vec![2.0, 2.0, 2.0], vec![3]).unwrap()]).unwrap();
    assert_eq!(out[0].data(), &[5.5]);
    // the backward pass is itself a graph of registry ops: grad with create_graph
    let g = tape::grad(&[y], vec![None], &[x.clone()], true, true).unwrap();
    let gp = Program::from_graph(&[x], &[g[0].clone().unwrap()]).unwrap();
    let gout = gp.run(&[Tensor::new(vec![1.0, -1.0, 1.0], vec![3]).unwrap()]).unwrap();
    assert_eq!(gout[0].data(), &[0.5, 0.0, 2.0]);
}

#[test]
fn errors_name_shapes_and_ops() {
    let a = leaf(vec![0.0; 6], &[2, 3], false);
    let b = leaf(vec![0.0; 4], &[4], false);
    let e = build::add(&a, &b).err().unwrap().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4]") && e.contains("add"), "{e}");
    let e = build::matmul(&a, &a, false, false).err().unwrap().to_string();
    assert!(e.contains("matmul"), "{e}");
    assert!(matches!(batchgrad::tensor::alloc(usize::MAX / 8), Err(batchgrad::Error::Memory(_))));
}
