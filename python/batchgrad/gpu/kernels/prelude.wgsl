// Prepended to every kernel file: ONE binding layout for every batchgrad kernel, so one bind
// group layout and one pipeline layout serve them all.
//   in0..in3   read-only inputs            (unused ones are bound to a shared dummy)
//   out0..out3 read-write outputs / state   (unused ones are bound to distinct dummies)
//   prm        64 words of per-launch parameters (shapes, strides, scalars), a uniform slice
// Integers in `prm` are u32 (or i32 bit patterns), floats f32 bit patterns: see lower/base.py.
@group(0) @binding(0) var<storage, read> in0: array<f32>;
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read> in3: array<f32>;
@group(0) @binding(4) var<storage, read_write> out0: array<f32>;
@group(0) @binding(5) var<storage, read_write> out1: array<f32>;
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;
@group(0) @binding(7) var<storage, read_write> out3: array<f32>;
@group(0) @binding(8) var<uniform> prm: array<vec4<u32>, 16>;

fn pu(i: u32) -> u32 { return prm[i >> 2u][i & 3u]; }
fn pi(i: u32) -> i32 { return bitcast<i32>(pu(i)); }
fn pf(i: u32) -> f32 { return bitcast<f32>(pu(i)); }

// Linear index of a thread of a 1-D launch spread over a 2-D grid of 256-thread workgroups.
fn lin(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.x + gid.y * nwg.x * 256u; }
// Linear index of a workgroup in a 2-D grid (one workgroup per row / output element).
fn wlin(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }

// NaN test on the bits: drivers may fold `x != x` away under fast-math assumptions.
fn isnan_(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn nan_() -> f32 { return bitcast<f32>(0x7fc00000u); }
fn inf_() -> f32 { return bitcast<f32>(0x7f800000u); }

// Broadcasting elementwise launches (lower/base.py `elementwise_meta`):
// prm = [n, rank, s0, s1, s2, s3, shape[rank], strides of in0[rank], in1[rank], in2[rank]]
fn ew_n() -> u32 { return pu(0u); }
fn ew_s(k: u32) -> f32 { return pf(2u + k); }
// Offset in input k of output element i.
fn ew_off(i: u32, k: u32) -> u32 {
  let r = pu(1u);
  let sb = 6u + r * (k + 1u);
  var rem = i;
  var o = 0u;
  for (var d = r; d > 0u; d--) {
    let sz = pu(5u + d);
    o += (rem % sz) * pu(sb + d - 1u);
    rem = rem / sz;
  }
  return o;
}
