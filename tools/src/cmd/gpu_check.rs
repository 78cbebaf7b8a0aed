//! `train-tool gpu-check` (CUDA issue).
use clap::Args;

#[derive(Args)]
pub struct GpuCheckArgs {}

pub fn run(_a: GpuCheckArgs) -> anyhow::Result<()> {
    anyhow::bail!("gpu-check: not built yet")
}
