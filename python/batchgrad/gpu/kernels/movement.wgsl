// Movement ops (rust/ops/movement.rs): copies and index sums, bit for bit the CPU's results.
// One thread per output element everywhere (no atomics: each output element is written once).

// Strided gather (reshape, transpose, broadcast_to, slice), lower/movement.py `_gather`:
// prm = [n, rank, offset, 0, shape[rank], strides[rank]] (offset, strides i32: slices step back)
fn gather_(i: u32) -> f32 {
  let r = pu(1u);
  var rem = i;
  var o = pi(2u);
  for (var d = r; d > 0u; d--) {
    let sz = pu(3u + d);
    o += i32(rem % sz) * pi(3u + r + d);
    rem = rem / sz;
  }
  return in0[u32(o)];
}
@compute @workgroup_size(256) fn op_reshape(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= pu(0u)) { return; } out0[i] = gather_(i);
}
@compute @workgroup_size(256) fn op_transpose(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= pu(0u)) { return; } out0[i] = gather_(i);
}
@compute @workgroup_size(256) fn op_broadcast_to(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= pu(0u)) { return; } out0[i] = gather_(i);
}
@compute @workgroup_size(256) fn op_slice(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= pu(0u)) { return; } out0[i] = gather_(i);
}

// slice_grad: each element of the input-shaped output reads the gradient where it lies on the
// slice's lattice, else 0. prm = [n, rank, then per dim d at 2 + 5d: size, start (i32),
// step (i32), len (the gradient's size), gradient stride]
@compute @workgroup_size(256) fn op_slice_grad(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= pu(0u)) { return; }
  let r = pu(1u);
  var rem = i;
  var o = 0u;
  for (var d = r; d > 0u; d--) {
    let b = 2u + 5u * (d - 1u);
    let sz = pu(b);
    let q = i32(rem % sz) - pi(b + 1u);  // distance from the slice's start
    rem = rem / sz;
    let p = pi(b + 2u);
    let k = q / p;  // exact when q % p == 0 (truncating division, any signs)
    if (q % p != 0 || k < 0 || k >= i32(pu(b + 3u))) { out0[i] = 0.0; return; }
    o += u32(k) * pu(b + 4u);
  }
  out0[i] = in0[o];
}

// take: out[o, j, r] = x[o, idx[j], r]; in1 = the normalised indices (as f32, exact).
// prm = [n, k, dim, inner]
@compute @workgroup_size(256) fn op_take(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= pu(0u)) { return; }
  let inner = pu(3u);
  let t = i / inner;
  let k = pu(1u);
  out0[i] = in0[((t / k) * pu(2u) + u32(in1[t % k])) * inner + i % inner];
}

// scatter_add: out[o, i, r] = sum of g[o, j, r] over j with idx[j] == i, in increasing j (from
// 0.0, as the CPU adds into zeros). in1 = [start[dim + 1] | js[k]] (f32, exact): the js hitting
// row i are js[start[i]..start[i + 1]], ascending. prm = [n, k, dim, inner]
@compute @workgroup_size(256) fn op_scatter_add(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= pu(0u)) { return; }
  let inner = pu(3u);
  let dim = pu(2u);
  let t = i / inner;
  let row = t % dim;
  let base = (t / dim) * pu(1u) * inner + i % inner;  // g[o, 0, r]
  var acc = 0.0;
  for (var s = u32(in1[row]); s < u32(in1[row + 1u]); s++) {
    acc += in0[base + u32(in1[dim + 1u + s]) * inner];
  }
  out0[i] = acc;
}

// concatenate / stack: one launch per input, copying its (outer, w) rows into the output's
// (outer, W) rows at column `at`. prm = [n, w, W, at]
fn place_(i: u32) { out0[(i / pu(1u)) * pu(2u) + pu(3u) + i % pu(1u)] = in0[i]; }
@compute @workgroup_size(256) fn op_concatenate(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= pu(0u)) { return; } place_(i);
}
@compute @workgroup_size(256) fn op_stack(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); if (i >= pu(0u)) { return; } place_(i);
}
