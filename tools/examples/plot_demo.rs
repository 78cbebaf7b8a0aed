//! Renders demonstration charts with `llama2_tools::plot` into a directory (default: the
//! system temp dir), to look at the output by eye: training curves (linear and log y),
//! grouped bars, a heat map, and degenerate and stress cases.
//!
//! `cargo run --release -p llama2-tools --example plot_demo -- [OUT_DIR]`

use std::path::PathBuf;

use llama2_tools::plot::{save_png, BarChart, BarSeries, HeatMap, LineChart, Series};

/// Uniform noise in [-0.5, 0.5) from a 64-bit LCG (Knuth's MMIX constants), so the
/// pictures are the same on every run without an RNG crate.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

/// A loss curve: exponential decay from `start` to `floor`, evaluated every `every`
/// steps, with multiplicative noise of relative size `noise`.
fn loss_curve(steps: usize, every: usize, start: f64, floor: f64, noise: f64, seed: u64) -> Vec<(f64, f64)> {
    let mut rng = Noise(seed);
    (0..=steps)
        .step_by(every)
        .map(|s| {
            let clean = floor + (start - floor) * (-(s as f64) / 400.0).exp();
            (s as f64, clean * (1.0 + noise * rng.next()))
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(std::env::temp_dir);

    let mut chart = LineChart {
        title: "Pretraining, TinyStories 15M".into(),
        x_label: "step".into(),
        y_label: "cross-entropy loss (nats)".into(),
        series: vec![
            Series { name: "train loss".into(), points: loss_curve(3000, 1, 10.4, 2.1, 0.08, 1) },
            Series { name: "val loss".into(), points: loss_curve(3000, 500, 10.4, 2.3, 0.0, 2) },
        ],
        log_y: false,
    };
    save_png(&chart.clone().into(), &dir.join("plot_demo_loss.png"), 900, 560)?;
    chart.log_y = true;
    chart.title.push_str(" (log y)");
    save_png(&chart.clone().into(), &dir.join("plot_demo_loss_log.png"), 900, 560)?;
    save_png(&chart.into(), &dir.join("plot_demo_small.png"), 320, 200)?;

    // Reward-model accuracy per rating bucket (the paper's Table 8 shape), two models.
    let buckets = ["significantly better", "better", "slightly better", "negligibly better / unsure"];
    let bars = BarChart {
        title: "Reward model accuracy per preference rating".into(),
        x_label: "rating bucket".into(),
        y_label: "accuracy".into(),
        categories: buckets.iter().map(|s| s.to_string()).collect(),
        series: vec![
            BarSeries { name: "Safety RM".into(), values: vec![0.947, 0.891, 0.680, 0.553] },
            BarSeries { name: "Helpfulness RM".into(), values: vec![0.802, 0.706, 0.601, 0.526] },
            BarSeries { name: "baseline (no margin)".into(), values: vec![0.78, f64::NAN, 0.58, 0.51] },
        ],
    };
    save_png(&bars.into(), &dir.join("plot_demo_bars.png"), 900, 560)?;

    let turns: Vec<String> = (1..=20).map(|t| format!("{t}")).collect();
    let adherence = BarChart {
        title: "System-message adherence per turn".into(),
        x_label: "dialogue turn".into(),
        y_label: "adherence".into(),
        categories: turns.clone(),
        series: vec![
            BarSeries { name: "baseline".into(), values: (0..20).map(|t| 0.95 * (-(t as f64) / 4.0).exp()).collect() },
            BarSeries { name: "GAtt".into(), values: (0..20).map(|t| 0.97 - 0.004 * t as f64).collect() },
        ],
    };
    save_png(&adherence.into(), &dir.join("plot_demo_adherence.png"), 900, 500)?;

    // Attention mass on the system message, per layer (rows) and turn (columns).
    let (layers, n_turns) = (8, 6);
    let heat = HeatMap {
        title: "Attention on the system message (GAtt)".into(),
        x_label: "dialogue turn".into(),
        y_label: "layer".into(),
        columns: (1..=n_turns).map(|t| format!("turn {t}")).collect(),
        rows: (0..layers).map(|l| format!("L{l}")).collect(),
        values: (0..layers)
            .map(|l| {
                (0..n_turns).map(|t| if (l, t) == (3, 4) { f64::NAN } else { 0.6 * (-(t as f64) / 5.0).exp() * (1.0 + l as f64) / layers as f64 }).collect()
            })
            .collect(),
        scale_label: "share of attention on system tokens".into(),
    };
    save_png(&heat.into(), &dir.join("plot_demo_heat.png"), 900, 600)?;

    let big = HeatMap {
        title: "32 layers x 40 turns".into(),
        x_label: "turn".into(),
        y_label: "layer".into(),
        columns: (1..=40).map(|t| t.to_string()).collect(),
        rows: (0..32).map(|l| l.to_string()).collect(),
        values: (0..32).map(|l| (0..40).map(|t| ((l * 7 + t * 3) % 17) as f64 / 17.0).collect()).collect(),
        scale_label: "value".into(),
    };
    save_png(&big.into(), &dir.join("plot_demo_heat_big.png"), 900, 700)?;

    let empty = LineChart {
        title: "Reward model accuracy".into(),
        x_label: "step".into(),
        y_label: "accuracy".into(),
        series: vec![Series { name: "helpfulness".into(), points: vec![] }],
        log_y: false,
    };
    save_png(&empty.into(), &dir.join("plot_demo_empty.png"), 640, 400)?;

    let odd = LineChart {
        title: "PPO reward".into(),
        x_label: "PPO iteration".into(),
        y_label: "mean reward".into(),
        series: vec![
            Series { name: "constant".into(), points: vec![(0.0, 0.5), (10.0, 0.5), (20.0, 0.5)] },
            Series { name: "single point".into(), points: vec![(5.0, 0.7)] },
            Series { name: "with NaN and inf".into(), points: vec![(0.0, 0.2), (4.0, f64::NAN), (8.0, 0.3), (12.0, f64::INFINITY), (16.0, 0.45)] },
        ],
        log_y: false,
    };
    save_png(&odd.into(), &dir.join("plot_demo_degenerate.png"), 800, 500)?;

    // Many series, 200k points each, x in the millions, y over nine decades.
    let series = (0..30)
        .map(|i| Series {
            name: format!("run {i}: lr {:.0e}, a rather long series name", 3e-4 / f64::from(i + 1)),
            points: (0..200_000)
                .map(|s| {
                    let x = s as f64 * 10.0;
                    (x, 1e3 * (-(x / 2e5) * (1.0 + f64::from(i) * 0.1)).exp() + 1e-6)
                })
                .collect(),
        })
        .collect();
    let stress = LineChart {
        title: "Stress: 30 series x 200k points, log y over nine decades".into(),
        x_label: "tokens".into(),
        y_label: "loss".into(),
        series,
        log_y: true,
    };
    let t = std::time::Instant::now();
    save_png(&stress.into(), &dir.join("plot_demo_stress.png"), 1200, 750)?;
    println!("stress chart: {:.2} s", t.elapsed().as_secs_f64());
    println!("wrote plot_demo_*.png to {}", dir.display());
    Ok(())
}
