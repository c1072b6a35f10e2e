// Row layout shared by reduce.wgsl and nn.wgsl (lower/reduce.py `row_meta`); a family file
// that starts with `// uses: rows` gets it prepended after the prelude (gpu/device.py).

var<workgroup> sh: array<f32, 256>;

struct Ctx { row: u32, ok: bool, lane: u32, lanes: u32, lid: u32, step: u32, root: u32 }

fn ctx(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> Ctx {
  let g = pu(2u);
  let t = 256u / g;
  var slot = lid % g; var lane = lid / g; var step = g;
  if (pu(3u) == 1u) { slot = lid / t; lane = lid % t; step = 1u; }
  let row = wlin(wid, nwg) * g + slot;
  return Ctx(row, row < pu(0u), lane, t, lid, step, lid - lane * step);
}
// offset in in0 of the first element of a row (outermost dim taken without a modulo)
fn row_base(row: u32) -> u32 {
  let k = pu(4u);
  if (k == 0u) { return 0u; }
  var rem = row; var o = 0u;
  for (var d = k; d > 1u; d--) { let sz = pu(7u + d); o += (rem % sz) * pu(7u + k + d); rem /= sz; }
  return o + rem * pu(8u + k);
}
// offset of reduced element r within a row
fn red_off(r: u32) -> u32 {
  let b = 8u + 2u * pu(4u);
  let k = pu(5u);
  if (k == 0u) { return 0u; }
  var rem = r; var o = 0u;
  for (var d = k; d > 1u; d--) { let sz = pu(b + d - 1u); o += (rem % sz) * pu(b + k + d - 1u); rem /= sz; }
  return o + rem * pu(b + k);
}
// NaN-propagating max (rust/kernels/reduce.rs nan_max)
fn nan_max(m: f32, v: f32) -> f32 { if (v > m || isnan_(v)) { return v; } return m; }
// tree over a row's lanes: every thread of the workgroup must call these (barriers)
fn tree_sum(c: Ctx, v: f32) -> f32 {
  sh[c.lid] = v;
  for (var s = c.lanes / 2u; s > 0u; s /= 2u) {
    workgroupBarrier();
    if (c.lane < s) { sh[c.lid] += sh[c.lid + s * c.step]; }
  }
  workgroupBarrier();
  let r = sh[c.root];
  workgroupBarrier();
  return r;
}
fn tree_max(c: Ctx, v: f32) -> f32 {
  sh[c.lid] = v;
  for (var s = c.lanes / 2u; s > 0u; s /= 2u) {
    workgroupBarrier();
    if (c.lane < s) { sh[c.lid] = nan_max(sh[c.lid], sh[c.lid + s * c.step]); }
  }
  workgroupBarrier();
  let r = sh[c.root];
  workgroupBarrier();
  return r;
}

