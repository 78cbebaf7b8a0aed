//! Plots of training runs for reports: loss curves (training and
//! validation) from a run's metrics records.

use anyhow::Result;
use llama2_tools::plot::{save_png, LineChart, Series};
use serde_json::Value;
use std::path::Path;

/// Points `(step, record[key])` of the records that have `key`.
fn points(recs: &[Value], key: &str) -> Vec<(f64, f64)> {
    recs.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?))).collect()
}

/// One PNG per stage (`<dir>/<stage>_loss.png`) with its training and
/// validation loss. Returns (title, file name relative to `dir`).
pub fn loss_plots(dir: &Path, stages: &[(&str, &[Value])]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (name, recs) in stages {
        let chart = LineChart {
            title: format!("{name}: loss"),
            x_label: "step".into(),
            y_label: "cross-entropy (nats/token)".into(),
            series: vec![Series { name: "train".into(), points: points(recs, "loss") }, Series { name: "validation".into(), points: points(recs, "val_loss") }],
            log_y: false,
        };
        let file = format!("{name}_loss.png");
        let title = chart.title.clone();
        save_png(&chart.into(), &dir.join(&file), 900, 500)?;
        out.push((title, file));
    }
    Ok(out)
}

/// One PNG per group of metrics (`<dir>/<prefix>_<name>.png`), each curve a
/// metric of the records against `step`. Returns (title, file name).
pub fn metric_plots(dir: &Path, prefix: &str, recs: &[Value], groups: &[(&str, &[&str])]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (name, keys) in groups {
        let chart = LineChart {
            title: format!("{prefix}: {name}"),
            x_label: "iteration".into(),
            y_label: name.to_string(),
            series: keys.iter().map(|k| Series { name: k.to_string(), points: points(recs, k) }).collect(),
            log_y: false,
        };
        let file = format!("{prefix}_{name}.png");
        let title = chart.title.clone();
        save_png(&chart.into(), &dir.join(&file), 900, 500)?;
        out.push((title, file));
    }
    Ok(out)
}
