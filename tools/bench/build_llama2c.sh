#!/usr/bin/env bash
# Builds llama2.c's run.c as the CPU inference peer, into .peers/ (git-ignored).
#
# The source is the PyPI sdist of llamac2py==0.1.4 (MIT, a packaging of an
# early karpathy/llama2.c run.c): the network here reaches PyPI, not GitHub.
# That run.c reads the EARLY llama2.c layout (docs/llama2c-formats.md, (c)):
# no GQA, RoPE from the freq_cis tables stored in the file, rmsnorm eps 1e-5,
# tokenizer.bin read from the current directory.
#
# Usage: bash tools/bench/build_llama2c.sh        (PYTHON=... to pick pip's python)
# Then:  cd <dir with tokenizer.bin> && /path/to/.peers/run model.bin 0.0 256
#        (args: checkpoint, temperature (0 = greedy argmax), steps; it prints
#        the decoded pieces and "achieved tok/s: X" last)
# A model + tokenizer.bin to run: tools/scripts/llama2c_ref.py bench-model / verify-runc.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-/work/pyref/venv/bin/python}"
VERSION=0.1.4
DEST=.peers
SRC="$DEST/llamac2py-$VERSION"

mkdir -p "$DEST"
if [ ! -f "$DEST/llamac2py-$VERSION.tar.gz" ]; then
    if ! "$PYTHON" -m pip download --no-deps --no-binary :all: "llamac2py==$VERSION" -d "$DEST" >"$DEST/pip.log" 2>&1; then
        cat "$DEST/pip.log" >&2
        echo "error: pip download of llamac2py==$VERSION failed; HINT: needs access to PyPI, or set PYTHON to a python with pip" >&2
        exit 1
    fi
fi
SDIST_SHA256=$(sha256sum "$DEST/llamac2py-$VERSION.tar.gz" | cut -d' ' -f1)
rm -rf "$SRC"
tar -xzf "$DEST/llamac2py-$VERSION.tar.gz" -C "$DEST"
if [ ! -f "$SRC/run.c" ]; then
    echo "error: $SRC/run.c not found in the sdist; HINT: the package layout changed, pin another version" >&2
    exit 1
fi

# -march=native: the peer gets the same ISA as our own native build; -fopenmp:
# run.c parallelises matmul and the heads with OpenMP (OMP_NUM_THREADS).
gcc -O3 -fopenmp -march=native "$SRC/run.c" -lm -o "$DEST/run"

echo "built $DEST/run from llamac2py==$VERSION sdist (sha256 $SDIST_SHA256), $(gcc --version | head -n1)"
echo "run:   cd DIR_WITH_tokenizer.bin && OMP_NUM_THREADS=2 $(pwd)/$DEST/run MODEL.bin 0.0 STEPS"
echo "model: /work/pyref/venv/bin/python tools/scripts/llama2c_ref.py bench-model --preset stories15m --out .peers/bench"
