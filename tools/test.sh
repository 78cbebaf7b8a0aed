#!/usr/bin/env bash
# The test command of the README: builds everything and runs every test that
# needs no GPU. Installs what it needs into the project (see README).
#
# With `--features cuda` every CUDA kernel is compiled by nvcc 13.0 (from
# PyPI into .cuda/ by tools/install-cuda.sh) and the GPU-free CUDA checks run
# (entry points in the embedded images, no ptxas spills, launcher argument
# checks); the CPU tests run in the same build. With `--features cuda-sim`
# the same .cu sources are also compiled as C++ and run on the CPU layer
# (kernels/sim): its own tests (kernels/tests/sim_layer.rs, sim_tsan.rs) and
# the simulated gpu-check, every kernel row against the CPU reference with
# the GPU's tolerances plus the planted-bug tests
# (tools/src/cmd/gpu_check/sim_tests.rs; `train-tool gpu-check --sim` by
# hand). Checks that need a GPU are `train-tool gpu-check` without --sim
# (tools/device-check.sh). The CPU-only configuration (no CUDA code compiled)
# is checked too. The examples of examples/ run last, as a user would run them.
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
cargo test --workspace --release --features cuda,cuda-sim,mpi
# the embedding examples (README "Use it as a library"), on the fixtures
cargo run --release --features cuda,cuda-sim,mpi --example generate -- tests/fixtures/gqa --new 8 1 72 9
cargo run --release --features cuda,cuda-sim,mpi --example score -- tests/fixtures/heads/seqcls "5 9 17 3" "8 8"
cargo run --release --features cuda,cuda-sim,mpi --example train_step -- tests/fixtures/gqa 3
