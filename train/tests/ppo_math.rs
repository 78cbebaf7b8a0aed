//! The PPO arithmetic against an independent numpy implementation
//! (`tools/scripts/ppo_ref.py`, written from the formulas of issue 11):
//! random ragged rollout batches with and without a safety reward model,
//! both score transforms, with and without the missing-EOS penalty.

use llama2_train::ppo::math::{MathInput, MathOutput};
use serde_json::Value;

/// Both sides compute in float64 with the same formulas in a different
/// order (numpy's pairwise sums vs sequential ones): ~1e-15 relative; 1e-6
/// is the bar. The absolute floor covers exact zeros.
const RTOL: f64 = 1e-6;
const ATOL: f64 = 1e-12;

fn close(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= RTOL * want.abs() + ATOL, "{what}: {got} vs numpy {want}");
}

#[test]
fn ppo_math_equals_the_numpy_reference() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ppo/math_cases.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let (mut with_safety, mut whitened) = (0, 0);
    for (i, c) in cases.iter().enumerate() {
        let inp: MathInput = serde_json::from_value(c["input"].clone()).unwrap();
        inp.validate().unwrap();
        with_safety += inp.episodes.iter().any(|e| e.episode.score_safety.is_some()) as usize;
        whitened += (inp.math.score_transform == llama2_train::ppo::math::ScoreTransform::LogitWhiten) as usize;
        let want: MathOutput = serde_json::from_value(c["output"].clone()).unwrap();
        let got = inp.run();
        for (k, (g, w)) in [
            ("policy_loss", (got.policy_loss, want.policy_loss)),
            ("value_loss", (got.value_loss, want.value_loss)),
            ("kl", (got.kl, want.kl)),
            ("clip_frac", (got.clip_frac, want.clip_frac)),
        ] {
            close(&format!("case {i} {k}"), g, w);
        }
        for (j, (g, w)) in got.scores.iter().zip(&want.scores).enumerate() {
            close(&format!("case {i} score {j}"), *g, *w);
        }
        for (name, g, w) in
            [("rewards", &got.rewards, &want.rewards), ("advantages", &got.advantages, &want.advantages), ("returns", &got.returns, &want.returns)]
        {
            assert_eq!(g.len(), w.len());
            for (j, (ge, we)) in g.iter().zip(w).enumerate() {
                assert_eq!(ge.len(), we.len(), "case {i} {name} episode {j}");
                for (t, (a, b)) in ge.iter().zip(we).enumerate() {
                    close(&format!("case {i} {name}[{j}][{t}]"), *a, *b);
                }
            }
        }
    }
    assert!(with_safety > 0 && with_safety < cases.len() && whitened > 0 && whitened < cases.len(), "the cases cover both switches");
}
