//! The CPU layer's part of `kernels/build.rs` (feature `cuda-sim`).
//!
//! 1. Finds the kernels of every `cu/<family>.cu` by preprocessing it with
//!    `CUDA_SIM_SCAN` defined: `sim/include/cuda_sim.h` then turns
//!    `__global__` and `__launch_bounds__(n)` into marks, so the
//!    preprocessed text shows each `extern "C"` kernel's name (after the
//!    files' own macros, e.g. `DEFINE_ATTN(64)`, have expanded) and its
//!    thread bound.
//! 2. Writes one translation unit per family into `$OUT_DIR/sim/`: the
//!    common `.cuh` headers first, then the `.cu` inside a namespace of its
//!    own (no two families' helpers can merge at link time), then a table of
//!    its kernels (`cuda_sim_registry.h`). The `.cu` files are compiled
//!    unchanged.
//! 3. Writes the planted-bug copies (`PLANTS`): a family's source with one
//!    exact edit, compiled into the library under the kernel names
//!    `planted:<tag>:<kernel>`, for the tests that show a check fails on
//!    them. They exist only in this library, never in `cu/` or the GPU build.
//! 4. Adds `sim/selftest.cu` (kernels that exercise the layer itself, for
//!    its unit tests) the same way, and compiles everything with `sim/runtime.cpp`
//!    into the static library `cuda_sim`: `-O2` whatever the profile (the
//!    layer runs every CUDA thread on the CPU), `-ffp-contract=off` (no FMA
//!    contraction the source does not ask for), `-fno-strict-aliasing` (the
//!    kernels reinterpret bf16 buffers as 16-byte words, as nvcc allows).

use std::path::{Path, PathBuf};

/// Planted bugs: (tag, family, exact text to replace, replacement, what it breaks).
/// Each `from` must occur exactly once in `cu/<family>.cu` (else the build
/// fails, so a test can never run an unplanted copy by mistake).
pub const PLANTS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "gqa_index",
        "attention",
        "    if (i >= tq || bi >= b) return;  // the whole warp; only warp-level sync below\n    const int g = h / (nh / nkv);\n",
        "    if (i >= tq || bi >= b) return;  // the whole warp; only warp-level sync below\n    const int g = h % nkv;  // PLANTED: wrong KV head under GQA\n",
        "an index bug: v1 forward maps query head h to KV head h % n_kv_head instead of h / (n_head / n_kv_head)",
    ),
    (
        "ce_barrier",
        "cross_entropy",
        "    __syncthreads();  // every thread has read x[y] before it is overwritten\n",
        "    // PLANTED: the barrier before dlogits overwrite the logits is gone\n",
        "a missing barrier: dlogits overwrite x[y] while other threads may still read it",
    ),
    (
        "mma_fragment",
        "attention_mma",
        "            pa[1] = pack_bf16(sacc[2 * js][2], sacc[2 * js][3]);\n            pa[2] = pack_bf16(sacc[2 * js + 1][0], sacc[2 * js + 1][1]);\n",
        "            pa[1] = pack_bf16(sacc[2 * js + 1][0], sacc[2 * js + 1][1]);  // PLANTED: a1 and a2 swapped\n            pa[2] = pack_bf16(sacc[2 * js][2], sacc[2 * js][3]);\n",
        "a wrong fragment layout: the forward's P, reused from two C fragments as the A operand of P·V, has a1 and a2 swapped",
    ),
    (
        "cp_async_wait",
        "attention_v3",
        "        cp_async_wait<NS - 2>();  // this tile's group has landed (for this thread) ...\n",
        "        // PLANTED: the wait for this tile's cp.async group is gone\n",
        "a missing cp.async wait: the v3 forward reads a K/V tile before its copies have landed",
    ),
    (
        "qkv_sin_sign",
        "rope",
        "                const float c = t[e / 2].v[(e % 2) * 2], s = t[e / 2].v[(e % 2) * 2 + 1];\n",
        "                const float c = t[e / 2].v[(e % 2) * 2], s = -t[e / 2].v[(e % 2) * 2 + 1];  // PLANTED: sin negated\n",
        "a sign bug: the fused QKV split and pack (16-byte path) rotate by the negated angle",
    ),
];

struct Kernel {
    name: String,
    /// the `__launch_bounds__` expression after preprocessing, or "0"
    bound: String,
}

pub fn build(manifest: &Path, cu_dir: &Path, out: &Path) {
    let sim = manifest.join("sim");
    let inc = sim.join("include");
    for f in
        ["build_sim.rs", "runtime.cpp", "selftest.cu", "include/cuda_sim.h", "include/cuda_bf16.h", "include/cuda_sim_registry.h", "include/cuda_sim_api.h"]
    {
        println!("cargo:rerun-if-changed={}", sim.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=CXX");
    let gen = out.join("sim");
    std::fs::create_dir_all(&gen).unwrap_or_else(|e| panic!("{}: {e}", gen.display()));
    let cxx = cc::Build::new().cpp(true).get_compiler();

    let mut sources: Vec<PathBuf> = std::fs::read_dir(cu_dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    sources.sort();
    let headers: Vec<String> =
        sources.iter().filter(|p| p.extension().and_then(|e| e.to_str()) == Some("cuh")).filter_map(|p| p.file_name()?.to_str().map(String::from)).collect();
    for h in &headers {
        let text = std::fs::read_to_string(cu_dir.join(h)).unwrap_or_default();
        assert!(text.contains("#pragma once"), "cu/{h}: the CPU layer includes every .cuh before each family; it needs #pragma once");
    }
    let mut families: Vec<(String, PathBuf)> = sources
        .iter()
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("cu"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p.clone())))
        .collect();
    families.push(("selftest".to_string(), sim.join("selftest.cu")));

    let mut units = vec![sim.join("runtime.cpp")];
    let mut tables = Vec::new();
    let mut kernels_of = std::collections::BTreeMap::new();
    for (fam, src) in &families {
        let kernels = scan(&cxx, &inc, cu_dir, src);
        assert!(!kernels.is_empty(), "{}: no __global__ kernel found by the CPU layer's scan", src.display());
        let ns = format!("cuda_sim_family_{fam}");
        let unit = gen.join(format!("family_{fam}.cpp"));
        write_unit(&unit, &headers, &ns, &src.display().to_string(), &format!("cuda_sim_table_{fam}"), &kernels, "");
        tables.push(format!("cuda_sim_table_{fam}"));
        units.push(unit);
        kernels_of.insert(fam.clone(), kernels);
    }
    for (tag, fam, from, to, _what) in PLANTS {
        let src = cu_dir.join(format!("{fam}.cu"));
        let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert_eq!(text.matches(from).count(), 1, "planted bug `{tag}`: its text must occur exactly once in {}", src.display());
        // C++ linkage inside the namespace, so the copy's kernels do not clash with the originals
        let patched = text.replace(from, to).replace("extern \"C\" ", "");
        let copy = gen.join(format!("planted_{tag}_{fam}.cu"));
        std::fs::write(&copy, patched).unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
        let unit = gen.join(format!("planted_{tag}.cpp"));
        let kernels = &kernels_of[*fam];
        write_unit(
            &unit,
            &headers,
            &format!("cuda_sim_planted_{tag}"),
            &copy.display().to_string(),
            &format!("cuda_sim_table_planted_{tag}"),
            kernels,
            &format!("planted:{tag}:"),
        );
        tables.push(format!("cuda_sim_table_planted_{tag}"));
        units.push(unit);
    }
    let mut reg = String::from("// generated by kernels/sim/build_sim.rs: every kernel table of the CPU layer\n#include \"cuda_sim_registry.h\"\n");
    for t in &tables {
        reg.push_str(&format!("extern \"C\" const cuda_sim::KernelEntry* {t}(int* n);\n"));
    }
    reg.push_str("static const cuda_sim::TableFn kTables[] = {\n");
    for t in &tables {
        reg.push_str(&format!("    &{t},\n"));
    }
    reg.push_str(
        "};\nextern \"C\" const cuda_sim::TableFn* cuda_sim_tables(int* n) {\n    *n = (int)(sizeof kTables / sizeof kTables[0]);\n    return kTables;\n}\n",
    );
    let reg_path = gen.join("registry.cpp");
    write_if_changed(&reg_path, &reg);
    units.push(reg_path);

    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(&inc)
        .include(cu_dir)
        .include(&gen)
        .flag("-fno-strict-aliasing")
        .flag("-ffp-contract=off")
        .flag_if_supported("-Wno-unknown-pragmas")
        .warnings(false)
        .files(&units);
    b.compile("cuda_sim");
}

/// The kernels of one `.cu` file: preprocess with the scan marks and read
/// `CUDA_SIM_KERNEL_MARK void [CUDA_SIM_BOUNDS_MARK(expr)] name (`.
fn scan(cxx: &cc::Tool, inc: &Path, cu_dir: &Path, src: &Path) -> Vec<Kernel> {
    let mut cmd = cxx.to_command();
    cmd.args(["-E", "-P", "-x", "c++", "-std=c++17", "-DCUDA_SIM_SCAN"]).arg("-I").arg(inc).arg("-I").arg(cu_dir).arg(src);
    let res = cmd.output().unwrap_or_else(|e| panic!("running the C++ preprocessor ({:?}): {e}", cxx.path()));
    assert!(res.status.success(), "preprocessing {} for the CPU layer failed:\n{}", src.display(), String::from_utf8_lossy(&res.stderr));
    let text = String::from_utf8_lossy(&res.stdout);
    let mut kernels = Vec::new();
    let mark = "CUDA_SIM_KERNEL_MARK";
    let mut rest: &str = &text;
    while let Some(i) = rest.find(mark) {
        rest = &rest[i + mark.len()..];
        let mut s = rest.trim_start();
        s = s.strip_prefix("void").unwrap_or_else(|| panic!("{}: a __global__ function must return void", src.display())).trim_start();
        let mut bound = "0".to_string();
        if let Some(b) = s.strip_prefix("CUDA_SIM_BOUNDS_MARK") {
            let b = b.trim_start();
            assert!(b.starts_with('('), "{}: malformed __launch_bounds__", src.display());
            let mut depth = 0;
            let mut end = 0;
            for (k, ch) in b.char_indices() {
                match ch {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = k;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            // __launch_bounds__(max_threads[, min_blocks]): the first argument
            let args = &b[1..end];
            bound = args.split(',').next().unwrap_or("0").trim().to_string();
            s = b[end + 1..].trim_start();
        }
        let name: String = s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        assert!(!name.is_empty(), "{}: could not read a kernel name after __global__", src.display());
        assert!(s[name.len()..].trim_start().starts_with('('), "{}: `{name}` is not followed by its parameters", src.display());
        kernels.push(Kernel { name, bound });
    }
    kernels
}

fn write_unit(path: &Path, headers: &[String], ns: &str, src: &str, table: &str, kernels: &[Kernel], prefix: &str) {
    let mut u = String::from("// generated by kernels/sim/build_sim.rs: do not edit\n#include \"cuda_sim_registry.h\"\n");
    for h in headers {
        u.push_str(&format!("#include \"{h}\"\n"));
    }
    u.push_str(&format!("namespace {ns} {{\n#include \"{src}\"\n}}  // namespace {ns}\n"));
    u.push_str(&format!("extern \"C\" const cuda_sim::KernelEntry* {table}(int* n) {{\n    static const cuda_sim::KernelEntry t[] = {{\n"));
    for k in kernels {
        u.push_str(&format!("        cuda_sim::entry(\"{prefix}{}\", &{ns}::{}, (int)({})),\n", k.name, k.name, k.bound));
    }
    u.push_str("    };\n    *n = (int)(sizeof t / sizeof t[0]);\n    return t;\n}\n");
    write_if_changed(path, &u);
}

/// Writes `text` unless the file already holds it (cc recompiles on mtime).
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
