// uses: rows
// Softmax family (rust/ops/nn.rs, rows of rust/kernels/reduce.rs): softmax / log_softmax along
// an axis, logsumexp over axes, softmax_xent (per-example cross-entropy of logits (N, C) and
// float labels (N,)) and softmax_xent_backward ((softmax - onehot) * g[:, None]). A row is the
// reduced index space of one output (or, for softmax, the axis through one element): its max, then
// its sum of exp(v - max), by the row layout of reduce.wgsl:
//   prm = [nrows, n, G, blocked, kr, rr, s0, s1, kept shape[kr], kept strides[kr], red shape[rr], red strides[rr]]
// (s0 = the stride of g in softmax_xent_backward: 0 for a scalar g, 1 for g of shape (N,)).
// The CPU's edge cases, written out (no inf / NaN arithmetic is left to the driver):
//   a NaN in the row -> every output NaN; every element -inf -> the shift is 0, the sum 0:
//   softmax and log_softmax NaN, logsumexp -inf; a +inf in the row -> shift 0, sum inf:
//   softmax NaN where exp(v) overflows and 0 elsewhere, log_softmax NaN at +inf and -inf
//   elsewhere, logsumexp +inf; otherwise shift m = max and the usual stable formulas.

// exp as kernels/unary.wgsl (overflow to inf, underflow to 0; the argument is never NaN here)
fn exp_(x: f32) -> f32 {
  if (x > 88.72284) { return inf_(); }
  if (x < -103.97208) { return 0.0; }
  return exp(x);
}
fn is_pinf(x: f32) -> bool { return bitcast<u32>(x) == 0x7f800000u; }
fn is_ninf(x: f32) -> bool { return bitcast<u32>(x) == 0xff800000u; }

// Row statistics: m = the NaN-propagating max, s = sum of exp(v - m) (only when m is finite);
// every thread of the workgroup calls it (tree barriers).
struct Stats { m: f32, s: f32, base: u32 }
fn row_stats(c: Ctx) -> Stats {
  let n = pu(1u);
  let base = row_base(c.row);
  var m = -inf_();
  if (c.ok) { for (var r = c.lane; r < n; r += c.lanes) { m = nan_max(m, in0[base + red_off(r)]); } }
  m = tree_max(c, m);
  // cascaded as reduce.wgsl lane_sum (chains of at most 32 adds)
  var s = 0.0; var q = 0.0; var p = 0.0; var k = 0u;
  if (c.ok && !isnan_(m) && !is_pinf(m) && !is_ninf(m)) {
    for (var r = c.lane; r < n; r += c.lanes) {
      p += exp_(in0[base + red_off(r)] - m);
      k++;
      if ((k & 31u) == 0u) { q += p; p = 0.0; if ((k & 1023u) == 0u) { s += q; q = 0.0; } }
    }
  }
  s = tree_sum(c, s + (q + p));
  return Stats(m, s, base);
}
// softmax of element v of a row with statistics st (e * (1 / s), as the CPU)
fn sm_(v: f32, st: Stats) -> f32 {
  if (isnan_(st.m) || is_ninf(st.m)) { return nan_(); }
  if (is_pinf(st.m)) { return select(0.0, nan_(), v > 88.72284); }
  return exp_(v - st.m) * (1.0 / st.s);
}
// log-softmax: (v - m) - ln s (not v - (m + ln s), which rounds at the scale of m)
fn lsm_(v: f32, st: Stats) -> f32 {
  if (isnan_(st.m) || is_ninf(st.m)) { return nan_(); }
  if (is_pinf(st.m)) { return select(-inf_(), nan_(), is_pinf(v)); }
  if (is_ninf(v)) { return -inf_(); }
  return (v - st.m) - log(st.s);
}
// the label of row `row` of softmax_xent(_backward) as an index, or C when it is not an integer
// in [0, C) (the CPU refuses such labels when recording; a replay gets NaN rows)
fn label_(row: u32) -> u32 {
  let l = in1[row];
  let c = pu(1u);
  if (isnan_(l) || !(l >= 0.0) || !(l < f32(c)) || floor(l) != l) { return c; }
  return u32(l);
}

@compute @workgroup_size(256) fn op_softmax(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = ctx(lid, wid, nwg);
  let st = row_stats(c);
  if (!c.ok) { return; }
  for (var r = c.lane; r < pu(1u); r += c.lanes) { let o = st.base + red_off(r); out0[o] = sm_(in0[o], st); }
}
@compute @workgroup_size(256) fn op_log_softmax(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = ctx(lid, wid, nwg);
  let st = row_stats(c);
  if (!c.ok) { return; }
  for (var r = c.lane; r < pu(1u); r += c.lanes) { let o = st.base + red_off(r); out0[o] = lsm_(in0[o], st); }
}
// logsumexp = ln s + m; NaN, -inf (also an empty row) and +inf maxima are the result
@compute @workgroup_size(256) fn op_logsumexp(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = ctx(lid, wid, nwg);
  let st = row_stats(c);
  if (!c.ok || c.lane != 0u) { return; }
  if (isnan_(st.m) || is_pinf(st.m) || is_ninf(st.m)) { out0[c.row] = st.m; } else { out0[c.row] = log(st.s) + st.m; }
}
// loss_i = -log_softmax(z_i)[label_i]   (in0 = logits (N, C), in1 = labels (N,))
@compute @workgroup_size(256) fn op_softmax_xent(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = ctx(lid, wid, nwg);
  let st = row_stats(c);
  if (!c.ok || c.lane != 0u) { return; }
  let l = label_(c.row);
  if (l == pu(1u)) { out0[c.row] = nan_(); } else { out0[c.row] = -lsm_(in0[st.base + red_off(l)], st); }
}
// (softmax(z_i) - onehot(label_i)) * g_i   (in2 = g, (N,) or one element: stride s0)
@compute @workgroup_size(256) fn op_softmax_xent_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = ctx(lid, wid, nwg);
  let st = row_stats(c);
  if (!c.ok) { return; }
  let l = label_(c.row);
  let g = in2[c.row * pu(6u)];
  for (var r = c.lane; r < pu(1u); r += c.lanes) {
    let o = st.base + red_off(r);
    if (l == pu(1u)) { out0[o] = nan_(); } else { out0[o] = (sm_(in0[o], st) - select(0.0, 1.0, r == l)) * g; }
  }
}
