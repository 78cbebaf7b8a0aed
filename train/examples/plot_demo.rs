//! Renders demonstration training-curve charts with `llama2_train::plot` into a directory
//! (default: the system temp dir), to look at the output by eye.
//!
//! `cargo run -p llama2-train --example plot_demo -- [OUT_DIR]`

use std::path::PathBuf;

use llama2_train::plot::{save_png, Chart, Series};

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

    let mut chart = Chart {
        title: "Pretraining, TinyStories 15M".into(),
        x_label: "step".into(),
        y_label: "cross-entropy loss (nats)".into(),
        series: vec![
            Series { name: "train loss".into(), points: loss_curve(3000, 1, 10.4, 2.1, 0.08, 1) },
            Series { name: "val loss".into(), points: loss_curve(3000, 500, 10.4, 2.3, 0.0, 2) },
        ],
        log_y: false,
    };
    save_png(&chart, &dir.join("plot_demo_loss.png"), 900, 560)?;
    chart.log_y = true;
    chart.title.push_str(" (log y)");
    save_png(&chart, &dir.join("plot_demo_loss_log.png"), 900, 560)?;
    save_png(&chart, &dir.join("plot_demo_small.png"), 320, 200)?;

    let empty = Chart {
        title: "Reward model accuracy".into(),
        x_label: "step".into(),
        y_label: "accuracy".into(),
        series: vec![Series { name: "helpfulness".into(), points: vec![] }],
        log_y: false,
    };
    save_png(&empty, &dir.join("plot_demo_empty.png"), 640, 400)?;

    let odd = Chart {
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
    save_png(&odd, &dir.join("plot_demo_degenerate.png"), 800, 500)?;

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
    let stress = Chart {
        title: "Stress: 30 series x 200k points, log y over nine decades".into(),
        x_label: "tokens".into(),
        y_label: "loss".into(),
        series,
        log_y: true,
    };
    let t = std::time::Instant::now();
    save_png(&stress, &dir.join("plot_demo_stress.png"), 1200, 750)?;
    println!("stress chart: {:.2} s", t.elapsed().as_secs_f64());
    println!("wrote plot_demo_*.png to {}", dir.display());
    Ok(())
}
