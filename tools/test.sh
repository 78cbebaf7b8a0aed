#!/usr/bin/env bash
# The test command of the README: builds everything and runs every test that
# needs no GPU. Installs what it needs into the project (see README).
#
# With `--features cuda` every CUDA kernel is compiled by nvcc 13.0 (from
# PyPI into .cuda/ by tools/install-cuda.sh) and the GPU-free CUDA checks run
# (entry points in the embedded images, no ptxas spills, launcher argument
# checks); the CPU tests run in the same build. Checks that need a GPU are
# not cargo tests: they are `train-tool gpu-check` (tools/device-check.sh).
# The examples of examples/ run last, as a user would run them.
# The CPU-only configuration (no CUDA code compiled) is checked too.
#
# With `--features mpi` (Open MPI from Debian's packages, by
# tools/install-mpi.sh) data parallelism is built and its tests run under
# `mpirun` (tools/tests/dist.rs: 2 and 4 ranks on the CPU, oversubscribed);
# the NCCL communicator is compiled with the `cuda` feature.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-cuda.sh
bash tools/install-mpi.sh
cargo check --workspace --all-targets
cargo test --workspace --release --features cuda,mpi
# the embedding examples (README "Use it as a library"), on the fixtures
cargo run --release --features cuda,mpi --example generate -- tests/fixtures/gqa --new 8 1 72 9
cargo run --release --features cuda,mpi --example score -- tests/fixtures/heads/seqcls "5 9 17 3" "8 8"
cargo run --release --features cuda,mpi --example train_step -- tests/fixtures/gqa 3
