// Fused optimizer updates (rust/optim.rs), in place, one launch per parameter: p = out0,
// gradient = in0, state buffers out1..out3. The same float32 arithmetic as the CPU kernels
// (torch.optim's semantics). prm = [n, flags, s0 .. s7] (lower/optim.py `words`), rewritten every
// step (learning rate, bias corrections, first-step flag).

fn n_() -> u32 { return pu(0u); }
fn flag(b: u32) -> bool { return (pu(1u) & (1u << b)) != 0u; }
fn s(k: u32) -> f32 { return pf(2u + k); }
// maximize negates, then coupled weight decay (skipped when wd == 0, like torch)
fn eff_grad(g: f32, p: f32, wd: f32, maximize: bool) -> f32 {
  var gg = g;
  if (maximize) { gg = -gg; }
  if (wd != 0.0) { gg = gg + wd * p; }
  return gg;
}
// torch.lerp with a scalar weight
fn lerp_(a: f32, b: f32, w: f32) -> f32 {
  if (abs(w) < 0.5) { return a + w * (b - a); }
  return b - (b - a) * (1.0 - w);
}

// SGD: flags 0 momentum buffer (out1), 1 first step (buf = g), 2 nesterov, 3 maximize;
// s = [-lr, momentum, 1 - dampening, weight_decay]
@compute @workgroup_size(256) fn op_sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(gid, w); if (i >= n_()) { return; }
  let p = out0[i];
  let g = eff_grad(in0[i], p, s(3u), flag(3u));
  if (!flag(0u)) { out0[i] = p + s(0u) * g; return; }
  var b = g;
  if (!flag(1u)) { b = out1[i] * s(1u) + s(2u) * g; }
  out1[i] = b;
  var d = b;
  if (flag(2u)) { d = g + s(1u) * b; }
  out0[i] = p + s(0u) * d;
}

// Adam / AdamW: m = out1, v = out2, max v (amsgrad) = out3; flags 0 amsgrad, 1 decoupled decay,
// 2 maximize; s = [1 - beta1, beta2, 1 - beta2, eps, coupled wd, 1 - lr wd, -lr / bc1, sqrt(bc2)]
@compute @workgroup_size(256) fn op_adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(gid, w); if (i >= n_()) { return; }
  var p = out0[i];
  var g = in0[i];
  if (flag(2u)) { g = -g; }
  if (flag(1u)) { p = p * s(5u); }
  if (s(4u) != 0.0) { g = g + s(4u) * p; }
  let m = lerp_(out1[i], g, s(0u));
  out1[i] = m;
  let v = out2[i] * s(1u) + s(2u) * g * g;
  out2[i] = v;
  var vv = v;
  if (flag(0u)) {
    let mv = out3[i];
    if (isnan_(mv) || isnan_(v)) { vv = nan_(); } else if (v > mv) { vv = v; } else { vv = mv; }
    out3[i] = vv;
  }
  let denom = sqrt(vv) / s(7u) + s(3u);
  out0[i] = p + s(6u) * m / denom;
}

// RMSprop: square_avg = out1, momentum buffer = out2, grad_avg (centered) = out3; flags 0
// momentum, 1 centered, 2 maximize; s = [-lr, alpha, 1 - alpha, eps, weight_decay, momentum]
@compute @workgroup_size(256) fn op_rmsprop(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(gid, w); if (i >= n_()) { return; }
  let p = out0[i];
  let g = eff_grad(in0[i], p, s(4u), flag(2u));
  let sq = out1[i] * s(1u) + s(2u) * g * g;
  out1[i] = sq;
  var avg: f32;
  if (flag(1u)) {
    let a = lerp_(out3[i], g, s(2u));
    out3[i] = a;
    avg = sqrt(sq - a * a) + s(3u);
  } else {
    avg = sqrt(sq) + s(3u);
  }
  if (flag(0u)) {
    let b = out2[i] * s(5u) + g / avg;
    out2[i] = b;
    out0[i] = p + s(0u) * b;
  } else {
    out0[i] = p + s(0u) * g / avg;
  }
}

// Adagrad: sum = out1; flags 0 maximize; s = [-lr / (1 + (step - 1) lr_decay), weight_decay, eps]
@compute @workgroup_size(256) fn op_adagrad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(gid, w); if (i >= n_()) { return; }
  let p = out0[i];
  let g = eff_grad(in0[i], p, s(1u), flag(0u));
  let sm = out1[i] + g * g;
  out1[i] = sm;
  out0[i] = p + s(0u) * g / (sqrt(sm) + s(2u));
}
