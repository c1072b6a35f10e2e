// Binary (and ternary `where`) elementwise ops with numpy broadcasting (rust/ops/binary.rs).
// prm: elementwise_meta over the output shape; in0 = a, in1 = b (in2 for where).

fn relu_(x: f32) -> f32 { if (x > 0.0 || isnan_(x)) { return x; } return 0.0; }
fn b01(c: bool) -> f32 { return select(0.0, 1.0, c); }
// numpy.maximum / minimum: NaN wins
fn fmax_(a: f32, b: f32) -> f32 { if (isnan_(a) || isnan_(b)) { return nan_(); } return select(b, a, a >= b); }
fn fmin_(a: f32, b: f32) -> f32 { if (isnan_(a) || isnan_(b)) { return nan_(); } return select(b, a, a <= b); }

fn a_(i: u32) -> f32 { return in0[ew_off(i, 0u)]; }
fn b_(i: u32) -> f32 { return in1[ew_off(i, 1u)]; }

@compute @workgroup_size(256) fn op_add(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = a_(i) + b_(i);
}
@compute @workgroup_size(256) fn op_sub(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = a_(i) - b_(i);
}
@compute @workgroup_size(256) fn op_mul(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = a_(i) * b_(i);
}
@compute @workgroup_size(256) fn op_div(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = a_(i) / b_(i);
}
@compute @workgroup_size(256) fn op_maximum(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = fmax_(a_(i), b_(i));
}
@compute @workgroup_size(256) fn op_minimum(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = fmin_(a_(i), b_(i));
}
// comparisons: IEEE (any NaN compares false, except !=), written on the bits' NaN test so a
// fast-math compiler cannot fold them
@compute @workgroup_size(256) fn op_lt(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } let a = a_(i); let b = b_(i); out0[i] = b01(!isnan_(a) && !isnan_(b) && a < b);
}
@compute @workgroup_size(256) fn op_le(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } let a = a_(i); let b = b_(i); out0[i] = b01(!isnan_(a) && !isnan_(b) && a <= b);
}
@compute @workgroup_size(256) fn op_gt(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } let a = a_(i); let b = b_(i); out0[i] = b01(!isnan_(a) && !isnan_(b) && a > b);
}
@compute @workgroup_size(256) fn op_ge(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } let a = a_(i); let b = b_(i); out0[i] = b01(!isnan_(a) && !isnan_(b) && a >= b);
}
@compute @workgroup_size(256) fn op_eq(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } let a = a_(i); let b = b_(i); out0[i] = b01(!isnan_(a) && !isnan_(b) && a == b);
}
@compute @workgroup_size(256) fn op_ne(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } let a = a_(i); let b = b_(i); out0[i] = b01(isnan_(a) || isnan_(b) || a != b);
}
// relu_grad(g, y) = g [y > 0]
@compute @workgroup_size(256) fn op_relu_grad(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = select(0.0, a_(i), b_(i) > 0.0);
}
// add_relu(a, b) = relu(a + b)
@compute @workgroup_size(256) fn op_add_relu(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; } out0[i] = relu_(a_(i) + b_(i));
}
// where(cond, a, b) = cond != 0 ? a : b   (in0 = cond, in1 = a, in2 = b)
@compute @workgroup_size(256) fn op_where(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= ew_n()) { return; }
  out0[i] = select(in2[ew_off(i, 2u)], in1[ew_off(i, 1u)], in0[ew_off(i, 0u)] != 0.0);
}
