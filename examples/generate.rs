//! Load a Hugging Face Llama model and continue a prompt, on the backend a
//! name selects.
//!
//! ```text
//! cargo run --release --example generate -- MODEL_DIR [--device cpu|cuda|auto] [--new N] [ID ...]
//! cargo run --release --example generate -- tests/fixtures/gqa --new 16 1 72 9
//! ```
//!
//! Without prompt ids it starts from BOS. Prints the generated ids (and the
//! text, when the model directory has a tokenizer).

use llama2::model::generate::{Generator, Sampling};
use llama2::model::tokenizer::Tokenizer;
use llama2::model::Model;
use llama2::runtime::rng::Rng;
use llama2::runtime::select::{run_on, BackendJob, DeviceSpec};
use llama2::runtime::Backend;
use std::path::PathBuf;

struct Generate {
    dir: PathBuf,
    prompt: Vec<u32>,
    new: usize,
}

impl BackendJob for Generate {
    type Out = Result<(), Box<dyn std::error::Error>>;
    fn run<B: Backend>(self, be: &B) -> Self::Out {
        let model = Model::load(be, &self.dir)?;
        let prompt = if self.prompt.is_empty() { vec![model.cfg.bos_id] } else { self.prompt };
        let mut gen = Generator::new(be, &model, 1, prompt.len() + self.new)?;
        let out = gen.generate(be, &model, std::slice::from_ref(&prompt), self.new, &Sampling::GREEDY, &mut Rng::new(0), true)?;
        println!("{} on {}: {:?}", self.dir.display(), be.name(), out.ids[0]);
        if let Ok(tok) = Tokenizer::load(self.dir.join("tokenizer.model")) {
            println!("{}", tok.decode(&out.ids[0])?);
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: generate MODEL_DIR [--device NAME] [--new N] [ID ...]")?);
    let (mut device, mut new, mut prompt) = (DeviceSpec::Cpu, 20, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => device = args.next().ok_or("--device needs a name")?.parse()?,
            "--new" => new = args.next().ok_or("--new needs a number")?.parse()?,
            id => prompt.push(id.parse()?),
        }
    }
    run_on(device, 0, Generate { dir, prompt, new })?
}
