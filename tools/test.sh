#!/usr/bin/env bash
# The test command of the README: builds everything and runs every test that
# needs no GPU. Installs what it needs into the project (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --release
