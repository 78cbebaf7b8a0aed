//! Build script of llama2-kernels.
//!
//! Without the `cuda` feature nothing CUDA is built. With it, every
//! `cu/<family>.cu` is compiled by nvcc into one fatbin holding sm_90a
//! (H100/H200; the `a` target would allow wgmma and setmaxnreg, which no
//! kernel uses yet), sm_80 (A100) and compute_80 PTX (any later GPU,
//! compiled by the driver at load), written to
//! `$OUT_DIR/<family>.fatbin` and embedded by `src/cuda/mod.rs`.
//!
//! - nvcc is found from env `CUDA_NVCC`, then `nvcc` on PATH, then
//!   `$CUDA_HOME/bin/nvcc`, then the project's `.cuda/` (tools/install-cuda.sh);
//!   none of them is a build error that says how to install it.
//! - The Hopper target is written `-gencode=arch=compute_90a,code=sm_90a`
//!   (with nvcc 13.0 `-arch=sm_90a` also runs a plain sm_90 pass).
//! - No global `--use_fast_math` (candle PR #3309): kernels choose
//!   approximate functions one call at a time.
//! - ptxas -v output goes to `$OUT_DIR/<family>.ptxas.txt` and the
//!   intermediate cubins stay in `$OUT_DIR/keep/<family>/` (nvcc --keep), so
//!   tests can check the entry points and the register spills without a GPU.
//! - Families compile in parallel (one nvcc per family).
//!
//! With the `cuda-sim` feature the same `.cu` files are also compiled as C++
//! for the CPU layer (`sim/`, see `sim/build_sim.rs`): one translation unit
//! per family plus the layer's runtime, linked as the static library
//! `cuda_sim`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[cfg(feature = "cuda-sim")]
#[path = "sim/build_sim.rs"]
mod build_sim;

const GENCODE: [&str; 3] = ["-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_80,code=compute_80"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let cu_dir = manifest.join("cu");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&cu_dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    sources.sort();
    for s in &sources {
        if matches!(s.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")) {
            println!("cargo:rerun-if-changed={}", s.display());
        }
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    #[cfg(feature = "cuda-sim")]
    build_sim::build(&manifest, &cu_dir, &out);
    let nvcc = find_nvcc(&manifest);
    let units: Vec<&PathBuf> = sources.iter().filter(|s| s.extension().and_then(|e| e.to_str()) == Some("cu")).collect();
    let results: Vec<Result<(), String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = units.iter().map(|src| sc.spawn(|| compile(&nvcc, src, &cu_dir, &out))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("nvcc thread panicked".into()))).collect()
    });
    let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
    if !errors.is_empty() {
        panic!("CUDA kernel build failed:\n{}", errors.join("\n"));
    }
}

fn compile(nvcc: &Path, src: &Path, cu_dir: &Path, out: &Path) -> Result<(), String> {
    let family = src.file_stem().and_then(|s| s.to_str()).ok_or("bad file name")?.to_string();
    let keep = out.join("keep").join(&family);
    let _ = std::fs::remove_dir_all(&keep);
    std::fs::create_dir_all(&keep).map_err(|e| format!("{}: {e}", keep.display()))?;
    let fatbin = out.join(format!("{family}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin")
        .args(GENCODE)
        .args(["-O3", "-std=c++17", "-lineinfo", "-Xptxas", "-v", "--keep", "--keep-dir"])
        .arg(&keep)
        .arg("-I")
        .arg(cu_dir)
        .arg("-o")
        .arg(&fatbin)
        .arg(src);
    let res = cmd.output().map_err(|e| format!("could not run {}: {e}", nvcc.display()))?;
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    if !res.status.success() {
        return Err(format!("nvcc failed on {}:\n{}{}", src.display(), String::from_utf8_lossy(&res.stdout), stderr));
    }
    // keep only what the tests read: the cubins and the PTX
    if let Ok(rd) = std::fs::read_dir(&keep) {
        for e in rd.flatten() {
            let p = e.path();
            if !matches!(p.extension().and_then(|x| x.to_str()), Some("cubin" | "ptx")) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    for line in stderr.lines().filter(|l| l.contains("warning")) {
        println!("cargo:warning={family}.cu: {line}");
    }
    std::fs::write(out.join(format!("{family}.ptxas.txt")), &stderr).map_err(|e| e.to_string())
}

fn find_nvcc(manifest: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("CUDA_NVCC") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("nvcc");
            if c.is_file() {
                return c;
            }
        }
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let c = PathBuf::from(home).join("bin").join("nvcc");
        if c.is_file() {
            return c;
        }
    }
    let root = manifest.parent().unwrap_or(manifest);
    let c = root.join(".cuda").join("nvidia").join("cu13").join("bin").join("nvcc");
    println!("cargo:rerun-if-changed={}", c.display());
    if c.is_file() {
        return c;
    }
    panic!(
        "the `cuda` feature needs nvcc 13.0, found none (looked at $CUDA_NVCC, nvcc on PATH, $CUDA_HOME/bin, {}); \
         HINT: run `bash tools/install-cuda.sh` (installs it from PyPI into .cuda/, a few seconds) or set CUDA_NVCC",
        c.display()
    );
}
