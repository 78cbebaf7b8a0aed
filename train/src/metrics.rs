//! Metrics of a run: one JSON line per step (`metrics.jsonl`), a progress
//! bar with the same numbers, and the energy and carbon estimate in the
//! paper's style (Llama 2 paper, Table 2: device-hours × power per device ×
//! carbon intensity of the grid).
//!
//! Public items: [`MetricsLog`], [`Progress`], [`Energy`].

use crate::error::{Result, TrainError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends JSON records, one per line, flushed after each.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending. With `keep_until = Some(step)` (resume),
    /// records of later steps, left by the interrupted run, are dropped
    /// first, so the log reads as one run.
    pub fn open(path: &Path, keep_until: Option<u64>) -> Result<Self> {
        if let Some(last) = keep_until {
            if let Ok(text) = std::fs::read_to_string(path) {
                let kept: Vec<&str> = text
                    .lines()
                    .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v.get("step").and_then(|s| s.as_u64())).is_some_and(|s| s <= last))
                    .collect();
                let mut out = kept.join("\n");
                if !out.is_empty() {
                    out.push('\n');
                }
                llama2_model::weights::write_atomic(path, out.as_bytes())?;
            }
        } else if path.exists() {
            std::fs::remove_file(path).map_err(|e| TrainError::io(path, e))?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| TrainError::io(path, e))?;
        Ok(MetricsLog { path: path.to_path_buf(), file })
    }

    pub fn write(&mut self, record: &Value) -> Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| TrainError::io(&self.path, e))?;
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }

    /// Every record of a metrics file.
    pub fn read(path: &Path) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}

/// A progress bar over steps; prints plain lines instead when stderr is not
/// a terminal (CI, logs).
pub struct Progress {
    bar: Option<ProgressBar>,
    every: u64,
    label: String,
}

impl Progress {
    pub fn new(label: &str, total: u64, start: u64, quiet: bool) -> Self {
        let bar = if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            None
        } else {
            let b = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b.set_prefix(label.to_string());
            b.set_position(start);
            Some(b)
        };
        let every = (total / 20).max(1);
        Progress { bar, every: if quiet { u64::MAX } else { every }, label: label.to_string() }
    }

    /// Reports step `step` (1-based count done) with a message.
    pub fn update(&self, step: u64, total: u64, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(step);
                b.set_message(msg.to_string());
            }
            None => {
                if step.is_multiple_of(self.every) || step == total || step == 1 {
                    eprintln!("{} {step}/{total} {msg}", self.label);
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// Energy and carbon of a run, estimated as the paper does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Energy {
    /// devices used (GPUs, or CPU sockets)
    pub devices: f64,
    /// power per device in watts (the paper uses the GPU's TDP)
    pub watts_per_device: f64,
    /// grid carbon intensity, kg CO2eq per kWh
    pub kg_co2_per_kwh: f64,
}

impl Energy {
    /// (device-hours, kWh, kg CO2eq) for `seconds` of wall time.
    pub fn estimate(&self, seconds: f64) -> (f64, f64, f64) {
        let hours = self.devices * seconds / 3600.0;
        let kwh = hours * self.watts_per_device / 1000.0;
        (hours, kwh, kwh * self.kg_co2_per_kwh)
    }
}
