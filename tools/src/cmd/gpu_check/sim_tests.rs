//! gpu-check on the CPU layer as cargo tests (feature `cuda-sim`): every
//! kernel row passes with every CUDA kernel run from its own `.cu` source on
//! the CPU, every kernel the launchers name is launched, and a bug planted
//! in a copy of each of five kernels (an index, a barrier, a fragment
//! layout, a missing cp.async wait, a sign) makes its rows fail.

use super::checks::{Checker, Shapes, DECODE_IMPLS};
use super::compare::Row;
use super::sim_backend::SimBackend;
use llama2_runtime::kernels::attention::AttnShape;
use llama2_runtime::kernels::cuda::sim::{Plant, Schedule, SimConfig};
use llama2_runtime::kernels::cuda::ENTRY_POINTS;
use llama2_runtime::{AttnImpl, CpuBackend, QkvShape};

/// The seed of gpu-check's default run.
const SEED: u64 = 20240520;

fn checker(cfg: SimConfig) -> Checker<SimBackend> {
    Checker::new(CpuBackend::new(0).expect("cpu"), SimBackend::new(cfg), SEED, Shapes::Sim)
}

fn failed(rows: &[Row]) -> Vec<&str> {
    rows.iter().filter(|r| !r.ok).map(|r| r.name.as_str()).collect()
}

#[test]
fn every_kernel_row_passes_on_the_cpu_layer() {
    let t0 = std::time::Instant::now();
    let c = super::run_sim(SEED, SimConfig::default(), None).expect("runs");
    let rows = c.rows();
    let bad: Vec<String> = rows.iter().filter(|r| !r.ok).map(|r| format!("{} {}", r.name, r.first_bad)).collect();
    assert!(bad.is_empty(), "{} of {} rows failed:\n{}", bad.len(), rows.len(), bad.join("\n"));
    // every kernel the launchers name ran, through its launcher
    let counts = c.gpu().device().launch_counts();
    let missing: Vec<&str> = ENTRY_POINTS.iter().map(|(_, n)| *n).filter(|n| !counts.contains_key(*n)).collect();
    assert!(missing.is_empty(), "kernels never launched by the simulated check: {missing:?}");
    // and the rows cover both attention versions, both directions, GQA, ragged and decode shapes
    for want in [
        "fwd Simple",
        "fwd Mma",
        "bwd Simple",
        "bwd Mma",
        "fwd V3",
        "bwd V3",
        "ragged b=3 t=37 lens=[37, 20, 6] hd=128 h=8 kv=2 bwd V3",
        "kv=1",
        "kv=8",
        "kv=16",
        "t=97",
        "t=1 ",
        "hd=64",
        "hd=128",
        "decode b=2 tq=1 tkv=1000",
        "tq=37 tkv=100",
        "tkv=2000 cap=2048 hd=64 h=16 kv=8 SplitK: out",
        "tq=3 tkv=700 cap=768 hd=128 h=32 kv=4 SplitK: lse",
        "pos0=[450, 127, 0] len=[2, 2, 1] cap=512 hd=128 SplitK: out",
        "add_rmsnorm_fwd n=97 c=4096: rstd",
        "= the device's add + rmsnorm_fwd (bit-exact)",
        "qkv b=3 t=20 c=256 hd=128 h=8 kv=2 pos0=0 bwd: dw[k] (+=)",
        "kv=1 pos0=0 fwd: k = the device's rope on its product (bit-exact)",
        "hd=6 h=3 kv=1 pos0=2 bwd: packed gradient = the device's rope_bwd (bit-exact)",
        "qkv b=2 t=1 c=256 hd=128 h=8 kv=2 pos0=50 invariant fwd: q",
        "pos0=[0, 5, 0] len=[24, 14, 3] bwd: dx",
        "pos0=[40, 3, 0] len=[1, 1, 0] invariant fwd: k = the device's rope on its product (bit-exact)",
        "qkv b=2 t=37 c=256 hd=64 h=4 kv=4 pos0=0 fwd: a short scratch takes the unfused ops",
        "mlp_in n=74 i=352 c=256 fwd: a short scratch takes the unfused ops",
        "mlp_in n=74 i=352 c=256 fwd: h = the device's product / swiglu_fwd (bit-exact)",
        "mlp_in n=37 i=100 c=64 bwd: packed gradient = the device's swiglu_bwd (bit-exact)",
    ] {
        assert!(rows.iter().any(|r| r.name.contains(want)), "no row with `{want}`");
    }
    let worst = rows.iter().max_by(|a, b| a.used.total_cmp(&b.used)).expect("rows");
    println!("{} rows in {:.1} s; most tolerance used: {:.1}% ({})", rows.len(), t0.elapsed().as_secs_f64(), 100.0 * worst.used, worst.name);
}

#[test]
fn a_planted_index_bug_fails_the_gqa_rows() {
    // v1 forward reads KV head h % n_kv_head: right only when n_kv_head == n_head
    let mut c = checker(SimConfig { plant: Some(Plant::GqaIndex), ..SimConfig::default() });
    c.guard("attention", |s| s.attention(AttnShape::causal(3, 97, 16, 16, 64)));
    assert!(failed(c.rows()).is_empty(), "no GQA, no visible bug: {:?}", failed(c.rows()));
    let before = c.rows().len();
    c.guard("attention", |s| s.attention(AttnShape::causal(3, 97, 16, 8, 64)));
    let bad = failed(&c.rows()[before..]);
    assert!(bad.contains(&"attention b=3 t=97 hd=64 h=16 kv=8 fwd Simple: out"), "{bad:?}");
    assert!(bad.iter().all(|n| n.contains("fwd Simple")), "only the planted kernel's rows fail: {bad:?}");
    assert!(c.gpu().device().launch_counts().contains_key("planted:gqa_index:attention_fwd_d64_bf16"));
}

#[test]
fn a_planted_missing_barrier_fails_in_race_mode_and_under_a_schedule_that_exposes_it() {
    // dlogits overwrite x[y] with no barrier after every thread read it: thread
    // 0, which writes the loss, reads x[y] first in thread order, so the
    // default schedule does not show it ...
    let mut c = checker(SimConfig { plant: Some(Plant::CeBarrier), ..SimConfig::default() });
    c.guard("cross_entropy", |s| s.cross_entropy(97, 97));
    assert!(failed(c.rows()).is_empty(), "{:?}", failed(c.rows()));
    // ... the race mode does: the schedules disagree (a launch error, so every mode's row fails)
    let mut c = checker(SimConfig { plant: Some(Plant::CeBarrier), race: true, ..SimConfig::default() });
    c.guard("cross_entropy", |s| s.cross_entropy(97, 97));
    let rows = c.rows();
    assert!(rows.iter().any(|r| !r.ok && r.first_bad.contains("a race: the result depends on the thread schedule")), "{:?}", failed(rows));
    // ... and so does the check itself once the last warp runs ahead: wrong losses
    let mut c = checker(SimConfig { plant: Some(Plant::CeBarrier), schedule: Schedule::HighestFirst, ..SimConfig::default() });
    c.guard("cross_entropy", |s| s.cross_entropy(97, 97));
    assert!(failed(c.rows()).contains(&"cross_entropy n=97 v=97 uniform: losses"), "{:?}", failed(c.rows()));
    // the shipped kernel passes in race mode
    let mut c = checker(SimConfig { race: true, ..SimConfig::default() });
    c.guard("cross_entropy", |s| s.cross_entropy(97, 97));
    assert!(failed(c.rows()).is_empty(), "{:?}", failed(c.rows()));
}

#[test]
fn a_planted_fragment_layout_bug_fails_the_tensor_core_rows() {
    // P reused from two C fragments as the A operand of P·V with a1 and a2 swapped
    let mut c = checker(SimConfig { plant: Some(Plant::MmaFragment), ..SimConfig::default() });
    c.guard("attention", |s| s.attention(AttnShape::causal(3, 97, 16, 8, 128)));
    let bad = failed(c.rows());
    assert!(bad.contains(&"attention b=3 t=97 hd=128 h=16 kv=8 fwd Mma: out"), "{bad:?}");
    assert!(bad.iter().all(|n| n.contains("fwd Mma: out")), "only the planted kernel's output fails: {bad:?}");
}

#[test]
fn a_planted_missing_cp_async_wait_fails_the_v3_forward_rows() {
    // the v3 forward computes on a K/V stage whose cp.async copies have not
    // landed: on the layer their destination holds NaN until the wait
    let mut c = checker(SimConfig { plant: Some(Plant::CpAsyncWait), ..SimConfig::default() });
    c.guard("attention", |s| s.attention(AttnShape::causal(2, 97, 4, 2, 64)));
    let bad = failed(c.rows());
    assert!(bad.contains(&"attention b=2 t=97 hd=64 h=4 kv=2 fwd V3: out"), "{bad:?}");
    assert!(bad.iter().all(|n| n.contains("fwd V3")), "only the planted kernel's rows fail: {bad:?}");
}

#[test]
fn a_planted_sin_sign_bug_fails_the_fused_qkv_rows() {
    // the fused split and pack rotate by the negated angle: q and k (and the
    // gradients through them) are wrong, v and its weight gradient are not
    let mut c = checker(SimConfig { plant: Some(Plant::QkvSinSign), ..SimConfig::default() });
    let s = QkvShape { b: 2, t: 9, c: 64, n_head: 4, n_kv_head: 2, hd: 64, pos0: 3 };
    c.guard("qkv", |s2| s2.qkv(s, None, false, true, false));
    let bad = failed(c.rows());
    let tag = "qkv b=2 t=9 c=64 hd=64 h=4 kv=2 pos0=3";
    for want in ["fwd: q", "fwd: k", "fwd: q = the device's rope on its product (bit-exact)", "bwd: dx", "bwd: dw[q] (+=)", "bwd: dw[k] (+=)"] {
        assert!(bad.contains(&format!("{tag} {want}").as_str()), "`{want}` passed: {bad:?}");
    }
    assert!(bad.iter().all(|n| !n.contains(": v") && !n.contains("dw[v]")), "the v rows do not rotate: {bad:?}");
    assert!(c.gpu().device().launch_counts().contains_key("planted:qkv_sin_sign:qkv_split_rope_bf16"));
}

#[test]
fn the_v3_backward_sums_dq_in_the_same_order_under_every_schedule() {
    // race mode on the v3 backward at a shape with several key tiles per
    // query tile (t = 150: 3 key tiles, 5 query tiles) and GQA: the ordered
    // dq_acc adds (blocks waiting on each other's counters) leave the same
    // bytes whatever order the blocks and threads run in
    let mut c = checker(SimConfig { race: true, workers: 2, ..SimConfig::default() });
    c.guard("attention", |s| s.attention(AttnShape::causal(1, 150, 4, 2, 64)));
    let bad: Vec<String> = c.rows().iter().filter(|r| !r.ok).map(|r| format!("{} {}", r.name, r.first_bad)).collect();
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn the_shipped_kernels_do_not_depend_on_the_schedule() {
    // race mode on the kernels that share memory or shuffle, at shapes that
    // take every path (several K/V tiles, GQA, decode, strided rmsnorm rows):
    // every launch runs under five schedules and must leave the same bytes
    let mut c = checker(SimConfig { race: true, ..SimConfig::default() });
    c.guard("rmsnorm", |s| s.rmsnorm(600, 256));
    c.guard("cross_entropy", |s| s.cross_entropy(9, 1000));
    c.guard("attention", |s| s.attention(AttnShape::causal(1, 70, 4, 2, 64)));
    c.guard("attention decode", |s| s.attention_decode(AttnShape { b: 1, tq: 3, tkv: 70, cap: 80, n_head: 4, n_kv_head: 2, hd: 128 }, &DECODE_IMPLS));
    // split-K over 3 chunks (the combine reads what three blocks wrote), 2 rows per KV head
    c.guard("attention decode", |s| s.attention_decode(AttnShape { b: 1, tq: 1, tkv: 300, cap: 320, n_head: 4, n_kv_head: 2, hd: 64 }, &[AttnImpl::SplitK]));
    c.guard("add_rmsnorm", |s| s.add_rmsnorm(70, 512));
    let rows = c.rows();
    assert_eq!(rows.len(), 43, "rmsnorm 6, cross-entropy 6, attention 15 (v1, v2, v3), decode 8 (and split-K), split-K 2, add_rmsnorm 6 (3 + 3 bit-exact)");
    let bad: Vec<String> = rows.iter().filter(|r| !r.ok).map(|r| format!("{} {}", r.name, r.first_bad)).collect();
    assert!(bad.is_empty(), "{bad:?}");
}
