// Batched matmul C = op(A) op(B) (rust/ops/matmul.rs). op(A) is M x K, op(B) is K x N, both read
// through strides, so `ta` / `tb` (transposed operands) cost nothing. Three tile shapes, picked per
// problem by lower/matmul.py; each runs 256 threads and stages K-slices of both operands (1024
// floats each) through double-buffered workgroup memory, fetching the next slice into registers
// while it computes on the current one (one barrier per slice):
//   mm_big    128 x 128 output tile, 8 x 8 outputs per thread, K in slices of 8
//   mm_mid     64 x  64 output tile, 4 x 4 outputs per thread, K in slices of 16
//   mm_small   32 x  32 output tile, 4 x 1 outputs per thread, K in slices of 32
// A thread fetches 4 consecutive elements of each operand per slice, along whichever dimension is
// contiguous in memory (coalesced for either transpose). Workgroup memory holds op(A) as [k][m]
// and op(B) as [k][n], rows of vec4 whose column is XOR-swizzled by k (`at`), so the transposing
// stores of a k-contiguous operand do not pile onto one bank. Accumulators are indexed only by
// constants (registers, never local memory); each output sums its K terms in increasing k, in f32:
// deterministic.
// The workgroups form a 1-D list over grid (x, y): z = batch + nbatch * split, then the output
// tiles of that (batch, split) in groups of GROUP tile-rows walked column by column (neighbouring
// workgroups share operand panels in L2). With split K, split s covers k in
// [s * kchunk, (s + 1) * kchunk) and writes out0[s][batch][M][N]; matmul_splitk_sum adds the splits
// in order. Batch dimensions broadcast: per-batch element offsets from strides (0 where broadcast).
// prm = [M, N, K, sam, sak, sbk, sbn, nbatch, brank, kchunk, splits, 0,
//        bshape[6] @12, A batch strides[6] @18, B batch strides[6] @24]   (element strides;
// (sam, sak) are op(A)'s strides along m and k, (sbk, sbn) op(B)'s along k and n: one is 1)

const GROUP: u32 = 8u;
const STAGE: u32 = 256u;  // vec4s per operand slice (1024 floats); two stages per array
var<workgroup> As: array<vec4<f32>, 512>;  // [stage][k][m / 4]
var<workgroup> Bs: array<vec4<f32>, 512>;  // [stage][k][n / 4]

// vec4 slot of row k, vec4 column q in a slice of tile width TL (TL * BK = 1024): the column is
// XORed with a function of k that sends the 4-row groups a thread stores to distinct banks
fn at(k: u32, q: u32, TL: u32) -> u32 { return k * (TL / 4u) + (q ^ (((k >> 2u) * (TL / 32u)) & 7u)); }

struct Job { m0: u32, n0: u32, ao: u32, bo: u32, co: u32, kb: u32, ke: u32, nt: u32, ok: bool }

// This workgroup's output tile (origin m0, n0), matrix offsets, K range [kb, ke) and slice count.
fn job(wg: vec3<u32>, nwg: vec3<u32>, TL: u32, BK: u32) -> Job {
  var j: Job;
  let M = pu(0u); let N = pu(1u); let K = pu(2u); let nb = pu(7u); let kc = pu(9u);
  let tm = (M + TL - 1u) / TL; let tn = (N + TL - 1u) / TL;
  let w = wg.x + wg.y * nwg.x;
  let z = w / (tm * tn);
  j.ok = z < nb * pu(10u);
  if (!j.ok) { return j; }
  let t = w % (tm * tn);
  let g0 = (t / (GROUP * tn)) * GROUP; let gs = min(tm - g0, GROUP); let r = t % (GROUP * tn);
  j.m0 = (g0 + r % gs) * TL; j.n0 = (r / gs) * TL;
  let batch = z % nb; let split = z / nb;
  var rem = batch;
  for (var d = pu(8u); d > 0u; d--) {
    let sz = pu(11u + d);
    let c = rem % sz; rem = rem / sz;
    j.ao += c * pu(17u + d); j.bo += c * pu(23u + d);
  }
  j.co = (split * nb + batch) * M * N;
  j.kb = split * kc; j.ke = min(K, j.kb + kc);
  j.nt = (j.ke - j.kb + BK - 1u) / BK;
  return j;
}

// One thread's share of an operand's slices: elements j = 0..3 at (tile row lt + j (1 - dk),
// k + j dk) of each slice (TL rows along m for A / n for B, BK deep), global index base + j at
// slice 0 (the contiguous dimension has stride 1), + step per slice.
struct Opnd { which: u32, base: u32, step: u32, lt: u32, l: u32, lmax: u32, k: u32, dk: u32 }

fn opnd(which: u32, off: u32, sl: u32, sk: u32, l0: u32, lmax: u32, kb: u32, TL: u32, BK: u32, tid: u32) -> Opnd {
  var o: Opnd;
  o.which = which; o.lmax = lmax; o.step = BK * sk;
  if (sk == 1u) { o.dk = 1u; o.lt = tid / (BK / 4u); o.k = (tid % (BK / 4u)) * 4u; }
  else { o.dk = 0u; o.k = tid / (TL / 4u); o.lt = (tid % (TL / 4u)) * 4u; }
  o.l = l0 + o.lt;
  o.base = off + o.l * sl + (kb + o.k) * sk;  // may wrap for rows past lmax: never read
  return o;
}
fn opnd_a(j: Job, TL: u32, BK: u32, tid: u32) -> Opnd { return opnd(0u, j.ao, pu(3u), pu(4u), j.m0, pu(0u), j.kb, TL, BK, tid); }
fn opnd_b(j: Job, TL: u32, BK: u32, tid: u32) -> Opnd { return opnd(1u, j.bo, pu(6u), pu(5u), j.n0, pu(1u), j.kb, TL, BK, tid); }

fn ld(which: u32, i: u32, ok: bool) -> f32 {
  if (!ok) { return 0.0; }
  if (which == 0u) { return in0[i]; }
  return in1[i];
}
// The thread's 4 elements of slice s (k from k0 = kb + s BK, zeros past the edges and past ke).
fn fetch(o: Opnd, s: u32, k0: u32, ke: u32) -> vec4<f32> {
  let i = o.base + s * o.step; let dl = 1u - o.dk; let k = k0 + o.k;
  return vec4<f32>(ld(o.which, i, o.l < o.lmax && k < ke),
                   ld(o.which, i + 1u, o.l + dl < o.lmax && k + o.dk < ke),
                   ld(o.which, i + 2u, o.l + 2u * dl < o.lmax && k + 2u * o.dk < ke),
                   ld(o.which, i + 3u, o.l + 3u * dl < o.lmax && k + 3u * o.dk < ke));
}
// Store fetched elements into stage `st` (0 or STAGE) of As (operand 0) or Bs: one vec4 when they
// run along l, four scalars (a transpose) when they run along k. (naga takes no workgroup pointers.)
fn sv(which: u32, i: u32, v: vec4<f32>) { if (which == 0u) { As[i] = v; } else { Bs[i] = v; } }
fn sc(which: u32, i: u32, c: u32, x: f32) { if (which == 0u) { As[i][c] = x; } else { Bs[i][c] = x; } }
fn stash(v: vec4<f32>, o: Opnd, st: u32, TL: u32) {
  let q = o.lt >> 2u;
  if (o.dk == 0u) { sv(o.which, st + at(o.k, q, TL), v); return; }
  let c = o.lt & 3u;
  sc(o.which, st + at(o.k, q, TL), c, v.x);
  sc(o.which, st + at(o.k + 1u, q, TL), c, v.y);
  sc(o.which, st + at(o.k + 2u, q, TL), c, v.z);
  sc(o.which, st + at(o.k + 3u, q, TL), c, v.w);
}

// Bounds-checked stores of 4 outputs of row m at columns n..n+3.
fn put4(j: Job, m: u32, n: u32, v: vec4<f32>) {
  let M = pu(0u); let N = pu(1u);
  if (m >= M) { return; }
  let i = j.co + m * N + n;
  if (n < N) { out0[i] = v.x; }
  if (n + 1u < N) { out0[i + 1u] = v.y; }
  if (n + 2u < N) { out0[i + 2u] = v.z; }
  if (n + 3u < N) { out0[i + 3u] = v.w; }
}

// 128 x 128 tile: thread (tx, ty) owns rows {4ty.., 64 + 4ty..} x columns {4tx.., 64 + 4tx..};
// acc[2r + h] = row r (0-3 from a0, 4-7 from a1), column half h.
@compute @workgroup_size(256) fn mm_big(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>,
                                        @builtin(num_workgroups) nwg: vec3<u32>) {
  let j = job(wg, nwg, 128u, 8u);
  if (!j.ok) { return; }
  let oa = opnd_a(j, 128u, 8u, tid); let ob = opnd_b(j, 128u, 8u, tid);
  let tx = tid % 16u; let ty = tid / 16u;
  var acc: array<vec4<f32>, 16>;
  var ra = fetch(oa, 0u, j.kb, j.ke); var rb = fetch(ob, 0u, j.kb, j.ke);
  stash(ra, oa, 0u, 128u); stash(rb, ob, 0u, 128u);
  workgroupBarrier();
  for (var s = 0u; s < j.nt; s++) {
    let cur = (s & 1u) * STAGE;
    let more = s + 1u < j.nt;
    if (more) { ra = fetch(oa, s + 1u, j.kb + (s + 1u) * 8u, j.ke); rb = fetch(ob, s + 1u, j.kb + (s + 1u) * 8u, j.ke); }
    for (var k = 0u; k < 8u; k++) {
      let a0 = As[cur + at(k, ty, 128u)]; let a1 = As[cur + at(k, ty + 16u, 128u)];
      let b0 = Bs[cur + at(k, tx, 128u)]; let b1 = Bs[cur + at(k, tx + 16u, 128u)];
      acc[0] = fma(vec4f(a0.x), b0, acc[0]); acc[1] = fma(vec4f(a0.x), b1, acc[1]);
      acc[2] = fma(vec4f(a0.y), b0, acc[2]); acc[3] = fma(vec4f(a0.y), b1, acc[3]);
      acc[4] = fma(vec4f(a0.z), b0, acc[4]); acc[5] = fma(vec4f(a0.z), b1, acc[5]);
      acc[6] = fma(vec4f(a0.w), b0, acc[6]); acc[7] = fma(vec4f(a0.w), b1, acc[7]);
      acc[8] = fma(vec4f(a1.x), b0, acc[8]); acc[9] = fma(vec4f(a1.x), b1, acc[9]);
      acc[10] = fma(vec4f(a1.y), b0, acc[10]); acc[11] = fma(vec4f(a1.y), b1, acc[11]);
      acc[12] = fma(vec4f(a1.z), b0, acc[12]); acc[13] = fma(vec4f(a1.z), b1, acc[13]);
      acc[14] = fma(vec4f(a1.w), b0, acc[14]); acc[15] = fma(vec4f(a1.w), b1, acc[15]);
    }
    if (more) { stash(ra, oa, STAGE - cur, 128u); stash(rb, ob, STAGE - cur, 128u); }
    workgroupBarrier();
  }
  let m0 = j.m0 + ty * 4u; let m1 = m0 + 64u; let n0 = j.n0 + tx * 4u; let n1 = n0 + 64u;
  put4(j, m0, n0, acc[0]); put4(j, m0, n1, acc[1]); put4(j, m0 + 1u, n0, acc[2]); put4(j, m0 + 1u, n1, acc[3]);
  put4(j, m0 + 2u, n0, acc[4]); put4(j, m0 + 2u, n1, acc[5]); put4(j, m0 + 3u, n0, acc[6]); put4(j, m0 + 3u, n1, acc[7]);
  put4(j, m1, n0, acc[8]); put4(j, m1, n1, acc[9]); put4(j, m1 + 1u, n0, acc[10]); put4(j, m1 + 1u, n1, acc[11]);
  put4(j, m1 + 2u, n0, acc[12]); put4(j, m1 + 2u, n1, acc[13]); put4(j, m1 + 3u, n0, acc[14]); put4(j, m1 + 3u, n1, acc[15]);
}

// 64 x 64 tile: thread (tx, ty) owns rows 4ty.. x columns 4tx..; acc[r] = row r.
@compute @workgroup_size(256) fn mm_mid(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>,
                                        @builtin(num_workgroups) nwg: vec3<u32>) {
  let j = job(wg, nwg, 64u, 16u);
  if (!j.ok) { return; }
  let oa = opnd_a(j, 64u, 16u, tid); let ob = opnd_b(j, 64u, 16u, tid);
  let tx = tid % 16u; let ty = tid / 16u;
  var acc: array<vec4<f32>, 4>;
  var ra = fetch(oa, 0u, j.kb, j.ke); var rb = fetch(ob, 0u, j.kb, j.ke);
  stash(ra, oa, 0u, 64u); stash(rb, ob, 0u, 64u);
  workgroupBarrier();
  for (var s = 0u; s < j.nt; s++) {
    let cur = (s & 1u) * STAGE;
    let more = s + 1u < j.nt;
    if (more) { ra = fetch(oa, s + 1u, j.kb + (s + 1u) * 16u, j.ke); rb = fetch(ob, s + 1u, j.kb + (s + 1u) * 16u, j.ke); }
    for (var k = 0u; k < 16u; k++) {
      let a = As[cur + at(k, ty, 64u)]; let b = Bs[cur + at(k, tx, 64u)];
      acc[0] = fma(vec4f(a.x), b, acc[0]); acc[1] = fma(vec4f(a.y), b, acc[1]);
      acc[2] = fma(vec4f(a.z), b, acc[2]); acc[3] = fma(vec4f(a.w), b, acc[3]);
    }
    if (more) { stash(ra, oa, STAGE - cur, 64u); stash(rb, ob, STAGE - cur, 64u); }
    workgroupBarrier();
  }
  let m = j.m0 + ty * 4u; let n = j.n0 + tx * 4u;
  put4(j, m, n, acc[0]); put4(j, m + 1u, n, acc[1]); put4(j, m + 2u, n, acc[2]); put4(j, m + 3u, n, acc[3]);
}

// 32 x 32 tile: thread (tn, tm) owns rows 4tm.. of column tn (a warp writes 32 columns of a row).
@compute @workgroup_size(256) fn mm_small(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>,
                                          @builtin(num_workgroups) nwg: vec3<u32>) {
  let j = job(wg, nwg, 32u, 32u);
  if (!j.ok) { return; }
  let oa = opnd_a(j, 32u, 32u, tid); let ob = opnd_b(j, 32u, 32u, tid);
  let tn = tid % 32u; let tm = tid / 32u;
  var acc = vec4<f32>(0.0);
  var ra = fetch(oa, 0u, j.kb, j.ke); var rb = fetch(ob, 0u, j.kb, j.ke);
  stash(ra, oa, 0u, 32u); stash(rb, ob, 0u, 32u);
  workgroupBarrier();
  for (var s = 0u; s < j.nt; s++) {
    let cur = (s & 1u) * STAGE;
    let more = s + 1u < j.nt;
    if (more) { ra = fetch(oa, s + 1u, j.kb + (s + 1u) * 32u, j.ke); rb = fetch(ob, s + 1u, j.kb + (s + 1u) * 32u, j.ke); }
    for (var k = 0u; k < 32u; k++) {
      acc = fma(As[cur + at(k, tm, 32u)], vec4f(Bs[cur + at(k, tn >> 2u, 32u)][tn & 3u]), acc);
    }
    if (more) { stash(ra, oa, STAGE - cur, 32u); stash(rb, ob, STAGE - cur, 32u); }
    workgroupBarrier();
  }
  let M = pu(0u); let N = pu(1u); let m = j.m0 + tm * 4u; let n = j.n0 + tn;
  if (n < N) {
    let i = j.co + m * N + n;
    if (m < M) { out0[i] = acc.x; }
    if (m + 1u < M) { out0[i + N] = acc.y; }
    if (m + 2u < M) { out0[i + 2u * N] = acc.z; }
    if (m + 3u < M) { out0[i + 3u * N] = acc.w; }
  }
}

// out0[i] = sum over splits s, in order, of in0[s * n + i]; prm = [n, splits]
@compute @workgroup_size(256) fn matmul_splitk_sum(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); let n = pu(0u); if (i >= n) { return; }
  var s = 0.0;
  for (var k = 0u; k < pu(1u); k++) { s += in0[k * n + i]; }
  out0[i] = s;
}
