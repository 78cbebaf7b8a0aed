#!/usr/bin/env python3
"""PyTorch peer numbers for tools/device-check.sh: the same operations at
the same Llama-2 7B shapes, with the same keys, as `train-tool gpu-check
--bench-json` (tools/src/cmd/gpu_check/bench.rs), timed the same way
(CUDA events, WARMUP runs, median of REPS, L2 flushed before each timed run
of a memory-bound op). Eager PyTorch ops; attention through
scaled_dot_product_attention with the fastest backend that runs;
torch.optim.AdamW(fused=not SMOKE); torch.matmul.

Writes a JSON list of {"key", "ms", "backend"?} to --json.
"""
import argparse
import json

import torch
import torch.nn.functional as F

REPS = 15
WARMUP = 3
L2_FLUSH_BYTES = 256 << 20


SMOKE = False


def timed(fn, flush=None):
    for _ in range(WARMUP):
        fn()
    ts = []
    for _ in range(REPS):
        if flush is not None:
            flush.zero_()
        if SMOKE:  # CPU smoke test of this script: wall clock
            import time
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
            continue
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks this script runs, times nothing real")
    args = ap.parse_args()
    global SMOKE
    SMOKE = args.smoke
    dev = "cpu" if SMOKE else "cuda"
    torch.manual_seed(7)
    bf = torch.bfloat16
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.float32, device=dev)
    out = []

    def rec(key, ms, **extra):
        print(f"peer  {key:<40} {ms:10.4f} ms {extra if extra else ''}", flush=True)
        out.append({"key": key, "ms": ms, **extra})

    bt, c, ffn, vocab, nh, hd = 4 * 4096, 4096, 11008, 32000, 32, 128
    T = 4096  # sequence length of the attention and rope benches
    big = 1 << 28  # elements of the copy and AdamW benches
    mm = 8192
    if SMOKE:
        bt, c, ffn, vocab, nh, hd, T, big, mm = 64, 256, 688, 1000, 4, 128, 128, 1 << 16, 256

    n = big
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    rec("copy_1GiB", timed(lambda: dst.copy_(src)))
    del src, dst
    a = torch.randn(mm, mm, device=dev, dtype=bf)
    b = torch.randn(mm, mm, device=dev, dtype=bf)
    rec("matmul_8192_bf16", timed(lambda: torch.matmul(a, b)))
    del a, b
    x = torch.randn(bt, c, device=dev, dtype=bf)
    w = torch.randn(ffn, c, device=dev, dtype=bf)
    rec("matmul_linear_16384x11008x4096", timed(lambda: F.linear(x, w)))
    del w

    wt = torch.randn(c, device=dev, dtype=bf)
    rec("rmsnorm_fwd", timed(lambda: F.rms_norm(x, (c,), wt, 1e-5), flush))
    xr = x.clone().requires_grad_(True)
    wr = wt.clone().requires_grad_(True)
    y = F.rms_norm(xr, (c,), wr, 1e-5)
    dy = torch.randn_like(y)
    rec("rmsnorm_bwd", timed(lambda: torch.autograd.grad(y, (xr, wr), dy, retain_graph=True), flush))
    o = torch.empty_like(x)
    rec("add_bf16", timed(lambda: torch.add(x, dy, out=o), flush))
    del xr, wr, y, dy, o

    # rope as transformers applies it: q*cos + rotate_half(q)*sin
    q = torch.randn(bt // T, T, nh, hd, device=dev, dtype=bf)
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd))
    ang = torch.outer(torch.arange(T, device=dev, dtype=torch.float32), inv)
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos().to(bf)[None, :, None, :], emb.sin().to(bf)[None, :, None, :]

    def rope():
        x1, x2 = q[..., : hd // 2], q[..., hd // 2:]
        return q * cos + torch.cat((-x2, x1), dim=-1) * sin

    rec("rope_fwd", timed(rope, flush))
    del q

    g = torch.randn(bt, ffn, device=dev, dtype=bf)
    u = torch.randn(bt, ffn, device=dev, dtype=bf)
    rec("swiglu_fwd", timed(lambda: F.silu(g) * u, flush))
    gr, ur = g.clone().requires_grad_(True), u.clone().requires_grad_(True)
    h = F.silu(gr) * ur
    dh = torch.randn_like(h)
    rec("swiglu_bwd", timed(lambda: torch.autograd.grad(h, (gr, ur), dh, retain_graph=True), flush))
    del g, u, gr, ur, h, dh

    table = torch.randn(vocab, c, device=dev, dtype=bf)
    tok = torch.randint(0, vocab, (bt,), device=dev)
    rec("embedding_fwd", timed(lambda: F.embedding(tok, table), flush))
    tr = table.clone().requires_grad_(True)
    e = F.embedding(tok, tr)
    de = torch.randn_like(e)
    rec("embedding_bwd", timed(lambda: torch.autograd.grad(e, (tr,), de, retain_graph=True), flush))
    del table, tr, e, de

    rows = 4096
    logits = torch.randn(rows, vocab, device=dev, dtype=bf)
    tgt = torch.randint(0, vocab, (rows,), device=dev)

    def ce():
        lg = logits.detach().requires_grad_(True)
        loss = F.cross_entropy(lg, tgt)
        return torch.autograd.grad(loss, (lg,))

    rec("cross_entropy_fwd_bwd", timed(ce, flush))
    del logits

    np_ = big
    p = torch.randn(np_, device=dev, requires_grad=True)
    p.grad = torch.randn(np_, device=dev)
    opt = torch.optim.AdamW([p], lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=not SMOKE)
    rec("adamw_2^28", timed(opt.step))
    del p, opt

    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if SMOKE:
        backends = [SDPBackend.MATH]
    for nkv in (32, 8):
        kvh = min(nkv, nh)
        q = torch.randn(1, nh, T, hd, device=dev, dtype=bf)
        k = torch.randn(1, kvh, T, hd, device=dev, dtype=bf)
        v = torch.randn(1, kvh, T, hd, device=dev, dtype=bf)
        gqa = kvh != nh
        best_f, best_b = None, None
        for be in backends:
            try:
                with sdpa_kernel([be]):
                    t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa))
                if best_f is None or t < best_f[0]:
                    best_f = (t, be.name)
                with sdpa_kernel([be]):
                    qr, kr, vr = (z.clone().requires_grad_(True) for z in (q, k, v))
                    o = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True, enable_gqa=gqa)
                    do = torch.randn_like(o)
                    t = timed(lambda: torch.autograd.grad(o, (qr, kr, vr), do, retain_graph=True))
                if best_b is None or t < best_b[0]:
                    best_b = (t, be.name)
            except RuntimeError as err:
                print(f"peer  sdpa backend {be.name} kv={nkv}: not available ({str(err).splitlines()[0][:80]})")
        if best_f:
            rec(f"attention_fwd_t4096_d128_kv{nkv}", best_f[0], backend=best_f[1])
        if best_b:
            rec(f"attention_bwd_t4096_d128_kv{nkv}", best_b[0], backend=best_b[1])
    q = torch.randn(8, nh, 1, hd, device=dev, dtype=bf)
    k = torch.randn(8, nh, T, hd, device=dev, dtype=bf)
    v = torch.randn(8, nh, T, hd, device=dev, dtype=bf)
    rec("attention_decode_b8_t4096_d128", timed(lambda: F.scaled_dot_product_attention(q, k, v), flush))

    with open(args.json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
