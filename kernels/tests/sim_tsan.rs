//! ThreadSanitizer on the CPU layer (feature `cuda-sim`): the kernels that
//! synchronise threads through shared memory (the block reductions of
//! rmsnorm, cross-entropy and sum_squares, the v1 attention's __syncwarp'd
//! rows, the tensor-core attention's K/V and Q tiles) are compiled again with
//! `-fsanitize=thread`, every CUDA thread a ThreadSanitizer fiber that only
//! barriers and __syncwarp order (kernels/sim/tests/tsan_main.cpp runs one
//! launch). The shipped kernels report no data race; the cross-entropy copy
//! with its barrier removed (the planted bug `ce_barrier`) does, whatever
//! the schedule, and so does a shared-memory exchange without its barrier.
//!
//! Needs a C++ compiler with ThreadSanitizer ($CXX, else `c++`; GCC's
//! libtsan or clang's); without one the test fails with a hint.
#![cfg(feature = "cuda-sim")]

use llama2_kernels::cuda::sim::{GENERATED_DIR, SOURCE_DIR};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The families compiled into the harness, and the planted copy.
const TABLES: [&str; 7] = ["cross_entropy", "rmsnorm", "elementwise", "attention", "attention_mma", "selftest", "planted_ce_barrier"];

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}; HINT: set CXX to a C++17 compiler with ThreadSanitizer"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}\nHINT: the ThreadSanitizer test needs a C++ compiler with -fsanitize=thread (GCC with libtsan, or clang)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the harness once (a few TUs compiled in parallel); its path.
fn harness() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sim_tsan");
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let src = PathBuf::from(SOURCE_DIR);
        let gen = PathBuf::from(GENERATED_DIR);
        let cu = src.join("..").join("cu");
        let mut reg = String::from("#include \"cuda_sim_registry.h\"\n");
        for t in TABLES {
            reg.push_str(&format!("extern \"C\" const cuda_sim::KernelEntry* cuda_sim_table_{t}(int* n);\n"));
        }
        reg.push_str("static const cuda_sim::TableFn kTables[] = {");
        for t in TABLES {
            reg.push_str(&format!("&cuda_sim_table_{t}, "));
        }
        reg.push_str("};\nextern \"C\" const cuda_sim::TableFn* cuda_sim_tables(int* n) { *n = (int)(sizeof kTables / sizeof kTables[0]); return kTables; }\n");
        std::fs::write(dir.join("registry.cpp"), reg).expect("registry");
        // (source, instrumented)
        let mut units: Vec<(PathBuf, bool)> =
            vec![(src.join("runtime.cpp"), false), (dir.join("registry.cpp"), false), (src.join("tests").join("tsan_main.cpp"), true)];
        for t in TABLES {
            let f = if let Some(tag) = t.strip_prefix("planted_") { gen.join(format!("planted_{tag}.cpp")) } else { gen.join(format!("family_{t}.cpp")) };
            units.push((f, true));
        }
        let objs: Vec<PathBuf> = std::thread::scope(|sc| {
            let hs: Vec<_> = units
                .iter()
                .enumerate()
                .map(|(i, (f, tsan))| {
                    let (dir, src, gen, cu) = (&dir, &src, &gen, &cu);
                    sc.spawn(move || {
                        let o = dir.join(format!("u{i}.o"));
                        let mut c = Command::new(cxx());
                        c.args(["-std=c++17", "-O1", "-g", "-fno-strict-aliasing", "-ffp-contract=off", "-Wno-unknown-pragmas", "-c"])
                            .arg("-I")
                            .arg(src.join("include"))
                            .arg("-I")
                            .arg(cu)
                            .arg("-I")
                            .arg(gen)
                            .arg(f)
                            .arg("-o")
                            .arg(&o);
                        if *tsan {
                            c.arg("-fsanitize=thread");
                        } else {
                            c.arg("-DCUDA_SIM_TSAN");
                        }
                        run(&mut c);
                        o
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("compile thread")).collect()
        });
        let exe = dir.join("tsan_harness");
        run(Command::new(cxx()).arg("-fsanitize=thread").args(&objs).arg("-o").arg(&exe).arg("-lpthread"));
        exe
    })
}

/// Runs one kernel under ThreadSanitizer: (exit code, stderr).
fn tsan(kernel: &str, arg: Option<&str>) -> (i32, String) {
    let mut c = Command::new(harness());
    c.arg(kernel).args(arg).env("TSAN_OPTIONS", "halt_on_error=0 exitcode=66 report_signal_unsafe=0");
    let out = c.output().expect("run the harness");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_shipped_kernels_have_no_data_race_under_threadsanitizer() {
    for k in [
        "cross_entropy_fwd_bwd_bf16",
        "rmsnorm_fwd_bf16",
        "rmsnorm_bwd_bf16",
        "sum_squares_f32",
        "attention_fwd_d64_bf16",
        "attention_bwd_dq_d64_bf16",
        "attention_bwd_dkdv_d64_bf16",
        "attention_fwd_mma_d64_bf16",
        "attention_bwd_dq_mma_d64_bf16",
        "attention_bwd_dkdv_mma_d64_bf16",
    ] {
        let (code, err) = tsan(k, None);
        assert!(code == 0 && !err.contains("ThreadSanitizer"), "{k}: exit {code}\n{err}");
    }
}

#[test]
fn threadsanitizer_reports_the_planted_missing_barrier() {
    let (code, err) = tsan("planted:ce_barrier:cross_entropy_fwd_bwd_bf16", None);
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("WARNING: ThreadSanitizer: data race") && err.contains("cross_entropy_fwd_bwd_bf16"), "{err}");
}

#[test]
fn threadsanitizer_sees_a_shared_memory_exchange_without_its_barrier() {
    let (code, err) = tsan("selftest_smem_reverse", Some("1"));
    assert!(code == 0 && !err.contains("ThreadSanitizer"), "with the barrier: exit {code}\n{err}");
    let (code, err) = tsan("selftest_smem_reverse", Some("0"));
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("WARNING: ThreadSanitizer: data race") && err.contains("selftest_smem_reverse"), "{err}");
}
