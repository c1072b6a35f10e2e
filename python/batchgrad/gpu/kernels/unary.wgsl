// Unary elementwise ops (rust/ops/unary.rs): one entry point per registry op, same semantics as
// the CPU kernels (NaN propagates; tanh and sigmoid stable at any |x|). prm: elementwise_meta,
// scalars s0.. for pow_scalar (p) and clip (lo, hi).

fn relu_(x: f32) -> f32 { if (x > 0.0 || isnan_(x)) { return x; } return 0.0; }
fn sign_(x: f32) -> f32 {
  if (x > 0.0) { return 1.0; }
  if (x < 0.0) { return -1.0; }
  if (isnan_(x)) { return x; }
  return 0.0;
}
// tanh through e = exp(-2|x|) <= 1: never overflows; tiny |x| returns x (relative accuracy)
fn tanh_(x: f32) -> f32 {
  if (isnan_(x)) { return x; }
  let a = abs(x);
  if (a < 4e-4) { return x; }
  if (a < 0.55) {
    // (1 - e) / (1 + e) loses relative accuracy here: sinh by its series (to a^9, error < 1e-9
    // relative below 0.55), cosh = sqrt(1 + sinh^2)
    let a2 = a * a;
    let s = a * (1.0 + a2 * (1.0 / 6.0 + a2 * (1.0 / 120.0 + a2 * (1.0 / 5040.0 + a2 / 362880.0))));
    let c = sqrt(1.0 + s * s);
    return sign(x) * s / c;
  }
  let e = exp(-2.0 * a);
  return sign(x) * (1.0 - e) / (1.0 + e);
}
fn sigmoid_(x: f32) -> f32 {
  if (isnan_(x)) { return x; }
  let e = exp(-abs(x));
  let s = 1.0 / (1.0 + e);
  if (x >= 0.0) { return s; }
  return e * s;
}
fn pow_(x: f32, p: f32) -> f32 {
  if (p == 2.0) { return x * x; }
  if (p == 0.5) { return sqrt(x); }
  if (p == 0.0) { return 1.0; }
  if (p == 1.0) { return x; }
  if (isnan_(x) || isnan_(p)) { return nan_(); }
  let ip = round(p);
  if (ip == p) {
    // integer exponent: |x|^p with the sign of x for odd p (WGSL pow is undefined for x < 0)
    if (x == 0.0) {
      if (p > 0.0) { if (abs(p % 2.0) == 1.0) { return x; } return 0.0; }
      if (abs(p % 2.0) == 1.0 && bitcast<u32>(x) != 0u) { return -inf_(); }
      return inf_();
    }
    let m = exp2(p * log2(abs(x)));
    if (x < 0.0 && abs(p % 2.0) == 1.0) { return -m; }
    return m;
  }
  if (x < 0.0) { return nan_(); }
  if (x == 0.0) { if (p > 0.0) { return 0.0; } return inf_(); }
  return exp2(p * log2(x));
}
fn clip_(x: f32, lo: f32, hi: f32) -> f32 {
  if (isnan_(x)) { return x; }
  return min(max(x, lo), hi);
}

// one body per op; `ew_off(i, 0u)` is the input's offset of output element i
@compute @workgroup_size(256) fn op_neg(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = -in0[ew_off(i, 0u)];
}
@compute @workgroup_size(256) fn op_exp(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; }
  let x = in0[ew_off(i, 0u)];
  if (isnan_(x)) { out0[i] = x; } else if (x > 88.72284) { out0[i] = inf_(); } else if (x < -103.97208) { out0[i] = 0.0; } else { out0[i] = exp(x); }
}
@compute @workgroup_size(256) fn op_log(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; }
  let x = in0[ew_off(i, 0u)];
  if (isnan_(x) || x < 0.0) { out0[i] = nan_(); } else if (x == 0.0) { out0[i] = -inf_(); } else if (x == inf_()) { out0[i] = x; } else { out0[i] = log(x); }
}
@compute @workgroup_size(256) fn op_sqrt(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; }
  let x = in0[ew_off(i, 0u)];
  if (isnan_(x) || x < 0.0) { out0[i] = nan_(); } else if (x == 0.0) { out0[i] = x; } else { out0[i] = sqrt(x); }
}
@compute @workgroup_size(256) fn op_tanh(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = tanh_(in0[ew_off(i, 0u)]);
}
@compute @workgroup_size(256) fn op_sigmoid(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = sigmoid_(in0[ew_off(i, 0u)]);
}
@compute @workgroup_size(256) fn op_relu(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = relu_(in0[ew_off(i, 0u)]);
}
@compute @workgroup_size(256) fn op_abs(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = bitcast<f32>(bitcast<u32>(in0[ew_off(i, 0u)]) & 0x7fffffffu);
}
@compute @workgroup_size(256) fn op_sign(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = sign_(in0[ew_off(i, 0u)]);
}
@compute @workgroup_size(256) fn op_pow_scalar(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = pow_(in0[ew_off(i, 0u)], ew_s(0u));
}
@compute @workgroup_size(256) fn op_clip(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = clip_(in0[ew_off(i, 0u)], ew_s(0u), ew_s(1u));
}
