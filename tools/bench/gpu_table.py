#!/usr/bin/env python3
"""Joins gpu-check's results (check JSON, our timings) with the PyTorch
peer's timings into the table tools/device-check.sh prints last.

Usage: table.py CHECK_JSON[,CHECK_JSON...] OURS_JSON PEER_JSON [STEP_JSON]

Several check files (tools/device-check.sh: the smoke test, the checks, the
loss curve) are joined; each gets its own passed/failed line.

ratio = peer ms / our ms (above 1: we are faster). For memory-bound kernels
the rate is GB/s of bytes read + written once, also as a fraction of the
device copy bandwidth measured in the same run (ours: copy_1GiB); for
matrix-bound ones TFLOP/s and the fraction of the measured bf16 matmul rate.
"""
import json
import sys

# which gpu-check rows hold the error of each timed kernel
CHECK_PREFIX = {
    "rmsnorm_fwd": "rmsnorm_fwd",
    "rmsnorm_bwd": "rmsnorm_bwd",
    "add_bf16": "add_bf16",
    "rope_fwd": "rope_fwd",
    "swiglu_fwd": "swiglu_fwd",
    "swiglu_bwd": "swiglu_bwd",
    "embedding_fwd": "embedding_fwd",
    "embedding_bwd": "embedding_bwd",
    "cross_entropy_fwd_bwd": "cross_entropy",
    "adamw_2^28": "adamw",
    "matmul_8192_bf16": "matmul",
    "matmul_linear_16384x11008x4096": "matmul",
    # gpu-check keeps one T = 4096 configuration (hd 128, 16 heads, 8 KV heads):
    # its rows stand for the timed 32-head shapes of the same kernels
    "attention_fwd_t4096_d128_kv32": "attention b=1 t=4096 hd=128 h=16 kv=8 fwd V3",
    "attention_fwd_t4096_d128_kv8": "attention b=1 t=4096 hd=128 h=16 kv=8 fwd V3",
    "attention_bwd_t4096_d128_kv32": "attention b=1 t=4096 hd=128 h=16 kv=8 bwd V3",
    "attention_bwd_t4096_d128_kv8": "attention b=1 t=4096 hd=128 h=16 kv=8 bwd V3",
    "attention_fwd_t4096_d128_kv32_v2": "attention b=1 t=4096 hd=128 h=16 kv=8 fwd Mma",
    "attention_bwd_t4096_d128_kv32_v2": "attention b=1 t=4096 hd=128 h=16 kv=8 bwd Mma",
    "attention_fwd_t4096_d128_kv32_v1": "attention b=1 t=4096 hd=128 h=16 kv=8 fwd Simple",
    "attention_bwd_t4096_d128_kv32_v1": "attention b=1 t=4096 hd=128 h=16 kv=8 bwd Simple",
    "attention_decode_b8_t4096_d128": "attention decode",
    # the fused projections: every qkv / mlp_in row (all shapes) stands for
    # the timed 7B shape
    "qkv_fwd_7b": "qkv ",
    "qkv_bwd_7b": "qkv ",
    "mlp_in_fwd_7b": "mlp_in ",
    "mlp_in_bwd_7b": "mlp_in ",
}


def num(x):
    """A JSON number as a float; null (serde_json's NaN or infinity, written
    for failed or errored checks) and NaN count as infinitely bad."""
    if x is None:
        return float("inf")
    x = float(x)
    return float("inf") if x != x else x


def covers(check, pre):
    """Whether gpu-check row `check` belongs to the kernel whose rows start
    with `pre`: its own rows, or the error row of its check group."""
    if check.startswith(pre):
        return True
    return check.endswith(": error") and pre.startswith(check[: -len(": error")])


def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"table: cannot read {p}: {e}")
        return []


def main():
    check_files = sys.argv[1].split(",")
    per_file = [(p, load(p)) for p in check_files]
    checks = [c for _, rows in per_file for c in rows]
    ours, peer = (load(p) for p in sys.argv[2:4])
    step = None
    if len(sys.argv) > 4:
        try:
            with open(sys.argv[4]) as f:
                step = json.loads(f.read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError) as e:
            print(f"table: no training-step result in {sys.argv[4]}: {e}")
    peer_by = {r["key"]: r for r in peer}
    ours_by = {r["key"]: r for r in ours}
    copy_gbs = None
    mm_tfs = None
    if "copy_1GiB" in ours_by:
        r = ours_by["copy_1GiB"]
        copy_gbs = r["bytes"] / (r["ms"] * 1e-3) / 1e9
    if "matmul_8192_bf16" in ours_by:
        r = ours_by["matmul_8192_bf16"]
        mm_tfs = r["flops"] / (r["ms"] * 1e-3) / 1e12
    print()
    print(f"{'kernel':<34} {'max err':>9} {'tol%':>6} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'rate':>16} {'of ceiling':>10}")
    for r in ours:
        key = r["key"]
        pre = CHECK_PREFIX.get(key)
        rows = [c for c in checks if pre and covers(c["check"], pre)]
        err = max((num(c["max_abs_err"]) for c in rows), default=float("nan"))
        used = max((num(c["tol_used"]) for c in rows), default=float("nan"))
        bad = any(not c["ok"] for c in rows)
        p = peer_by.get(key[:-3] if key.endswith(("_v1", "_v2")) else key)
        pms = p["ms"] if p else float("nan")
        ratio = pms / r["ms"] if p else float("nan")
        if r.get("bytes"):
            gbs = r["bytes"] / (r["ms"] * 1e-3) / 1e9
            rate = f"{gbs:9.0f} GB/s"
            frac = f"{gbs / copy_gbs:9.0%}" if copy_gbs else ""
        else:
            tfs = r["flops"] / (r["ms"] * 1e-3) / 1e12
            rate = f"{tfs:7.1f} TFLOP/s"
            frac = f"{tfs / mm_tfs:9.0%}" if mm_tfs else ""
        tag = " FAIL" if bad else ""
        be = f" ({p['backend']})" if p and p.get("backend") else ""
        print(f"{key:<34} {err:9.2e} {100 * used:5.0f}% {r['ms']:9.3f} {pms:9.3f} {ratio:6.2f} {rate:>16} {frac:>10}{tag}{be}")
    # what a fusion gains: the backend's op against its unfused composition,
    # timed in the same run on the same buffers
    for r in ours:
        u = ours_by.get(r["key"] + "_unfused")
        if u:
            print(f"fusion {r['key']:<27} fused {r['ms']:9.3f} ms, unfused {u['ms']:9.3f} ms: {u['ms'] / r['ms']:5.2f}x")
    if copy_gbs:
        pc = peer_by.get("copy_1GiB")
        ptxt = f", torch {pc and 2 * 4 * (1 << 28) / (pc['ms'] * 1e-3) / 1e9:.0f} GB/s" if pc else ""
        print(f"device copy bandwidth (read + write): ours {copy_gbs:.0f} GB/s{ptxt}")
    if mm_tfs:
        pm = peer_by.get("matmul_8192_bf16")
        ptxt = f", torch.matmul {2 * 8192 ** 3 / (pm['ms'] * 1e-3) / 1e12:.0f} TFLOP/s" if pm else ""
        print(f"bf16 matmul 8192^3: cuBLASLt {mm_tfs:.0f} TFLOP/s{ptxt}")
    if step and mm_tfs:
        tf = step["flops_per_s"] / 1e12
        # MFU against the bf16 rate measured in this run, and against the
        # H100/H200 SXM datasheet dense bf16 rate (989 TFLOP/s)
        print(f"training step 1B (B=4, T=2048): {step['step_ms_median']:.1f} ms, {step['tokens_per_s']:.0f} tokens/s, "
              f"{tf:.0f} TFLOP/s = MFU {tf / mm_tfs:.0%} of measured matmul, {tf / 989:.0%} of 989 TFLOP/s")
    for path, rows in per_file:
        failed = sum(1 for c in rows if not c["ok"])
        if rows:
            print(f"{path.rsplit('/', 1)[-1]}: {len(rows) - failed} passed, {failed} failed")
        else:
            print(f"{path.rsplit('/', 1)[-1]}: NO RESULTS (missing: that step did not finish; see device.log)")


if __name__ == "__main__":
    main()
