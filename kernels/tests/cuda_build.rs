//! Checks of the CUDA build that need nvcc but no GPU (feature `cuda`):
//! every entry point the launchers name is in the embedded images, ptxas
//! reports no spills, and the launchers reject bad arguments before any
//! CUDA call.
#![cfg(feature = "cuda")]

use llama2_kernels::attention::AttnShape;
use llama2_kernels::cuda::report::{fatbin_elf_entries, parse_ptxas};
use llama2_kernels::cuda::*;
use llama2_kernels::rope::RopeShape;
use llama2_kernels::KernelError;

/// Number of SASS targets in every fatbin: sm_90a and sm_80.
const SASS_TARGETS: usize = 2;

#[test]
fn every_entry_point_is_in_the_embedded_images() {
    for f in Family::ALL {
        let images = fatbin_elf_entries(fatbin(f));
        assert_eq!(images.len(), SASS_TARGETS, "{}: expected {SASS_TARGETS} cubins (sm_90a, sm_80) in the fatbin", f.name());
        let ptx = String::from_utf8_lossy(fatbin(f));
        let wanted: Vec<&str> = ENTRY_POINTS.iter().filter(|(fam, _)| *fam == f).map(|(_, n)| *n).collect();
        assert!(!wanted.is_empty(), "{}: no launcher names an entry of this family", f.name());
        for name in &wanted {
            for (i, syms) in images.iter().enumerate() {
                assert!(syms.iter().any(|s| s == name), "{}: `{name}` missing from cubin {i} (has {syms:?})", f.name());
            }
            // the compute_80 PTX of the same fatbin (JIT path for newer GPUs)
            assert!(ptx.contains(&format!(".entry {name}(")), "{}: `{name}` missing from the PTX", f.name());
        }
    }
}

#[test]
fn an_unknown_name_is_not_found() {
    // the symbol check can fail: a misspelt name is absent from the image
    let images = fatbin_elf_entries(fatbin(Family::Rmsnorm));
    assert!(images.iter().all(|syms| !syms.iter().any(|s| s == "rmsnorm_fwd_bf61")));
    assert!(images.iter().all(|syms| syms.iter().any(|s| s == rmsnorm::FWD)));
}

#[test]
fn kept_cubins_match_the_embedded_entries() {
    for f in Family::ALL {
        let dir = keep_dir(f);
        let cubins: Vec<_> =
            std::fs::read_dir(&dir).expect("keep dir").flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "cubin")).collect();
        assert_eq!(cubins.len(), SASS_TARGETS, "{}: {cubins:?}", f.name());
        for c in cubins {
            let bytes = std::fs::read(&c).expect("cubin");
            let syms = fatbin_elf_entries(&bytes);
            assert_eq!(syms.len(), 1, "{}", c.display());
            for (_, name) in ENTRY_POINTS.iter().filter(|(fam, _)| *fam == f) {
                assert!(syms[0].iter().any(|s| s == name), "{}: {name}", c.display());
            }
        }
    }
}

#[test]
fn ptxas_reports_no_spills() {
    let mut seen = 0;
    for f in Family::ALL {
        let res = parse_ptxas(ptxas_report(f));
        let entries = ENTRY_POINTS.iter().filter(|(fam, _)| *fam == f).count();
        // one report per kernel per SASS target
        assert_eq!(res.len(), entries * SASS_TARGETS, "{}: {res:?}", f.name());
        for r in res {
            assert!(r.registers > 0 && r.registers <= 255, "{r:?}");
            assert_eq!((r.spill_stores, r.spill_loads), (0, 0), "register spills in {r:?}");
            assert_eq!(r.stack_frame, 0, "local-memory stack frame in {r:?}");
            seen += 1;
        }
    }
    assert_eq!(seen, ENTRY_POINTS.len() * SASS_TARGETS);
}

#[test]
fn ptxas_parser_reads_spills() {
    let text = "ptxas info    : Compiling entry function 'k' for 'sm_90a'\nptxas info    : Function properties for k\n    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads\nptxas info    : Used 255 registers, used 1 barriers, 4096 bytes smem\n";
    let r = parse_ptxas(text);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].registers, r[0].stack_frame, r[0].spill_stores, r[0].spill_loads, r[0].smem), (255, 16, 12, 8, 4096));
    assert_eq!(r[0].target, "sm_90a");
}

// ---- launchers reject bad arguments before any CUDA call ----------------

fn p<T: Elem>(addr: u64, len: usize) -> DPtr<T> {
    DPtr::new(addr, len)
}
const A: u64 = 0x7f00_0000_0000; // a 256-byte aligned fake device address

fn is_shape(e: KernelError) -> bool {
    matches!(e, KernelError::Shape { .. })
}
fn is_align(e: KernelError) -> bool {
    matches!(e, KernelError::Align { .. })
}
fn is_arg(e: KernelError) -> bool {
    matches!(e, KernelError::Arg { .. })
}

/// A forward's parameters with every buffer at `A` and the given lengths.
fn fwd(s: AttnShape, ql: usize, ll: usize, kl: usize) -> attention::AttnFwdParams {
    attention::AttnFwdParams { out: p(A, ql), lse: p(A, ll), q: p(A, ql), k: p(A, kl), v: p(A, kl), shape: s }
}

#[test]
fn attention_rejects_bad_arguments() {
    let s = AttnShape::causal(2, 97, 8, 2, 128);
    let ql = 2 * 97 * 8 * 128;
    let kl = 2 * 97 * 2 * 128;
    let ok = attention::check_fwd(&fwd(s, ql, 2 * 8 * 97, kl)).expect("valid shape");
    assert_eq!(ok.1.grid, (97usize.div_ceil(attention::WARPS) as u32, 8, 2));
    // unsupported head dim
    let s96 = AttnShape::causal(2, 97, 8, 2, 96);
    assert!(is_arg(attention::check_fwd(&fwd(s96, ql, 2 * 8 * 97, kl)).unwrap_err()));
    // n_head not a multiple of n_kv_head
    let s3 = AttnShape::causal(2, 97, 8, 3, 128);
    assert!(is_arg(attention::check_fwd(&fwd(s3, ql, 2 * 8 * 97, kl * 2)).unwrap_err()));
    // k too short
    let short = attention::AttnFwdParams { k: p(A, kl - 1), ..fwd(s, ql, 2 * 8 * 97, kl) };
    assert!(is_shape(attention::check_fwd(&short).unwrap_err()));
    // misaligned q (an 8-byte offset)
    let mis = attention::AttnFwdParams { q: p(A + 8, ql), ..fwd(s, ql, 2 * 8 * 97, kl) };
    assert!(is_align(attention::check_fwd(&mis).unwrap_err()));
    // backward needs the training shape
    let dec = AttnShape { b: 1, tq: 1, tkv: 5, cap: 8, n_head: 8, n_kv_head: 2, hd: 64 };
    let bwd = attention::AttnBwdParams {
        dq: p(A, 512),
        dk: p(A, 1024),
        dv: p(A, 1024),
        delta: p(A, 8),
        dout: p(A, 512),
        q: p(A, 512),
        k: p(A, 1024),
        v: p(A, 1024),
        out: p(A, 512),
        lse: p(A, 8),
        shape: dec,
    };
    assert!(is_arg(attention::check_bwd(&bwd).unwrap_err()));
    // the decode shape itself is fine for the forward
    attention::check_fwd(&fwd(dec, 512, 8, 8 * 2 * 64)).expect("decode shape");
    // tq > tkv is rejected
    let bad = AttnShape { b: 1, tq: 6, tkv: 5, cap: 8, n_head: 8, n_kv_head: 2, hd: 64 };
    assert!(is_arg(attention::check_fwd(&fwd(bad, 6 * 512, 48, 1024)).unwrap_err()));
}

#[test]
fn rmsnorm_rejects_bad_arguments() {
    let (n, c) = (97, 4096);
    let d = rmsnorm::check_fwd(p(A, n * c), p(A, n), p(A, n * c), p(A, c), n, c).expect("valid");
    assert_eq!(d.grid.0, 97);
    assert!(is_arg(rmsnorm::check_fwd(p(A, n * 100), p(A, n), p(A, n * 100), p(A, 100), n, 100).unwrap_err()), "c % 8");
    assert!(is_arg(rmsnorm::check_fwd(p(A, n * 16384), p(A, n), p(A, n * 16384), p(A, 16384), n, 16384).unwrap_err()), "c too wide");
    assert!(is_align(rmsnorm::check_fwd(p(A, n * c), p(A, n), p(A + 2, n * c), p(A, c), n, c).unwrap_err()));
    assert!(is_shape(rmsnorm::check_fwd(p(A, n * c), p(A, n - 1), p(A, n * c), p(A, c), n, c).unwrap_err()));
    let blocks = rmsnorm::bwd_blocks(n);
    let d = rmsnorm::check_bwd(p(A, n * c), p(A, blocks * c), p(A, n * c), p(A, n * c), p(A, c), p(A, n), n, c).expect("valid bwd");
    assert_eq!(d.smem as usize, c * 4);
    assert!(is_shape(rmsnorm::check_bwd(p(A, n * c), p(A, blocks * c - 1), p(A, n * c), p(A, n * c), p(A, c), p(A, n), n, c).unwrap_err()));
}

#[test]
fn other_launchers_reject_bad_arguments() {
    let rs = RopeShape { b: 2, t: 10, heads: 4, hd: 63, pos0: 0 };
    assert!(is_arg(rope::check(rope::FWD, p(A, 2 * 10 * 4 * 63), p(A, 1 << 16), rs).unwrap_err()));
    let rs = RopeShape { b: 2, t: 10, heads: 4, hd: 64, pos0: 5 };
    assert!(is_shape(rope::check(rope::FWD, p(A, 2 * 10 * 4 * 64), p(A, 14 * 64), rs).unwrap_err()), "table too short for pos0 + t");
    rope::check(rope::FWD, p(A, 2 * 10 * 4 * 64), p(A, 15 * 64), rs).expect("valid rope");
    // embedding rows must be whole 16-byte words
    assert!(is_arg(embedding::check_fwd(p(A, 10 * 12), p(A, 10), p(A, 100 * 12), 10, 100, 12).unwrap_err()));
    assert!(is_align(embedding::check_fwd(p(A, 10 * 16), p(A, 10), p(A + 4, 100 * 16), 10, 100, 16).unwrap_err()));
    // cross-entropy: per-row coefficients must cover the rows
    let e = cross_entropy::check(p(A, 4 * 50), p(A, 4), p(A, 4), cross_entropy::CeMode::PerRow(p(A, 3)), 4, 50).unwrap_err();
    assert!(is_shape(e));
    // kv_write beyond the cache
    assert!(is_arg(elementwise::check_kv_write::<Bf16>(p(A, 2 * 8 * 16), p(A, 2 * 4 * 16), 2, 4, 8, 16, 5).unwrap_err()));
    // adamw: step 0 has no bias correction
    let h = llama2_kernels::adamw::AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 0, grad_scale: 1.0 };
    assert!(is_arg(adamw::check(p(A, 8), p(A, 8), p(A, 8), p(A, 8), p(A, 8), 8, &h).unwrap_err()));
    // sum_squares partials
    let n = 1 << 20;
    let blocks = elementwise::sum_squares_blocks(n);
    assert!(is_shape(elementwise::check_sum_squares::<f32>(p(A, blocks - 1), p(A, n), n).unwrap_err()));
}

#[test]
fn fused_projection_launchers_reject_bad_arguments() {
    // QKV split/pack: 20 rows of 8 query and 2 KV heads of 64, at positions 5..15
    let s = rope::QkvRopeShape { b: 2, t: 10, n_head: 8, n_kv_head: 2, hd: 64, pos0: 5 };
    let n = s.rows();
    assert_eq!((s.q_dim(), s.kv_dim(), s.width()), (512, 128, 768));
    let ptrs = |pk: usize, q: usize, kv: usize| rope::QkvPtrs { packed: p(A, pk), q: p(A, q), k: p(A, kv), v: p(A, kv) };
    let ok = ptrs(n * 768, n * 512, n * 128);
    for k in [rope::QKV_SPLIT, rope::QKV_PACK_BWD] {
        let d = rope::check_qkv(k, &ok, p(A, 15 * 64), s, None).expect("valid");
        // 8 pairs a thread at hd 64: 20 rows x 12 heads x 32 pairs / 8 = 960 items, 4 blocks of 256
        assert_eq!((d.grid, d.block, d.smem), ((4, 1, 1), 256, 0));
        assert!(is_shape(rope::check_qkv(k, &ptrs(n * 768 - 1, n * 512, n * 128), p(A, 15 * 64), s, None).unwrap_err()), "packed short");
        assert!(is_shape(rope::check_qkv(k, &ptrs(n * 768, n * 512, n * 128 - 1), p(A, 15 * 64), s, None).unwrap_err()), "k, v short");
        assert!(is_shape(rope::check_qkv(k, &ok, p(A, 14 * 64), s, None).unwrap_err()), "table short of pos0 + t");
        let odd = rope::QkvRopeShape { hd: 63, ..s };
        assert!(is_arg(rope::check_qkv(k, &ok, p(A, 1 << 16), odd, None).unwrap_err()), "odd head dim");
    }
    // a head dim that is not a multiple of 16: one pair a thread (20 x 12 x 3 = 720 items, 3 blocks)
    let s6 = rope::QkvRopeShape { hd: 6, ..s };
    let d = rope::check_qkv(rope::QKV_SPLIT, &ptrs(n * 72, n * 48, n * 12), p(A, 15 * 6), s6, None).expect("hd 6");
    assert_eq!(d.grid, (3, 1, 1));
    // ragged: the table covers the host-checked max_pos; pos0 and len hold b entries
    let r = rope::RaggedPtrs { pos0: p(A, 2), len: p(A, 2) };
    rope::check_qkv(rope::QKV_SPLIT_RAGGED, &ok, p(A, 100 * 64), s, Some((r, 100))).expect("valid ragged");
    assert!(is_shape(rope::check_qkv(rope::QKV_SPLIT_RAGGED, &ok, p(A, 99 * 64), s, Some((r, 100))).unwrap_err()), "table short of max_pos");
    let r1 = rope::RaggedPtrs { pos0: p(A, 2), len: p(A, 1) };
    assert!(is_shape(rope::check_qkv(rope::QKV_PACK_BWD_RAGGED, &ok, p(A, 100 * 64), s, Some((r1, 100))).unwrap_err()), "len short of b");
    // gate/up split and pack: gu (n, 2i), the others (n, i); an element-wise grid over n·i
    let (n, i) = (20, 100);
    let parts = |g: usize| [("gate", p(A, g)), ("up", p(A, n * i)), ("h", p(A, n * i))];
    let d = swiglu::check_split(swiglu::SPLIT_FWD, p(A, 2 * n * i), parts(n * i), n, i).expect("valid");
    assert_eq!((d.grid, d.block), ((1, 1, 1), 256));
    assert!(is_shape(swiglu::check_split(swiglu::SPLIT_FWD, p(A, 2 * n * i - 1), parts(n * i), n, i).unwrap_err()), "gu short");
    assert!(is_shape(swiglu::check_split(swiglu::BWD_PACK, p(A, 2 * n * i), parts(n * i - 1), n, i).unwrap_err()), "a part short");
    let big = [("gate", p(A, 1 << 30)), ("up", p(A, 1 << 30)), ("h", p(A, 1 << 30))];
    assert!(is_arg(swiglu::check_split(swiglu::SPLIT_FWD, p(A, 1 << 31), big, 1, 1 << 30).unwrap_err()), "2i past the kernel's int");
}

#[test]
fn group_rows_builds_the_csr() {
    let (u, o, r) = embedding::group_rows(&[5, 2, 5, 7, 2, 5]);
    assert_eq!(u, vec![2, 5, 7]);
    assert_eq!(o, vec![0, 2, 5, 6]);
    assert_eq!(r, vec![1, 4, 0, 2, 5, 3]);
}

#[test]
fn tensor_core_attention_grids_cover_ragged_and_decode_shapes() {
    // 64 query rows per block of 4 warps: t = 97 needs 2 blocks, t = 1 one
    for (tq, tkv, blocks) in [(97usize, 97usize, 2u32), (1, 1000, 1), (64, 64, 1), (65, 130, 2), (4096, 4096, 64)] {
        let s = AttnShape { b: 3, tq, tkv, cap: tkv, n_head: 16, n_kv_head: 8, hd: 128 };
        let (ql, kl) = (3 * tq * 16 * 128, 3 * tkv * 8 * 128);
        let (name, d) = attention::check_fwd_mma(&fwd(s, ql, 3 * 16 * tq, kl)).expect("valid");
        assert_eq!(name, attention::FWD_MMA_D128);
        assert_eq!((d.grid, d.block, d.smem), ((blocks, 16, 3), 128, 0), "tq {tq}");
        assert!(blocks as usize * attention::MMA_ROWS >= tq);
    }
}

#[test]
fn grid_stride_grids_are_clamped_to_at_least_one_block() {
    assert_eq!(elementwise::map_dims("t", 0).expect("n = 0").grid, (1, 1, 1));
    assert_eq!(elementwise::map_dims("t", 1).expect("n = 1").grid, (1, 1, 1));
    // 8 elements per thread: 2049 elements need 2 blocks of 256
    assert_eq!(elementwise::map_dims("t", 2049).expect("odd").grid, (2, 1, 1));
    let huge = elementwise::map_dims("t", 1 << 40).expect("huge");
    assert!(huge.grid.0 >= 1024 && huge.grid.0 < 1 << 20, "{huge:?}");
    assert_eq!(rmsnorm::bwd_blocks(1), 1);
    assert_eq!(rmsnorm::bwd_blocks(1 << 20), rmsnorm::BWD_MAX_BLOCKS);
}

/// The block size each launcher uses must match the kernel's
/// `__launch_bounds__` / reduction constant in its .cu file (a launch with
/// more threads than the bound is refused at run time; fewer would break
/// the block reductions' assumptions).
#[test]
fn launcher_block_sizes_match_the_kernel_sources() {
    let cu = |f: &str| std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cu").join(f)).expect("source");
    let define = |src: &str, name: &str| -> u32 {
        let line = src.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap_or_else(|| panic!("#define {name}"));
        line.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    assert_eq!(define(&cu("rmsnorm.cu"), "RMS_THREADS"), rmsnorm::THREADS);
    assert_eq!(define(&cu("cross_entropy.cu"), "CE_THREADS"), cross_entropy::THREADS);
    assert_eq!(define(&cu("attention.cu"), "ATT_WARPS") as usize, attention::WARPS);
    assert_eq!(define(&cu("attention_mma.cu"), "MMA_BQ") as usize, attention::MMA_ROWS);
    let v3 = cu("attention_v3.cu");
    assert_eq!(define(&v3, "V3_BQ") as usize, attention::V3_ROWS);
    assert_eq!(define(&v3, "V3_BK") as usize, attention::V3_KEYS);
    assert_eq!(define(&v3, "V3_FWD_WARPS") * 32, attention::V3_FWD_THREADS);
    assert_eq!(define(&v3, "V3_BWD_BK") as usize, attention::V3_BWD_KEYS);
    assert_eq!(define(&v3, "V3_BWD_BQ") as usize, attention::V3_BWD_ROWS);
    assert_eq!(define(&v3, "V3_BWD_WARPS") * 32, attention::V3_BWD_THREADS);
    assert_eq!(define(&v3, "V3_DQ_THREADS"), attention::V3_DQ_THREADS);
    let a = cu("attention.cu");
    assert_eq!(define(&a, "SK_CHUNK") as usize, attention::SPLITK_CHUNK);
    assert_eq!(define(&a, "SK_TILE") as usize, attention::SPLITK_TILE);
    assert_eq!(define(&a, "SK_ROWS") as usize, attention::SPLITK_ROWS);
    assert_eq!(define(&a, "SK_WARPS") * 32, attention::SPLITK_THREADS);
    // the tensor-core kernels are bounded at 4 warps, as the launcher uses
    assert!(cu("attention_mma.cu").contains("__launch_bounds__(4 * WARP)"));
    assert_eq!(attention::WARPS, 4);
}

#[test]
fn v3_shared_memory_fits_one_block_of_an_a100_and_two_of_an_h100() {
    // the launchers' sizes (V3Fwd/V3Bwd<HD>::SMEM in the .cu): sm_80 allows
    // 163 KiB per block, sm_90 227 KiB per block and 228 KiB per SM
    for hd in attention::HEAD_DIMS {
        for (what, b) in [("fwd", attention::fwd_v3_smem(hd)), ("bwd", attention::bwd_v3_smem(hd))] {
            assert!(b <= 163 * 1024, "{what} hd {hd}: {b} bytes");
            assert!(2 * b <= 228 * 1024, "{what} hd {hd}: {b} bytes, two blocks do not fit an SM");
        }
    }
    assert_eq!(attention::fwd_v3_smem(128), (128 * 136 + 2 * 2 * 64 * 136) * 2);
    assert_eq!(attention::bwd_v3_smem(64), (2 * 64 * 72 + 4 * 32 * 72 + 64 * 40) * 2 + 512 + 16);
}

#[test]
fn splitk_shared_memory_fits_two_blocks_of_an_a100_and_an_h100() {
    // SplitK<HD>::SMEM in the .cu: two K and two V tiles of 64 padded rows, 16 q rows in f32
    assert_eq!(attention::splitk_smem(64), 2 * 2 * 64 * 72 * 2 + 16 * 64 * 4);
    assert_eq!(attention::splitk_smem(128), 2 * 2 * 64 * 136 * 2 + 16 * 128 * 4);
    for hd in attention::HEAD_DIMS {
        let b = attention::splitk_smem(hd);
        assert!(2 * b <= 163 * 1024, "hd {hd}: {b} bytes, two blocks do not fit an A100 SM");
    }
}

/// cuobjdump (the PyPI package nvidia-cuda-cuobjdump, which
/// tools/install-cuda.sh puts in .cuda-tools/): $CUOBJDUMP, then the
/// project's copy, then PATH.
fn cuobjdump() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("CUOBJDUMP") {
        return p.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let local = root.join(".cuda-tools/nvidia/cu13/bin/cuobjdump");
    if local.is_file() {
        return local;
    }
    "cuobjdump".into()
}

/// Function name -> its instructions: (address, opcode, branch target).
type Sass = std::collections::BTreeMap<String, Vec<(u64, String, Option<u64>)>>;

/// The SASS of every function of a cubin.
fn sass(cubin: &std::path::Path) -> Sass {
    let out = std::process::Command::new(cuobjdump()).arg("-sass").arg(cubin).output().unwrap_or_else(|e| {
        panic!("running cuobjdump ({}): {e}; HINT: `bash tools/install-cuda.sh` installs it into .cuda-tools/ (or set CUOBJDUMP)", cuobjdump().display())
    });
    assert!(out.status.success(), "cuobjdump -sass {}: {}", cubin.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut funcs = std::collections::BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if let Some(i) = line.find("Function : ") {
            cur = Some(line[i + 11..].trim().to_string());
            funcs.insert(cur.clone().unwrap_or_default(), Vec::new());
            continue;
        }
        let (Some(name), Some(a0)) = (&cur, line.find("/*")) else { continue };
        let rest = &line[a0 + 2..];
        let Some(a1) = rest.find("*/") else { continue };
        let Ok(addr) = u64::from_str_radix(rest[..a1].trim(), 16) else { continue };
        let mut words = rest[a1 + 2..].split_whitespace().filter(|w| !w.starts_with('@'));
        let Some(op) = words.next() else { continue };
        let op = op.split('.').next().unwrap_or(op).to_string();
        let target = if op == "BRA" { words.next().and_then(|w| u64::from_str_radix(w.trim_start_matches("0x").trim_end_matches(';'), 16).ok()) } else { None };
        if let Some(v) = funcs.get_mut(name) {
            v.push((addr, op, target));
        }
    }
    funcs
}

/// The v3 attention kernels keep their tile loop on ldmatrix and cp.async:
/// in the SASS of both targets, some loop (the instructions from a backward
/// branch's target to the branch) holds LDSM (ldmatrix), LDGSTS (cp.async)
/// and HMMA (mma.sync) together. A v3 kernel that fell back to 32-bit shared
/// loads or synchronous copies fails here.
#[test]
fn v3_attention_inner_loops_use_ldmatrix_and_cp_async() {
    let dir = keep_dir(Family::AttentionV3);
    let cubins: Vec<_> =
        std::fs::read_dir(&dir).expect("keep dir").flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "cubin")).collect();
    assert_eq!(cubins.len(), SASS_TARGETS);
    let tile_kernels: Vec<&str> = ENTRY_POINTS.iter().filter(|(f, n)| *f == Family::AttentionV3 && *n != attention::BWD_V3_DQ).map(|(_, n)| *n).collect();
    assert_eq!(tile_kernels.len(), 8);
    for c in &cubins {
        let funcs = sass(c);
        for k in &tile_kernels {
            let code = funcs.get(*k).unwrap_or_else(|| panic!("{k} not in the SASS of {}", c.display()));
            let loops: Vec<(u64, u64)> = code.iter().filter_map(|(a, _, t)| t.filter(|t| t < a).map(|t| (t, *a))).collect();
            let found = loops.iter().any(|&(lo, hi)| {
                let ops: Vec<&str> = code.iter().filter(|(a, _, _)| (lo..=hi).contains(a)).map(|(_, o, _)| o.as_str()).collect();
                ["LDSM", "LDGSTS", "HMMA"].iter().all(|want| ops.contains(want))
            });
            let count = |op: &str| code.iter().filter(|(_, o, _)| o == op).count();
            println!(
                "{} {k}: LDSM {} LDGSTS {} HMMA {} loops {}",
                c.file_name().and_then(|f| f.to_str()).unwrap_or("?"),
                count("LDSM"),
                count("LDGSTS"),
                count("HMMA"),
                loops.len()
            );
            assert!(found, "{k} in {}: no loop holds LDSM, LDGSTS and HMMA together", c.display());
        }
        // and the parser is not vacuous: v2 uses neither ldmatrix nor cp.async
        let v2 = sass(
            &std::fs::read_dir(keep_dir(Family::AttentionMma))
                .expect("keep")
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "cubin"))
                .expect("a v2 cubin"),
        );
        let fwd2 = &v2[attention::FWD_MMA_D128];
        assert!(fwd2.iter().any(|(_, o, _)| o == "HMMA") && !fwd2.iter().any(|(_, o, _)| o == "LDSM" || o == "LDGSTS"));
    }
}
