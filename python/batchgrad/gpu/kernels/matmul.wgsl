// Batched matmul C = op(A) op(B) (rust/ops/matmul.rs). op(A) is M x K, op(B) is K x N, read
// through strides, so `ta` / `tb` (transposed operands) cost nothing. 64 x 64 output tile per
// workgroup of 16 x 16 threads, 4 x 4 outputs per thread, K in steps of 16 through workgroup
// memory. Batch dims broadcast (per-batch offsets from strides). With split K, workgroup z =
// batch + nbatch * split writes its partial sum to out0[split][batch][M][N], and
// `matmul_splitk_sum` adds the splits in order (deterministic).
// prm = [M, N, K, sam, sak, sbk, sbn, nbatch, brank, kchunk, splits, 0,
//        bshape[6] @12, a batch strides[6] @18, b batch strides[6] @24]

const TM: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> As: array<f32, 1024>;  // [TK][TM]
var<workgroup> Bs: array<f32, 1024>;  // [TK][TN]

@compute @workgroup_size(16, 16) fn op_matmul(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
  let M = pu(0u); let N = pu(1u); let K = pu(2u);
  let sam = pu(3u); let sak = pu(4u); let sbk = pu(5u); let sbn = pu(6u);
  let nb = pu(7u); let br = pu(8u); let kc = pu(9u);
  let batch = wg.z % nb;
  let split = wg.z / nb;
  // offsets of this batch's matrices
  var rem = batch; var ao = 0u; var bo = 0u;
  for (var d = br; d > 0u; d--) {
    let sz = pu(11u + d);
    let c = rem % sz; rem = rem / sz;
    ao += c * pu(17u + d); bo += c * pu(23u + d);
  }
  let kb = split * kc;
  let ke = min(K, kb + kc);
  let row0 = wg.y * TM; let col0 = wg.x * TM;
  let tid = l.y * 16u + l.x;
  var acc: array<f32, 16>;
  for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }
  for (var k0 = kb; k0 < ke; k0 += TK) {
    for (var r = 0u; r < 4u; r++) {
      let e = tid + r * 256u;
      // A tile: consecutive threads walk k when A is row-major (sak == 1), m otherwise
      var mm = e / TK; var kk = e % TK;
      if (sak != 1u) { mm = e % TM; kk = e / TM; }
      let gm = row0 + mm; let gk = k0 + kk;
      As[kk * TM + mm] = select(0.0, in0[ao + gm * sam + gk * sak], gm < M && gk < ke);
      var kn = e / TM; var nn = e % TM;
      if (sbn != 1u) { kn = e % TK; nn = e / TK; }
      let gn = col0 + nn; let gk2 = k0 + kn;
      Bs[kn * TM + nn] = select(0.0, in1[bo + gk2 * sbk + gn * sbn], gn < N && gk2 < ke);
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
      var a: array<f32, 4>; var b: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) { a[i] = As[kk * TM + l.y * 4u + i]; b[i] = Bs[kk * TM + l.x * 4u + i]; }
      for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]); } }
    }
    workgroupBarrier();
  }
  let ob = (split * nb + batch) * M * N;
  for (var i = 0u; i < 4u; i++) {
    let gm = row0 + l.y * 4u + i;
    if (gm >= M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let gn = col0 + l.x * 4u + j;
      if (gn < N) { out0[ob + gm * N + gn] = acc[i * 4u + j]; }
    }
  }
}

// out0[i] = sum over splits s (in order) of in0[s * n + i]; prm = [n, splits]
@compute @workgroup_size(256) fn matmul_splitk_sum(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) w: vec3<u32>) {
  let i = lin(g, w); let n = pu(0u); if (i >= n) { return; }
  var s = 0.0;
  for (var k = 0u; k < pu(1u); k++) { s += in0[k * n + i]; }
  out0[i] = s;
}
