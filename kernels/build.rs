//! Build script. Without the `cuda` feature nothing CUDA is built.
//! With it, the CUDA sources under `cu/` are compiled by nvcc (see the CUDA
//! issue; filled in by the CUDA backend work).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
