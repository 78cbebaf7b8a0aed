#!/usr/bin/env python3
"""Prints the per-kernel resource table of docs/kernels.md from the ptxas
reports a `--features cuda` build leaves in OUT_DIR (registers, static
shared memory, stack frame, spills, for sm_90a and sm_80).

Usage: python3 tools/kernels-report.py [target/release]
"""
import glob
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/release"
files = sorted(glob.glob(os.path.join(root, "build", "llama2-kernels-*", "out", "*.ptxas.txt")), key=os.path.getmtime)
latest = {}
for f in files:  # newest build of each family wins
    latest[os.path.basename(f)] = f
rows = []
for name in sorted(latest):
    cur = None
    for line in open(latest[name]):
        m = re.search(r"Compiling entry function '(\w+)' for '(\w+)'", line)
        if m:
            cur = {"kernel": m.group(1), "target": m.group(2), "family": name.split(".")[0]}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["st"], cur["ld"] = m.groups()
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = m.group(1)
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = s.group(1) if s else "0"
print("| family | kernel | regs sm_90a | regs sm_80 | static smem (B) | stack (B) | spills st/ld |")
print("|---|---|---|---|---|---|---|")
by = {}
for r in rows:
    by.setdefault((r["family"], r["kernel"]), {})[r["target"]] = r
for (fam, k), t in sorted(by.items()):
    h, a = t.get("sm_90a", {}), t.get("sm_80", {})
    stack = max(int(h.get("stack", 0)), int(a.get("stack", 0)))
    spills = f"{max(int(h.get('st', 0)), int(a.get('st', 0)))}/{max(int(h.get('ld', 0)), int(a.get('ld', 0)))}"
    print(f"| {fam} | `{k}` | {h.get('regs', '?')} | {a.get('regs', '?')} | {h.get('smem', '?')} | {stack} | {spills} |")
