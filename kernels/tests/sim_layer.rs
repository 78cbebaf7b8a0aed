//! The CPU layer itself (feature `cuda-sim`): every kernel the launchers name
//! is in it, launches are checked against the kernels' signatures and
//! limits, and CUDA's semantics hold (shuffles with masks and widths, votes,
//! barriers, shared memory, atomics, the mma.m16n8k16 and ldmatrix fragment
//! layouts), each checked against a host reference written from the CUDA
//! Programming Guide / PTX ISA with the `selftest_*` kernels of
//! `kernels/sim/selftest.cu`; and the errors the layer must report (a
//! divergent barrier, a deadlock, an exited lane in a mask, a read outside
//! the mask, lanes meeting at different shuffles, a write past a buffer,
//! a race) are reported.
#![cfg(feature = "cuda-sim")]

use half::bf16;
use llama2_kernels::cuda::sim::{kernels, Plant, Schedule, SimConfig, SimDevice, SimMem};
use llama2_kernels::cuda::{KArg, LaunchDims, ENTRY_POINTS};
use std::collections::BTreeSet;

fn dev() -> SimDevice {
    SimDevice::new(SimConfig::default())
}
fn dims(blocks: u32, threads: u32) -> LaunchDims {
    LaunchDims { grid: (blocks, 1, 1), block: threads, smem: 0 }
}
fn mem<T: bytemuck::Pod>(d: &SimDevice, x: &[T]) -> SimMem {
    let m = d.alloc(std::mem::size_of_val(x)).expect("alloc");
    m.write(0, x);
    m
}
fn get<T: bytemuck::Pod + Default + Clone>(m: &SimMem, n: usize) -> Vec<T> {
    let mut v = vec![T::default(); n];
    m.read(0, &mut v);
    v
}
fn p(m: &SimMem) -> KArg {
    KArg::Ptr(m.addr())
}
/// Runs a selftest kernel; the error message if it failed.
fn run(d: &SimDevice, k: &'static str, dm: LaunchDims, args: &[KArg]) -> Result<(), String> {
    // SAFETY: every test passes buffers that cover what its kernel touches
    // (or, in the error tests, a launch the layer must refuse first)
    unsafe { d.launch(k, dm, args) }.map_err(|e| e.to_string())
}

#[test]
fn every_entry_point_and_planted_copy_is_in_the_layer() {
    let ks = kernels();
    let names: BTreeSet<&str> = ks.iter().map(|k| k.name.as_str()).collect();
    let shipped: BTreeSet<&str> = names.iter().copied().filter(|n| !n.starts_with("planted:") && !n.starts_with("selftest_")).collect();
    let named: BTreeSet<&str> = ENTRY_POINTS.iter().map(|(_, n)| *n).collect();
    assert_eq!(shipped, named, "the kernels of cu/*.cu in the CPU layer vs the entry points the launchers name");
    for plant in Plant::ALL {
        let fam: Vec<&str> = ENTRY_POINTS.iter().filter(|(f, _)| *f == plant.family()).map(|(_, n)| *n).collect();
        for n in fam {
            assert!(names.contains(format!("planted:{}:{n}", plant.tag()).as_str()), "{plant:?}: no planted copy of {n}");
        }
    }
    // parameters are read from the C signatures: rmsnorm_fwd_bf16(bf16*, float*, const bf16*, const bf16*, int, int, float)
    let r = ks.iter().find(|k| k.name == "rmsnorm_fwd_bf16").expect("rmsnorm_fwd_bf16");
    assert_eq!(r.args, vec![(1, 8), (1, 8), (1, 8), (1, 8), (2, 4), (2, 4), (3, 4)]);
    assert_eq!(r.max_threads, 256);
    assert_eq!(ks.iter().find(|k| k.name == "attention_fwd_mma_d64_bf16").expect("mma").max_threads, 128);
}

#[test]
fn launches_that_do_not_match_the_kernel_are_refused() {
    let d = dev();
    let out = d.alloc(64 * 4).expect("alloc");
    // wrong number of arguments
    let e = run(&d, "selftest_bounded", dims(1, 32), &[p(&out), KArg::I32(1)]).unwrap_err();
    assert!(e.contains("takes 1 arguments, the launch passes 2"), "{e}");
    // an int where the kernel takes a pointer
    let e = run(&d, "selftest_bounded", dims(1, 32), &[KArg::I32(0)]).unwrap_err();
    assert!(e.contains("takes a 8-byte pointer, the launch passes a 4-byte integer"), "{e}");
    // more threads than __launch_bounds__(64)
    let e = run(&d, "selftest_bounded", dims(1, 128), &[p(&out)]).unwrap_err();
    assert!(e.contains("__launch_bounds__(64)"), "{e}");
    // CUDA's limits
    assert!(run(&d, "selftest_bounded", dims(1, 0), &[p(&out)]).is_err());
    let e = run(&d, "selftest_bounded", LaunchDims { grid: (1, 70000, 1), block: 32, smem: 0 }, &[p(&out)]).unwrap_err();
    assert!(e.contains("exceeds the CUDA limits"), "{e}");
    let e = run(&d, "selftest_bounded", LaunchDims { grid: (1, 1, 1), block: 32, smem: 49 * 1024 }, &[p(&out)]).unwrap_err();
    assert!(e.contains("dynamic shared memory"), "{e}");
    let e = run(&d, "no_such_kernel", dims(1, 32), &[p(&out)]).unwrap_err();
    assert!(e.contains("no kernel `no_such_kernel`"), "{e}");
    run(&d, "selftest_bounded", dims(1, 64), &[p(&out)]).expect("within the bound");
}

/// The source lane of `lane` for each shuffle, as the CUDA Programming
/// Guide describes them (B.22, "Warp Shuffle Functions"); None: the caller's own value.
fn shfl_src(mode: i32, lane: i32, b: i32, width: i32) -> i32 {
    let seg = (lane / width) * width;
    match mode {
        // srcLane modulo width, within the caller's subsection
        0 => seg + b.rem_euclid(width),
        // lanes below delta (within the subsection) keep their value
        1 => {
            if lane - seg >= b {
                lane - b
            } else {
                lane
            }
        }
        // lanes whose source would pass the subsection's end keep theirs
        2 => {
            if lane - seg + b < width {
                lane + b
            } else {
                lane
            }
        }
        // may read earlier groups, not later ones
        _ => {
            let s = lane ^ b;
            if s >= seg + width {
                lane
            } else {
                s
            }
        }
    }
}

#[test]
fn shuffles_follow_cuda_semantics_for_every_mode_width_and_mask() {
    let d = dev();
    let n = 64; // two warps: each behaves alone
    let mut seed = 12345u64;
    let mut rnd = |m: i32| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) % m as u64) as i32
    };
    let mut checked = 0;
    for mode in 0..4 {
        for width in [32, 16, 8, 4, 2, 1] {
            for mask in [0xffff_ffffu32, 0x0000_ffff] {
                if mask != 0xffff_ffff && width > 16 {
                    continue; // sources must stay inside the mask
                }
                let b: Vec<i32> = (0..n)
                    .map(|_| match mode {
                        0 => rnd(64) - 16, // any lane number, negative too: taken modulo width
                        3 => rnd(width),   // a lane mask inside the subsection, or an earlier one
                        _ => rnd(width + 1),
                    })
                    .collect();
                let (out, out64) = (d.alloc(n * 4).expect("a"), d.alloc(n * 8).expect("a"));
                let bm = mem(&d, &b);
                run(&d, "selftest_shfl", dims(1, n as u32), &[p(&out), p(&out64), p(&bm), KArg::I32(mode), KArg::I32(width), KArg::I32(mask as i32)])
                    .unwrap_or_else(|e| panic!("mode {mode} width {width} mask {mask:08x}: {e}"));
                let (o, o64) = (get::<f32>(&out, n), get::<f64>(&out64, n));
                for t in 0..n as i32 {
                    let lane = t % 32;
                    if mask >> lane & 1 == 0 {
                        assert_eq!(o[t as usize], -1.0);
                        continue;
                    }
                    let src = (t / 32) * 32 + shfl_src(mode, lane, b[t as usize], width);
                    assert_eq!(o[t as usize], (src * 10 + 1) as f32, "mode {mode} width {width} mask {mask:08x} thread {t} b {}", b[t as usize]);
                    assert_eq!(o64[t as usize], 1e10 + src as f64, "f64: mode {mode} width {width} thread {t}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 2000);
}

#[test]
fn votes_and_barrier_counts() {
    let d = dev();
    let pred: Vec<i32> = (0..64).map(|i| ((i * 7) % 5 == 0) as i32).collect();
    for mask in [0xffff_ffffu32, 0x00ff_00ff] {
        let (bal, any, all) = (d.alloc(256).expect("a"), d.alloc(256).expect("a"), d.alloc(256).expect("a"));
        let pm = mem(&d, &pred);
        run(&d, "selftest_vote", dims(1, 64), &[p(&bal), p(&any), p(&all), p(&pm), KArg::I32(mask as i32)]).expect("vote");
        let (bal, any, all) = (get::<u32>(&bal, 64), get::<i32>(&any, 64), get::<i32>(&all, 64));
        for t in 0..64 {
            if mask >> (t % 32) & 1 == 0 {
                continue;
            }
            let w = t / 32;
            let want: u32 = (0..32).filter(|&l| mask >> l & 1 == 1 && pred[w * 32 + l] != 0).map(|l| 1u32 << l).sum();
            assert_eq!(bal[t], want, "ballot thread {t}");
            assert_eq!(any[t], (want != 0) as i32);
            assert_eq!(all[t], (want == mask) as i32);
        }
    }
    // __syncthreads_count / _and / _or per block of 96
    let pred: Vec<i32> = (0..3 * 96).map(|i| (i < 96 || (96..192).contains(&i) && i % 3 == 0) as i32).collect();
    let pm = mem(&d, &pred);
    let (c, a, o) = (d.alloc(12).expect("a"), d.alloc(12).expect("a"), d.alloc(12).expect("a"));
    run(&d, "selftest_bar_count", dims(3, 96), &[p(&c), p(&a), p(&o), p(&pm)]).expect("bar");
    assert_eq!(get::<i32>(&c, 3), vec![96, 32, 0]);
    assert_eq!(get::<i32>(&a, 3), vec![1, 0, 0]);
    assert_eq!(get::<i32>(&o, 3), vec![1, 1, 0]);
}

#[test]
fn shared_memory_needs_its_barrier_and_the_race_mode_catches_a_missing_one() {
    let d = dev();
    let (blocks, n) = (4usize, 128usize);
    let input: Vec<f32> = (0..blocks * n).map(|i| i as f32).collect();
    let want: Vec<f32> = (0..blocks * n).map(|i| ((i / n) * n + n - 1 - i % n) as f32).collect();
    let im = mem(&d, &input);
    for sched in [Schedule::RoundRobin, Schedule::LowestFirst, Schedule::HighestFirst, Schedule::Random(7)] {
        d.set_config(SimConfig { schedule: sched, ..SimConfig::default() });
        let out = d.alloc(blocks * n * 4).expect("a");
        run(&d, "selftest_smem_reverse", dims(blocks as u32, n as u32), &[p(&out), p(&im), KArg::I32(1)]).expect("with barrier");
        assert_eq!(get::<f32>(&out, blocks * n), want, "{sched:?}");
    }
    // without the barrier, thread i reads sh[n-1-i] before thread n-1-i wrote it
    // in thread order: wrong under the default schedule
    d.set_config(SimConfig::default());
    let out = d.alloc(blocks * n * 4).expect("a");
    run(&d, "selftest_smem_reverse", dims(blocks as u32, n as u32), &[p(&out), p(&im), KArg::I32(0)]).expect("runs");
    assert_ne!(get::<f32>(&out, blocks * n), want);
    // and the race mode reports it as a race (the schedules disagree)
    d.set_config(SimConfig { race: true, ..SimConfig::default() });
    let e = run(&d, "selftest_smem_reverse", dims(blocks as u32, n as u32), &[p(&out), p(&im), KArg::I32(0)]).unwrap_err();
    assert!(e.contains("a race: the result depends on the thread schedule"), "{e}");
    // with the barrier every schedule agrees
    run(&d, "selftest_smem_reverse", dims(blocks as u32, n as u32), &[p(&out), p(&im), KArg::I32(1)]).expect("race-free");
}

#[test]
fn dynamic_shared_memory_is_poisoned_then_shared() {
    let d = dev();
    let n = 96usize;
    let (first, then) = (d.alloc(n * 4).expect("a"), d.alloc(n * 4).expect("a"));
    let dm = LaunchDims { grid: (2, 1, 1), block: n as u32, smem: (n * 4) as u32 };
    run(&d, "selftest_dyn_smem", dm, &[p(&first), p(&then)]).expect("dyn");
    assert!(get::<u32>(&first, n).iter().all(|&w| w == 0xffff_ffff), "dynamic shared memory starts as 0xff bytes (NaN)");
    assert_eq!(get::<u32>(&then, n), (0..n as u32).map(|i| 1000 + n as u32 - 1 - i).collect::<Vec<_>>());
}

#[test]
fn atomics_add_up_across_concurrent_blocks() {
    let d = SimDevice::new(SimConfig { workers: 2, ..SimConfig::default() });
    let (c, f, m) = (d.alloc(4).expect("a"), d.alloc(4).expect("a"), mem(&d, &[i32::MIN]));
    let (blocks, n) = (37u32, 96u32);
    run(&d, "selftest_atomics", dims(blocks, n), &[p(&c), p(&f), p(&m)]).expect("atomics");
    let total = (blocks * n) as i32;
    assert_eq!(get::<i32>(&c, 1)[0], total);
    assert_eq!(get::<f32>(&f, 1)[0], total as f32 * 0.5); // sums of 0.5 are exact here
    assert_eq!(get::<i32>(&m, 1)[0], (0..total).map(|t| (t * 7919) % 10007).max().unwrap_or(0));
}

fn bf(x: f32) -> bf16 {
    bf16::from_f32(x)
}

#[test]
fn mma_m16n8k16_matches_a_plain_matrix_product() {
    let d = dev();
    let mut s = 99u64;
    let mut r = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    };
    let a: Vec<bf16> = (0..16 * 16).map(|_| bf(r())).collect();
    let b: Vec<bf16> = (0..16 * 8).map(|_| bf(r())).collect();
    let c: Vec<f32> = (0..16 * 8).map(|_| r()).collect();
    let (am, bm, cm, dm) = (mem(&d, &a), mem(&d, &b), mem(&d, &c), d.alloc(16 * 8 * 4).expect("a"));
    run(&d, "selftest_mma", dims(1, 32), &[p(&dm), p(&am), p(&bm), p(&cm)]).expect("mma");
    let got = get::<f32>(&dm, 128);
    for i in 0..16 {
        for j in 0..8 {
            // the layer sums the exact bf16 products in f64 and rounds once
            let want = ((0..16).map(|k| a[i * 16 + k].to_f64() * b[k * 8 + j].to_f64()).sum::<f64>() + c[i * 8 + j] as f64) as f32;
            assert_eq!(got[i * 8 + j], want, "D[{i}][{j}]");
        }
    }
}

#[test]
fn ldmatrix_x4_gives_the_mma_a_fragment_and_trans_its_transpose() {
    let d = dev();
    let m: Vec<bf16> = (0..256).map(|i| bf(i as f32)).collect(); // element value = its index
    let mm = mem(&d, &m);
    let (plain, trans, frag) = (d.alloc(512).expect("a"), d.alloc(512).expect("a"), d.alloc(512).expect("a"));
    run(&d, "selftest_ldmatrix", dims(1, 32), &[p(&plain), p(&trans), p(&frag), p(&mm)]).expect("ldmatrix");
    let (pl, tr, fr) = (get::<u32>(&plain, 128), get::<u32>(&trans, 128), get::<u32>(&frag, 128));
    assert_eq!(pl, fr, "ldmatrix.x4 of the four 8x8 quadrants must equal the A fragment");
    let word = |r: usize, c: usize| m[r * 16 + c].to_bits() as u32;
    for l in 0..32 {
        for q in 0..4 {
            // quadrant q: lanes 8q..8q+7 gave rows (q % 2) * 8 .. at column (q / 2) * 8
            let (r0, c0) = ((q % 2) * 8, (q / 2) * 8);
            let want = word(r0 + 2 * (l % 4), c0 + l / 4) | word(r0 + 2 * (l % 4) + 1, c0 + l / 4) << 16;
            assert_eq!(tr[l * 4 + q], want, "trans lane {l} matrix {q}");
        }
    }
}

#[test]
fn cp_async_lands_at_its_wait_group_with_the_zero_fill() {
    let d = dev();
    let input: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 * 0.37).collect();
    let im = mem(&d, &input);
    // the bytes each chunk should hold: chunk 5 keeps its first 6 bytes, chunk 13 none
    let src: Vec<u8> = bytemuck::cast_slice(&input).to_vec();
    let mut want = src.clone();
    want[5 * 16 + 6..6 * 16].fill(0);
    want[13 * 16..14 * 16].fill(0);
    for sched in [Schedule::RoundRobin, Schedule::HighestFirst, Schedule::Random(9)] {
        d.set_config(SimConfig { schedule: sched, ..SimConfig::default() });
        let out = d.alloc(64 * 4).expect("a");
        run(&d, "selftest_cp_async", dims(1, 8), &[p(&out), p(&im), KArg::I32(0)]).expect("cp.async");
        assert_eq!(get::<u8>(&out, 256), want, "{sched:?}");
        // without the wait for group 1 its destination holds no data yet (0xff: NaN)
        let out = d.alloc(64 * 4).expect("a");
        run(&d, "selftest_cp_async", dims(1, 8), &[p(&out), p(&im), KArg::I32(1)]).expect("runs");
        let got = get::<u8>(&out, 256);
        assert_eq!(got[..128], want[..128], "group 0 waited for: {sched:?}");
        assert!(got[128..].iter().all(|&b| b == 0xff), "group 1 read before it landed must be the poison: {sched:?}");
    }
}

#[test]
fn the_schedules_interleave_threads_differently() {
    let orders: Vec<Vec<u32>> = [Schedule::RoundRobin, Schedule::LowestFirst, Schedule::HighestFirst, Schedule::Random(1), Schedule::Random(2)]
        .iter()
        .map(|&s| {
            let d = SimDevice::new(SimConfig { schedule: s, ..SimConfig::default() });
            let (log, ctr) = (d.alloc(2 * 64 * 4).expect("a"), d.alloc(4).expect("a"));
            run(&d, "selftest_order", dims(1, 64), &[p(&log), p(&ctr)]).expect("order");
            get::<u32>(&log, 128)
        })
        .collect();
    let fwd: Vec<u32> = (0..64).chain(0..64).collect();
    assert_eq!(orders[0], fwd, "round robin: thread order");
    assert_eq!(orders[1], fwd, "lowest first with no collective between barriers: thread order");
    let rev: Vec<u32> = (0..64).rev().chain((0..64).rev()).collect();
    assert_eq!(orders[2], rev, "highest first");
    assert_ne!(orders[3], orders[0]);
    assert_ne!(orders[3], orders[4]);
    for o in &orders {
        let mut a = o[..64].to_vec();
        a.sort();
        assert_eq!(a, (0..64).collect::<Vec<u32>>(), "every thread passes each barrier once");
    }
}

#[test]
fn the_layer_reports_what_would_hang_or_be_undefined_on_a_gpu() {
    let d = dev();
    let out = d.alloc(128 * 4).expect("a");
    let cases: [(&'static str, u32, &str); 5] = [
        ("selftest_err_divergent_barrier", 64, "divergent __syncthreads"),
        ("selftest_err_deadlock", 64, "deadlock in block (0,0,0)"),
        ("selftest_err_exited_lane", 32, "lane 5"),
        ("selftest_err_outside_mask", 32, "which is not in the mask 0000ffff"),
        ("selftest_err_split_shuffle", 32, "must meet at the same intrinsic"),
    ];
    for (k, n, want) in cases {
        for sched in [Schedule::RoundRobin, Schedule::HighestFirst, Schedule::Random(3)] {
            d.set_config(SimConfig { schedule: sched, ..SimConfig::default() });
            let e = run(&d, k, dims(1, n), &[p(&out)]).expect_err(k);
            assert!(e.contains(want), "{k} {sched:?}: {e}");
        }
    }
    // the deadlock report says where each thread waits
    d.set_config(SimConfig::default());
    let e = run(&d, "selftest_err_deadlock", dims(1, 64), &[p(&out)]).expect_err("deadlock");
    assert!(e.contains("threads 1-63 wait at __syncthreads") && e.contains("threads 0 wait at __shfl_sync"), "{e}");
}

#[test]
fn a_write_past_a_buffer_fails_the_launch() {
    let d = dev();
    let n = 64usize;
    let input: Vec<f32> = vec![1.0; n];
    let im = mem(&d, &input);
    let short = d.alloc((n - 1) * 4).expect("a"); // one element short
    let e = run(&d, "selftest_smem_reverse", dims(1, n as u32), &[p(&short), p(&im), KArg::I32(1)]).unwrap_err();
    assert!(e.contains("wrote past the end of the 252-byte allocation"), "{e}");
}
