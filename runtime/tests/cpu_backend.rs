//! The runtime's windows and the CPU backend: windows check their ranges,
//! and every op applied to a window of a larger buffer reads and writes
//! exactly that window, with the result of the kernel on the same slice.

use llama2_kernels as k;
use llama2_runtime::{v, vm, AttnShape, Backend, BufKind, CeGrad, CpuBackend, Gemm, GradWrite, Ragged, RopeShape, Trans, View, ViewMut};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A buffer holding `pad` sentinels, then `x`, then `pad` sentinels.
fn padded(be: &CpuBackend, x: &[f32], pad: usize, kind: BufKind) -> llama2_runtime::CpuBuf {
    let mut host = vec![7.5f32; x.len() + 2 * pad];
    host[pad..pad + x.len()].copy_from_slice(x);
    let mut b = be.alloc(host.len(), kind).unwrap();
    be.upload(vm(&mut b), &host).unwrap();
    b
}

fn sentinels_intact(b: &llama2_runtime::CpuBuf, pad: usize, len: usize) {
    assert!(b.data[..pad].iter().chain(&b.data[pad + len..]).all(|&x| x == 7.5), "an op wrote outside its window");
}

#[test]
fn windows_check_their_ranges() {
    let be = CpuBackend::new(1).unwrap();
    let mut b = be.alloc(12, BufKind::F32).unwrap();
    let w = v(&b).sub(2, 8).unwrap();
    assert_eq!((w.off, w.len), (2, 8));
    let p = w.part(3, 4).unwrap();
    assert_eq!((p.off, p.len), (8, 2));
    assert!(v(&b).sub(5, 8).is_err(), "past the end");
    assert!(v(&b).sub(usize::MAX, 2).is_err(), "overflow");
    assert!(v(&b).part(0, 5).is_err(), "12 is not a multiple of 5");
    assert!(v(&b).part(0, 0).is_err());
    let mut m = vm(&mut b).sub(4, 4).unwrap();
    let r = m.reborrow();
    assert_eq!((r.off, r.len), (4, 4));
    let s: View<CpuBackend> = m.as_view();
    assert_eq!((s.off, s.len), (4, 4));
}

#[test]
fn ops_on_windows_equal_the_kernels_on_slices() {
    let be = CpuBackend::new(2).unwrap();
    let pad = 5;
    // matmul: C (3, 4) = A (3, 6) B (4, 6)^T
    let (a, bm) = (data(18, 1), data(24, 2));
    let g = Gemm { m: 3, n: 4, k: 6, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite };
    let (ab, bb) = (padded(&be, &a, pad, BufKind::Act), padded(&be, &bm, pad, BufKind::Act));
    let mut cb = padded(&be, &[0.0; 12], pad, BufKind::Act);
    be.matmul(vm(&mut cb).sub(pad, 12).unwrap(), v(&ab).sub(pad, 18).unwrap(), v(&bb).sub(pad, 24).unwrap(), g).unwrap();
    let mut want = vec![0f32; 12];
    k::matmul::matmul_cpu(&mut want, &a, &bm, g, 1).unwrap();
    assert_eq!(&cb.data[pad..pad + 12], &want[..]);
    sentinels_intact(&cb, pad, 12);

    // cross-entropy with entropy, on a window of logits
    let (n, vocab) = (4, 9);
    let x = data(n * vocab, 3);
    let targets = [3, -1, 0, 8];
    let mut lb = padded(&be, &x, pad, BufKind::Act);
    let mut losses = be.alloc(n, BufKind::F32).unwrap();
    let mut ent = be.alloc(n, BufKind::F32).unwrap();
    be.cross_entropy_entropy(vm(&mut lb).sub(pad, n * vocab).unwrap(), vm(&mut losses), vm(&mut ent), &targets, vocab, CeGrad::Uniform(0.5)).unwrap();
    let (mut wx, mut wl, mut we) = (x.clone(), vec![0f32; n], vec![0f32; n]);
    k::cross_entropy::cross_entropy_entropy_cpu(&mut wx, &mut wl, &mut we, &targets, vocab, CeGrad::Uniform(0.5)).unwrap();
    assert_eq!((&lb.data[pad..pad + n * vocab], &losses.data[..], &ent.data[..]), (&wx[..], &wl[..], &we[..]));
    sentinels_intact(&lb, pad, n * vocab);

    // ragged attention and RoPE on windows
    let s = AttnShape::causal(2, 5, 2, 1, 4);
    let r = Ragged { pos0: &[0, 0], len: &[5, 3] };
    let (q, kk, vv) = (data(2 * 5 * 2 * 4, 4), data(2 * 5 * 4, 5), data(2 * 5 * 4, 6));
    let (qb, kb, vb) = (padded(&be, &q, pad, BufKind::Act), padded(&be, &kk, pad, BufKind::Act), padded(&be, &vv, pad, BufKind::Act));
    let mut ob = padded(&be, &vec![0.0; q.len()], pad, BufKind::Act);
    let mut lse = be.alloc(2 * 2 * 5, BufKind::F32).unwrap();
    let out_w: ViewMut<CpuBackend> = vm(&mut ob).sub(pad, q.len()).unwrap();
    be.attention_fwd_ragged(
        out_w,
        vm(&mut lse),
        v(&qb).sub(pad, q.len()).unwrap(),
        v(&kb).sub(pad, kk.len()).unwrap(),
        v(&vb).sub(pad, vv.len()).unwrap(),
        s,
        r,
    )
    .unwrap();
    let (mut wo, mut wlse) = (vec![0f32; q.len()], vec![0f32; 20]);
    k::attention::attention_fwd_ragged_cpu(&mut wo, &mut wlse, &q, &kk, &vv, s, r).unwrap();
    assert_eq!((&ob.data[pad..pad + q.len()], &lse.data[..]), (&wo[..], &wlse[..]));
    sentinels_intact(&ob, pad, q.len());

    let table = k::rope::rope_table(16, 4, 10000.0);
    let mut tb = be.alloc(table.len(), BufKind::F32).unwrap();
    be.upload(vm(&mut tb), &table).unwrap();
    let rs = RopeShape { b: 2, t: 5, heads: 2, hd: 4, pos0: 0 };
    let r2 = Ragged { pos0: &[3, 0], len: &[2, 5] };
    let mut xb = padded(&be, &q, pad, BufKind::Act);
    be.rope_fwd_ragged(vm(&mut xb).sub(pad, q.len()).unwrap(), v(&tb), rs, r2).unwrap();
    let mut wx = q.clone();
    k::rope::rope_fwd_ragged_cpu(&mut wx, &table, rs, r2).unwrap();
    assert_eq!(&xb.data[pad..pad + q.len()], &wx[..]);
    sentinels_intact(&xb, pad, q.len());
    // sequence 0's rows past its length (padding) are untouched by RoPE
    assert_eq!(&wx[2 * 2 * 4..5 * 2 * 4], &q[2 * 2 * 4..5 * 2 * 4]);
}

#[test]
fn ops_refuse_bad_shapes_with_an_error() {
    let be = CpuBackend::new(1).unwrap();
    let mut out = be.alloc(10, BufKind::Act).unwrap();
    let a = be.alloc(10, BufKind::Act).unwrap();
    let b = be.alloc(9, BufKind::Act).unwrap();
    assert!(be.add(vm(&mut out), v(&a), v(&b)).is_err());
    let r = Ragged { pos0: &[0], len: &[7] };
    let mut x = be.alloc(2 * 4 * 4, BufKind::Act).unwrap();
    let t = be.alloc(64, BufKind::F32).unwrap();
    let e = be.rope_fwd_ragged(vm(&mut x), v(&t), RopeShape { b: 2, t: 4, heads: 1, hd: 4, pos0: 0 }, r).unwrap_err();
    assert!(e.to_string().contains("ragged"), "{e}");
}

/// Data parallelism sums a sharded gradient's norm from per-block partials
/// (comm::Shards start on block boundaries): their in-order sum must be the
/// whole buffer's `sum_squares` bit for bit, and the partials of aligned
/// windows must be the whole buffer's partials.
#[test]
fn sum_squares_partials_concatenate_to_the_whole_sum() {
    use llama2_runtime::comm::{Shards, SHARD_ALIGN};
    use llama2_runtime::cpu::SUMSQ_BLOCK;
    assert!(SHARD_ALIGN.is_multiple_of(SUMSQ_BLOCK), "shards must start on Σx² block boundaries");
    let be = CpuBackend::new(2).unwrap();
    for n in [1, SUMSQ_BLOCK - 1, SUMSQ_BLOCK, 3 * SUMSQ_BLOCK + 17, 100_003] {
        let x = data(n, n as u64);
        let b = padded(&be, &x, 0, BufKind::F32);
        let whole = be.sum_squares(v(&b)).unwrap();
        let parts = be.sum_squares_partials(v(&b)).unwrap();
        assert_eq!(parts.len(), n.div_ceil(SUMSQ_BLOCK));
        assert_eq!(parts.iter().sum::<f64>().to_bits(), whole.to_bits(), "n {n}");
        for world in 2..=4 {
            let sh = Shards::new(n, world);
            let mut cat = Vec::new();
            for r in 0..world {
                let (off, len) = sh.of(r);
                if len > 0 {
                    cat.extend(be.sum_squares_partials(v(&b).sub(off, len).unwrap()).unwrap());
                }
            }
            assert_eq!(cat, parts, "n {n} world {world}");
        }
    }
}
