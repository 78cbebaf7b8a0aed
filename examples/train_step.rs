//! Run training steps of a language model on your own batches: a model
//! loaded from a Hugging Face directory, batches built in memory, the
//! library's trainer (accumulation, clipping, AdamW with the paper's
//! settings). Prints the loss of each step.
//!
//! ```text
//! cargo run --release --example train_step -- MODEL_DIR [STEPS]
//! cargo run --release --example train_step -- tests/fixtures/gqa 5
//! ```

use llama2::model::Model;
use llama2::runtime::rng::Rng;
use llama2::runtime::CpuBackend;
use llama2::train::optim::AdamWConfig;
use llama2::train::step::{LmTrainer, MicroBatch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: train_step MODEL_DIR [STEPS]")?;
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let be = CpuBackend::new(0)?;
    let model = Model::load(&be, std::path::Path::new(&dir))?;
    let (b, t, v) = (2, 32, model.cfg.vocab_size as u64);
    // your data: here a repeating pattern the model can learn in a few steps
    let mut rng = Rng::new(1);
    let pattern: Vec<u32> = (0..8).map(|_| rng.below(v) as u32).collect();
    let seq: Vec<u32> = (0..b * (t + 1)).map(|i| pattern[i % pattern.len()]).collect();
    let batch = MicroBatch {
        inputs: (0..b).flat_map(|r| seq[r * (t + 1)..r * (t + 1) + t].to_vec()).collect(),
        targets: (0..b).flat_map(|r| seq[r * (t + 1) + 1..(r + 1) * (t + 1)].iter().map(|&x| x as i32)).collect(),
    };
    let mut tr = LmTrainer::new(&be, model, b, t, AdamWConfig::default())?;
    for step in 0..steps {
        let st = tr.step(&be, std::slice::from_ref(&batch), 1e-3)?;
        println!("step {step}: loss {:.4} grad norm {:.3}", st.loss, st.grad_norm);
    }
    Ok(())
}
