//! `train-tool gpu-check` (feature `cuda`): every CUDA kernel against its
//! CPU counterpart on fresh random inputs, at real and ragged shapes, with
//! the tolerances of STYLE.md section 5; optionally (`--bench-json`) the
//! device timings of every kernel at Llama-2 7B shapes for
//! tools/device-check.sh.
//!
//! Checks (`checks`): casts, element-wise ops, sum of squares, row
//! gather/scatter, KV-cache writes, embedding fwd/bwd, RMSNorm fwd/bwd,
//! RoPE fwd/bwd, SwiGLU fwd/bwd, fused cross-entropy, AdamW (master, moments
//! and the bf16 copy), cuBLASLt matmul in every transpose, attention
//! forward (T ∈ {1, 97, 1024, 4096}, hd ∈ {64, 128}, KV heads = H, 8, 1),
//! decode against a cache, and backward. Outputs are poisoned with NaN
//! before each GPU op, so an element the kernel fails to write fails.
//!
//! Model-level checks (`model_check`): a whole training step of a small
//! Llama on GPU vs CPU (the loss and every gradient), and 200 steps of
//! training whose loss curve (20-step means) must track the CPU one.
//! Reward-model checks (`rm_check`): scores, ranking loss and every
//! gradient of a batch of pairs, dense and ragged, GPU vs CPU.
//!
//! The comparison rules are in `compare`, the naive references and the
//! input generator in `reference`; both, and the model-level checks, are
//! tested on the CPU, the latter against `bf16_sim` (tests only: the CPU
//! backend storing activations in bf16, as the CUDA backend does).
//!
//! `--sim` (a build with `--features cuda,cuda-sim`): the kernel rows with
//! every CUDA kernel executed on the CPU layer (`sim_backend`: the kernels'
//! own `.cu` sources compiled as C++, every CUDA thread a fiber, launched by
//! the same launchers), compared with the same rules and tolerances, on the
//! CPU layer's shape set (`checks::Shapes::Sim`). No GPU is needed; the
//! matmul rows (cuBLASLt) and the model-level checks are not run.
//! `--sim-race` runs every launch under several thread schedules and fails
//! on any difference in memory (docs/kernels.md, "The CPU layer").

use clap::Args;

#[cfg(feature = "cuda")]
mod bench;

#[cfg(test)]
mod bf16_sim;
#[cfg(feature = "cuda")]
pub mod checks;
#[cfg(any(feature = "cuda", test))]
pub mod compare;
#[cfg(any(feature = "cuda", test))]
pub mod model_check;
#[cfg(any(feature = "cuda", test))]
pub mod reference;
#[cfg(any(feature = "cuda", test))]
pub mod rm_check;
#[cfg(feature = "cuda-sim")]
pub mod sim_backend;
#[cfg(all(test, feature = "cuda-sim"))]
mod sim_tests;

#[derive(Args)]
pub struct GpuCheckArgs {
    /// CUDA device ordinal
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Seed of the random inputs (fresh inputs: change it between runs)
    #[arg(long, default_value_t = 20240520)]
    pub seed: u64,
    /// Only the small shapes (T <= 97): a fast smoke test
    #[arg(long)]
    pub quick: bool,
    /// Only the kernel checks (skip the training step and the 200-step run)
    #[arg(long)]
    pub kernels_only: bool,
    /// Skip the 200-step loss-curve run (the kernel rows and the single
    /// training step still run; tools/device-check.sh runs the curve last)
    #[arg(long, conflicts_with = "kernels_only")]
    pub no_curve: bool,
    /// Only the 200-step loss-curve run (no kernel rows, no single step)
    #[arg(long, conflicts_with_all = ["kernels_only", "no_curve", "no_check", "quick"])]
    pub curve_only: bool,
    /// Skip the correctness checks (with --bench-json: timings only)
    #[arg(long)]
    pub no_check: bool,
    /// Also time every kernel at Llama-2 7B shapes and write the results as JSON here
    #[arg(long)]
    pub bench_json: Option<std::path::PathBuf>,
    /// Write the check results as JSON here
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Run the kernel rows on the CPU layer instead of a GPU: each kernel's own
    /// .cu source executed on the CPU (needs a build with --features cuda,cuda-sim;
    /// its own shape set, no matmul or model-level rows: --quick, --kernels-only
    /// and --device do not apply)
    #[arg(long, conflicts_with_all = ["no_check", "bench_json"])]
    pub sim: bool,
    /// With --sim: run every launch under several thread schedules and fail on
    /// any difference in memory (finds races; about 5x slower)
    #[arg(long, requires = "sim")]
    pub sim_race: bool,
    /// With --sim: worker threads running blocks concurrently (0: all cores)
    #[arg(long, default_value_t = 0, requires = "sim")]
    pub sim_workers: usize,
}

#[cfg(not(feature = "cuda"))]
pub fn run(a: GpuCheckArgs) -> anyhow::Result<()> {
    if a.sim {
        anyhow::bail!("gpu-check --sim needs the CPU layer; HINT: rebuild with `cargo build --release --features cuda,cuda-sim`")
    }
    anyhow::bail!("gpu-check needs the CUDA backend; HINT: rebuild with `cargo build --release --features cuda`")
}

/// `gpu-check --sim`: the kernel rows on the CPU layer; returns the checker
/// (its rows) after printing the report and writing `json`.
#[cfg(feature = "cuda-sim")]
pub fn run_sim(
    seed: u64,
    cfg: llama2_runtime::kernels::cuda::sim::SimConfig,
    json: Option<&std::path::Path>,
) -> anyhow::Result<checks::Checker<sim_backend::SimBackend>> {
    use anyhow::Context;
    let t0 = std::time::Instant::now();
    let cpu = llama2_runtime::CpuBackend::new(0).context("starting the CPU backend")?;
    let race = cfg.race;
    let sim = sim_backend::SimBackend::new(cfg);
    println!("gpu-check on the CPU layer (the CUDA kernels' .cu sources run on the CPU, no GPU), seed {seed}, race mode {}", if race { "on" } else { "off" });
    let mut c = checks::Checker::new(cpu, sim, seed, checks::Shapes::Sim);
    c.set_json_path(json.map(|p| p.to_path_buf()));
    c.run_all()?;
    c.report();
    let st = c.gpu().device().stats();
    println!(
        "CPU layer: {} blocks, {} threads, {} barriers, {} warp collectives ({} mma), {} fiber switches, {:.1} s",
        st.blocks,
        st.threads,
        st.barriers,
        st.collectives,
        st.mma,
        st.switches,
        t0.elapsed().as_secs_f64()
    );
    if let Some(p) = json {
        std::fs::write(p, c.json()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(c)
}

/// The CUDA libraries this process has actually mapped (driver, cuBLASLt,
/// NVRTC), from `/proc/self/maps`: the files the dynamic loader picked,
/// not the ones a search guessed. Empty where the file is unreadable.
#[cfg(feature = "cuda")]
pub fn loaded_cuda_libraries() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| ["libcuda.so", "libcublas", "libnvrtc", "libnvidia"].iter().any(|n| p.contains(n)))
        .map(String::from)
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

#[cfg(feature = "cuda")]
pub fn run(a: GpuCheckArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    if a.sim {
        #[cfg(feature = "cuda-sim")]
        {
            let cfg = llama2_runtime::kernels::cuda::sim::SimConfig { race: a.sim_race, workers: a.sim_workers, ..Default::default() };
            let c = run_sim(a.seed, cfg, a.json.as_deref())?;
            let failed = c.rows().iter().filter(|r| !r.ok).count();
            if failed > 0 {
                anyhow::bail!("gpu-check --sim: {failed} check(s) failed");
            }
            return Ok(());
        }
        #[cfg(not(feature = "cuda-sim"))]
        anyhow::bail!("gpu-check --sim needs the CPU layer; HINT: rebuild with `cargo build --release --features cuda,cuda-sim`")
    }
    let gpu = llama2_runtime::CudaBackend::new(a.device).context("starting the CUDA backend")?;
    let cpu = llama2_runtime::CpuBackend::new(0).context("starting the CPU backend")?;
    println!("gpu-check on {} ({}), seed {}, {} shapes", gpu.device_name(), llama2_runtime::Backend::name(&gpu), a.seed, if a.quick { "quick" } else { "all" });
    println!("allocator: {}", gpu.allocator());
    println!("attention kernels: {:?} (LLAMA2_ATTN=simple|mma|v3|auto)", gpu.attention_impl());
    for lib in loaded_cuda_libraries() {
        println!("loaded: {lib}");
    }
    let mut failed = 0;
    if a.curve_only {
        let mut c = checks::Checker::new(cpu, gpu, a.seed, checks::Shapes::Quick);
        c.set_json_path(a.json.clone());
        let (cpu, gpu) = c.backends();
        let mut rows = Vec::new();
        let res = model_check::compare(cpu, gpu, a.seed, model_check::Part::Curve, &mut |n, e, l| rows.push((n, e, l)));
        for (n, e, l) in rows {
            c.record(n, e, l);
        }
        if let Err(e) = res {
            c.record(format!("model-level loss curve: error {e:#}"), f64::INFINITY, 0.0);
        }
        let failed = c.report();
        if let Some(p) = &a.json {
            std::fs::write(p, c.json()).with_context(|| format!("writing {}", p.display()))?;
        }
        if failed > 0 {
            anyhow::bail!("gpu-check --curve-only: {failed} check(s) failed");
        }
        return Ok(());
    }
    let gpu = if a.no_check {
        gpu
    } else {
        let shapes = if a.quick { checks::Shapes::Quick } else { checks::Shapes::Full };
        let mut c = checks::Checker::new(cpu, gpu, a.seed, shapes);
        c.set_json_path(a.json.clone());
        c.run_all()?;
        if !a.kernels_only {
            let (cpu, gpu) = c.backends();
            let mut rows = Vec::new();
            let part = if a.no_curve { model_check::Part::Step } else { model_check::Part::Both };
            let res = model_check::compare(cpu, gpu, a.seed, part, &mut |n, e, l| rows.push((n, e, l)));
            let rm_res = rm_check::compare(cpu, gpu, a.seed, &mut |n, e, l| rows.push((n, e, l)));
            for (n, e, l) in rows {
                c.record(n, e, l);
            }
            if let Err(e) = res {
                c.record(format!("model-level checks: error {e:#}"), f64::INFINITY, 0.0);
            }
            if let Err(e) = rm_res {
                c.record(format!("reward-model checks: error {e:#}"), f64::INFINITY, 0.0);
            }
        }
        failed = c.report();
        if let Some(p) = &a.json {
            std::fs::write(p, c.json()).with_context(|| format!("writing {}", p.display()))?;
        }
        c.into_gpu()
    };
    if let Some(p) = &a.bench_json {
        bench::run(&gpu, p)?;
    }
    if failed > 0 {
        anyhow::bail!("gpu-check: {failed} check(s) failed");
    }
    Ok(())
}
