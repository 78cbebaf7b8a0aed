//! Charts for reports as PNG files, drawn with `plotters`: line charts (training curves),
//! grouped bar charts (reward-model accuracy per rating bucket, adherence per turn) and
//! heat maps (attention on the system message per layer and turn).
//!
//! Each chart is a plain struct with named fields; [`save_png`] draws one into an
//! in-memory RGB image with plotters' bitmap backend, encodes it as PNG and writes it with
//! the project's one atomic writer (`llama2_model::atomic::write_atomic`), so a reader or
//! a crash never sees half a file and a failed call leaves nothing behind.
//!
//! What is drawn: a title, a plot with grid lines at "nice" tick values (1, 2 or 5 times
//! a power of ten; with [`LineChart::log_y`] 1..9, 1/2/5 or 1 times each decade), tick
//! labels, axis labels, the data in the ten "tab10" colours, and a legend in a strip under
//! the plot, so it never covers data. Line series with few points (validation curves) get
//! a marker on each point; bars get their value on top where it fits; heat-map cells are
//! coloured on the viridis scale, with a colour bar under the plot and the value in each
//! cell where it fits.
//!
//! Degenerate input never panics: NaN/inf values are skipped (with `log_y`, values <= 0
//! too; heat-map cells without a value are grey), a constant series gets an axis span
//! around its value, a single point is drawn as a marker, and a chart with nothing to draw
//! still writes a valid PNG that says "no data". A series with more points than the plot
//! has pixel columns is thinned to the first, min, max and last point of each column: the
//! same envelope, drawn far faster.
//!
//! Text: DejaVu Sans, embedded with `include_bytes!` (`tools/assets/`) and registered with
//! plotters' `ab_glyph` font support, so no system font, fontconfig or freetype is needed
//! to build or to run. plotters 0.3.7 places `ab_glyph` glyphs badly (see `text.rs`), so the
//! backend is wrapped to lay text out itself; everything else is plotters'.
//!
//! Public items: [`Series`], [`LineChart`], [`BarSeries`], [`BarChart`], [`HeatMap`],
//! [`Chart`], [`save_png`], [`PlotError`], [`MIN_SIDE`], [`MAX_SIDE`].

mod axis;
mod draw;
mod text;

use std::path::{Path, PathBuf};

use plotters::backend::BitMapBackend;
use plotters::prelude::*;

/// One named curve: (x, y) points, usually (step, value), in drawing order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Legend label ("train", "validation").
    pub name: String,
    /// (x, y) points; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

/// Curves over a shared x axis: loss per step, reward per PPO iteration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Plot y on a log10 axis (values <= 0 are then skipped).
    pub log_y: bool,
}

/// One bar per category, all in one colour: one model or one method.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BarSeries {
    /// Legend label ("RM 7B", "GAtt").
    pub name: String,
    /// `values[i]` is the bar of category `i`; one per category; NaN for no bar.
    pub values: Vec<f64>,
}

/// Grouped bars: for each category (a rating bucket, a dialogue turn) one bar per series,
/// side by side. Bars grow from 0.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Category names, left to right ("significantly better", ..., "negligibly better").
    pub categories: Vec<String>,
    pub series: Vec<BarSeries>,
}

/// A table of values as coloured cells: rows top to bottom, columns left to right, with a
/// colour bar for the scale (viridis, from the smallest to the largest finite value).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeatMap {
    pub title: String,
    /// What the columns are ("turn").
    pub x_label: String,
    /// What the rows are ("layer").
    pub y_label: String,
    /// Column names, left to right.
    pub columns: Vec<String>,
    /// Row names, top to bottom.
    pub rows: Vec<String>,
    /// `values[row][column]`, `rows.len()` rows of `columns.len()` values; NaN for no value.
    pub values: Vec<Vec<f64>>,
    /// What the colours measure, under the colour bar ("attention on the system prompt").
    pub scale_label: String,
}

/// Any of the charts [`save_png`] draws.
#[derive(Debug, Clone, PartialEq)]
pub enum Chart {
    Line(LineChart),
    Bar(BarChart),
    Heat(HeatMap),
}

impl From<LineChart> for Chart {
    fn from(c: LineChart) -> Self {
        Chart::Line(c)
    }
}
impl From<BarChart> for Chart {
    fn from(c: BarChart) -> Self {
        Chart::Bar(c)
    }
}
impl From<HeatMap> for Chart {
    fn from(c: HeatMap) -> Self {
        Chart::Heat(c)
    }
}

/// Smallest accepted image side in pixels: below this the tick labels, legend and title
/// leave no room for the plot itself.
pub const MIN_SIDE: u32 = 160;
/// Largest accepted image side in pixels: 8192x8192 RGB is 192 MiB of buffer, more than a
/// report chart ever needs.
pub const MAX_SIDE: u32 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: image size {width}x{height} is out of range; HINT: use {MIN_SIDE}..={MAX_SIDE} pixels per side")]
    BadSize { path: PathBuf, width: u32, height: u32 },
    #[error("{path}: not a file path; HINT: give a file name such as loss.png")]
    BadPath { path: PathBuf },
    #[error("{path}: {what}; HINT: give one value per {per}")]
    Shape { path: PathBuf, what: String, per: &'static str },
    #[error("{path}: the embedded font could not be loaded (a build problem, not your input)")]
    Font { path: PathBuf },
    #[error("{path}: could not allocate a {width}x{height} image")]
    Alloc { path: PathBuf, width: u32, height: u32 },
    #[error("{path}: drawing failed: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("{path}: PNG encoding failed: {source}")]
    Encode { path: PathBuf, source: png::EncodingError },
    #[error("{path}: writing failed: {source}; HINT: check that the directory exists and is writable")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Draws `chart` into a `width` x `height` image and writes it to `path` as PNG
/// (atomically: temporary file in the same directory, then rename).
///
/// ```no_run
/// use llama2_tools::plot::{save_png, LineChart, Series};
/// let chart = LineChart {
///     title: "pretrain: loss".into(),
///     x_label: "step".into(),
///     y_label: "cross-entropy (nats/token)".into(),
///     series: vec![Series { name: "train".into(), points: vec![(0.0, 10.4), (100.0, 4.2), (200.0, 3.1)] }],
///     log_y: false,
/// };
/// save_png(&chart.into(), std::path::Path::new("loss.png"), 900, 500)?;
/// # Ok::<(), llama2_tools::plot::PlotError>(())
/// ```
pub fn save_png(chart: &Chart, path: &Path, width: u32, height: u32) -> Result<(), PlotError> {
    let side_ok = |s: u32| (MIN_SIDE..=MAX_SIDE).contains(&s);
    if !side_ok(width) || !side_ok(height) {
        return Err(PlotError::BadSize { path: path.to_path_buf(), width, height });
    }
    if path.file_name().is_none() {
        return Err(PlotError::BadPath { path: path.to_path_buf() });
    }
    check_shape(chart).map_err(|(what, per)| PlotError::Shape { path: path.to_path_buf(), what, per })?;
    if !text::register() {
        return Err(PlotError::Font { path: path.to_path_buf() });
    }
    let len = width as usize * height as usize * 3;
    let mut rgb = Vec::new();
    rgb.try_reserve_exact(len).map_err(|_| PlotError::Alloc { path: path.to_path_buf(), width, height })?;
    rgb.resize(len, 255);
    draw(chart, &mut rgb, width, height).map_err(|message| PlotError::Draw { path: path.to_path_buf(), message })?;
    let bytes = encode_png(&rgb, width, height).map_err(|source| PlotError::Encode { path: path.to_path_buf(), source })?;
    llama2_model::atomic::write_atomic(path, &bytes).map_err(|source| PlotError::Io { path: path.to_path_buf(), source })
}

/// Bars and cells must line up with their categories, rows and columns: (what is wrong,
/// what there must be one value per).
fn check_shape(chart: &Chart) -> Result<(), (String, &'static str)> {
    match chart {
        Chart::Line(_) => Ok(()),
        Chart::Bar(c) => match c.series.iter().find(|s| s.values.len() != c.categories.len()) {
            Some(s) => Err((format!("bar series \"{}\" has {} values for {} categories", s.name, s.values.len(), c.categories.len()), "category")),
            None => Ok(()),
        },
        Chart::Heat(h) if h.values.len() != h.rows.len() => {
            Err((format!("heat map has {} rows of values for {} row names", h.values.len(), h.rows.len()), "row"))
        }
        Chart::Heat(h) => match h.values.iter().position(|r| r.len() != h.columns.len()) {
            Some(i) => Err((format!("heat map row {i} has {} values for {} columns", h.values[i].len(), h.columns.len()), "column")),
            None => Ok(()),
        },
    }
}

/// Draws `chart` on a white `width` x `height` RGB buffer (row-major, 3 bytes a pixel).
fn draw(chart: &Chart, rgb: &mut [u8], width: u32, height: u32) -> Result<(), String> {
    let root = text::Canvas(BitMapBackend::with_buffer(rgb, (width, height))).into_drawing_area();
    let sz = draw::Sizes::new(width, height);
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    match chart {
        Chart::Line(c) => draw::line_chart(&root, c, &sz),
        Chart::Bar(c) => draw::bar_chart(&root, c, &sz),
        Chart::Heat(h) => draw::heat_map(&root, h, &sz),
    }
    .and_then(|()| root.present())
    .map_err(|e| e.to_string())
}

/// PNG, 8-bit RGB.
fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}
