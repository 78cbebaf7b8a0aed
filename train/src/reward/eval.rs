//! Reward-model accuracy as the paper reports it (Table 8): the fraction
//! of pairs whose chosen answer scores strictly higher than the rejected
//! one (a tie counts as wrong), overall and per rating bucket, with the
//! mean margin r_c - r_r; for safety data also per safety category (chosen
//! safe & other unsafe, both safe, both unsafe).
//!
//! Public items: [`Bucket`], [`RmEval`], [`evaluate_scores`].

use super::data::{Margin, Pair, Rating, SafetyCategory};
use super::ranking_loss;
use serde::Serialize;

/// Accuracy of one group of pairs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    pub name: String,
    pub pairs: usize,
    /// pairs with r_c > r_r
    pub correct: usize,
    /// correct / pairs (None for an empty bucket)
    pub accuracy: Option<f64>,
    /// mean of r_c - r_r (None for an empty bucket)
    pub mean_margin: Option<f64>,
}

impl Bucket {
    fn of(name: &str, gaps: impl Iterator<Item = f64>) -> Self {
        let (mut n, mut correct, mut sum) = (0usize, 0usize, 0f64);
        for g in gaps {
            n += 1;
            correct += (g > 0.0) as usize;
            sum += g;
        }
        let mean = |x: f64| (n > 0).then(|| x / n as f64);
        Bucket { name: name.to_string(), pairs: n, correct, accuracy: mean(correct as f64), mean_margin: mean(sum) }
    }
}

/// Everything `train-tool rm eval` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RmEval {
    pub overall: Bucket,
    /// mean ranking loss with the margins of `margin` (no centring term)
    pub loss: f64,
    pub margin: Margin,
    /// the four rating buckets, largest difference first (Table 8), then
    /// "no rating" when some pairs have none
    pub by_rating: Vec<Bucket>,
    /// the safety categories (empty when no pair has safety labels)
    pub by_safety: Vec<Bucket>,
}

/// Accuracy of `pairs` from the scores of their chosen and rejected
/// sequences.
pub fn evaluate_scores(pairs: &[Pair], chosen: &[f32], rejected: &[f32], margin: Margin) -> RmEval {
    let gap = |i: usize| chosen[i] as f64 - rejected[i] as f64;
    let n = pairs.len();
    let overall = Bucket::of("all", (0..n).map(gap));
    let loss = if n == 0 { 0.0 } else { (0..n).map(|i| ranking_loss(gap(i) - margin.of(pairs[i].rating)).0).sum::<f64>() / n as f64 };
    let mut by_rating: Vec<Bucket> = Rating::ALL.iter().map(|&r| Bucket::of(r.name(), (0..n).filter(|&i| pairs[i].rating == Some(r)).map(gap))).collect();
    if pairs.iter().any(|p| p.rating.is_none()) {
        by_rating.push(Bucket::of("no rating", (0..n).filter(|&i| pairs[i].rating.is_none()).map(gap)));
    }
    let by_safety = if pairs.iter().any(|p| p.safety.is_some()) {
        SafetyCategory::ALL
            .iter()
            .filter(|&&c| c != SafetyCategory::ChosenUnsafeOtherSafe || pairs.iter().any(|p| p.safety == Some(c)))
            .map(|&c| Bucket::of(c.name(), (0..n).filter(|&i| pairs[i].safety == Some(c)).map(gap)))
            .collect()
    } else {
        Vec::new()
    };
    RmEval { overall, loss, margin, by_rating, by_safety }
}

impl RmEval {
    /// A plain-text table: one line per bucket.
    pub fn table(&self) -> String {
        let mut s = format!("{:<28} {:>7} {:>9} {:>12}\n", "bucket", "pairs", "accuracy", "mean margin");
        let line = |b: &Bucket| {
            let f = |x: Option<f64>, pct: bool| match x {
                None => "-".to_string(),
                Some(v) if pct => format!("{:.1}%", 100.0 * v),
                Some(v) => format!("{v:+.4}"),
            };
            format!("{:<28} {:>7} {:>9} {:>12}\n", b.name, b.pairs, f(b.accuracy, true), f(b.mean_margin, false))
        };
        s += &line(&self.overall);
        s += "by rating\n";
        for b in &self.by_rating {
            s += &line(b);
        }
        if !self.by_safety.is_empty() {
            s += "by safety category\n";
            for b in &self.by_safety {
                s += &line(b);
            }
        }
        s += &format!("mean ranking loss ({:?} margin): {:.4}\n", self.margin, self.loss);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(r: Option<Rating>, safety: Option<SafetyCategory>) -> Pair {
        Pair { chosen: vec![1], rejected: vec![1], rating: r, safety, unsafe_prompt: None }
    }

    #[test]
    fn buckets_count_strictly_greater() {
        use Rating::*;
        let pairs = vec![
            p(Some(SignificantlyBetter), Some(SafetyCategory::BothSafe)),
            p(Some(SignificantlyBetter), None),
            p(Some(NegligiblyBetter), Some(SafetyCategory::BothUnsafe)),
            p(None, None),
        ];
        let c = [1.0, 0.5, 0.0, 2.0];
        let r = [0.0, 1.0, 0.0, 1.0]; // gaps 1, -0.5, 0 (a tie: wrong), 1
        let e = evaluate_scores(&pairs, &c, &r, Margin::None);
        assert_eq!((e.overall.pairs, e.overall.correct), (4, 2));
        assert_eq!(e.overall.mean_margin, Some(1.5 / 4.0));
        assert_eq!(e.by_rating.len(), 5);
        assert_eq!((e.by_rating[0].pairs, e.by_rating[0].correct, e.by_rating[0].accuracy), (2, 1, Some(0.5)));
        assert_eq!(e.by_rating[1].accuracy, None);
        assert_eq!((e.by_rating[3].pairs, e.by_rating[3].correct), (1, 0));
        assert_eq!((e.by_rating[4].name.as_str(), e.by_rating[4].correct), ("no rating", 1));
        assert_eq!(e.by_safety.len(), 3);
        assert_eq!((e.by_safety[1].pairs, e.by_safety[1].correct), (1, 1));
        // loss with no margin: softplus(-gap) averaged
        let sp = |z: f64| (1.0 + z.exp()).ln();
        let want = (sp(-1.0) + sp(0.5) + sp(0.0) + sp(-1.0)) / 4.0;
        assert!((e.loss - want).abs() < 1e-12);
        assert!(e.table().contains("significantly better"));
    }
}
