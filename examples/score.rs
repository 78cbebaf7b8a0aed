//! Score sequences with a reward model (a `LlamaForSequenceClassification`
//! directory with one label): the score head read at the last token of
//! each sequence, batched with right padding.
//!
//! ```text
//! cargo run --release --example score -- RM_DIR "ID ID ID" ["ID ID" ...]
//! cargo run --release --example score -- tests/fixtures/heads/seqcls "5 9 17 3" "8 8"
//! ```

use llama2::model::{Acts, LogitRows, Model};
use llama2::runtime::CpuBackend;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: score RM_DIR \"IDS\" [\"IDS\" ...]")?);
    let seqs: Vec<Vec<u32>> = args.map(|s| s.split_whitespace().map(|x| x.parse()).collect::<Result<_, _>>()).collect::<Result<_, _>>()?;
    if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
        return Err("give at least one non-empty sequence of token ids".into());
    }
    let be = CpuBackend::new(0)?;
    let model = Model::load(&be, &dir)?;
    // one ragged batch: right padding, never attended
    let (b, t) = (seqs.len(), seqs.iter().map(|s| s.len()).max().unwrap_or(0));
    let mut tokens = vec![model.cfg.pad_id.unwrap_or(0); b * t];
    for (i, s) in seqs.iter().enumerate() {
        tokens[i * t..i * t + s.len()].copy_from_slice(s);
    }
    let lens: Vec<u32> = seqs.iter().map(|s| s.len() as u32).collect();
    let mut acts = Acts::new(&be, &model.cfg, b, t, false, LogitRows::All)?;
    model.trunk(&be, &mut acts, &tokens, Some(&lens), None)?;
    let last = Model::<CpuBackend>::last_rows(b, t, Some(&lens))?;
    for (s, score) in seqs.iter().zip(model.score_rows(&be, &mut acts, &last)?) {
        println!("{{\"ids\": {s:?}, \"score\": {score}, \"prob\": {}}}", 1.0 / (1.0 + (-score).exp()));
    }
    Ok(())
}
