// uses: rows
// Reductions over axes (rust/ops/reduce.rs): sum, mean, max. One output element = one "row":
// its kept-dims index gives a base offset in in0, the reduced index space is walked by the row's
// threads, then a fixed-shape tree in workgroup memory (deterministic run to run).
// prm (lower/reduce.py `row_meta`):
//   [nrows, n, G, blocked, kr, rr, s0, s1, kept shape[kr], kept strides[kr], red shape[rr], red strides[rr]]
//   nrows outputs, n reduced elements each; a 256-thread workgroup holds G rows (a power of two) of
//   T = 256 / G lanes; blocked = 1: row slot lid / T, lane lid % T (a row's lanes adjacent: rows
//   contiguous in memory); blocked = 0: slot lid % G, lane lid / G (consecutive rows adjacent in
//   memory: coalesced column reductions such as a bias gradient). s0 = 1/n as f32 for mean.
// The row layout helpers (`sh` to `tree_max`) are in rows.wgsl.

// this thread's share of a row sum, cascaded: chunks of 32 values, 32 chunks per outer term, so
// no f32 add chain is longer than 32 (the error no longer grows with n / T; structural, unlike a
// compensated sum, so no compiler can fold it away)
fn lane_sum(c: Ctx) -> f32 {
  var s = 0.0; var q = 0.0; var p = 0.0; var k = 0u;
  if (c.ok) {
    let base = row_base(c.row);
    for (var r = c.lane; r < pu(1u); r += c.lanes) {
      p += in0[base + red_off(r)];
      k++;
      if ((k & 31u) == 0u) { q += p; p = 0.0; if ((k & 1023u) == 0u) { s += q; q = 0.0; } }
    }
  }
  return s + (q + p);
}

@compute @workgroup_size(256) fn op_sum(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = ctx(lid, wid, nwg);
  let s = tree_sum(c, lane_sum(c));
  if (c.ok && c.lane == 0u) { out0[c.row] = s; }
}
// mean = sum * (1/n) as the CPU (an empty mean is NaN: 0 * inf, written explicitly)
@compute @workgroup_size(256) fn op_mean(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = ctx(lid, wid, nwg);
  let s = tree_sum(c, lane_sum(c));
  if (c.ok && c.lane == 0u) { out0[c.row] = select(s * pf(6u), nan_(), pu(1u) == 0u); }
}
// max: NaN propagates (n == 0 is refused by the rule, as by the CPU)
@compute @workgroup_size(256) fn op_max(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = ctx(lid, wid, nwg);
  var m = -inf_();
  if (c.ok) {
    let base = row_base(c.row);
    for (var r = c.lane; r < pu(1u); r += c.lanes) { m = nan_max(m, in0[base + red_off(r)]); }
  }
  m = tree_max(c, m);
  if (c.ok && c.lane == 0u) { out0[c.row] = m; }
}
