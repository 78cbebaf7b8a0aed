//! Training curves as PNG files: loss (pretraining, SFT), validation loss, reward-model
//! accuracy, PPO reward; one chart per file, several named series per chart.
//!
//! What it draws: a title, a framed plot with light grid lines at "nice" tick values (1, 2
//! or 5 times a power of ten, after Heckbert, "Nice numbers for graph labels", Graphics
//! Gems, 1990), numeric tick labels, axis labels, one anti-aliased line per series in a
//! distinct colour (with a marker on each point when a series has few points, e.g. a
//! validation curve), and a legend in a strip under the plot, so it never covers a curve.
//! With `log_y` the y axis is log10: ticks at 1..9, 1/2/5 or 1 times each decade (the
//! densest set whose labels fit), minor grid lines at 2..9 times each decade.
//!
//! Degenerate input never panics: NaN/inf points are skipped (with `log_y`, values <= 0
//! too), a constant series gets an axis span around its value, a single point is drawn as
//! a marker, and a chart with nothing to draw still writes a valid PNG that says "no data".
//! A series with more points than the plot has pixel columns is thinned to the first, min,
//! max and last point of each column: the same envelope, drawn far faster.
//!
//! Dependencies, and why: `tiny-skia` (linebender; the pure-Rust port of Skia's raster
//! core that resvg uses) draws anti-aliased lines, markers and clipped paths;
//! `ab_glyph` (the pure-Rust TrueType rasteriser) draws the text from DejaVu Sans,
//! embedded with `include_bytes!` (Bitstream Vera licence, `train/assets/DejaVuSans.LICENSE`),
//! so no system font, fontconfig or freetype is needed to build or to run; `png` (image-rs)
//! encodes the RGB image. We tried `plotters` first (bitmap backend + its `ab_glyph`
//! feature): its 0.3.7 text path drops each glyph's left side bearing, which visibly
//! mis-spaces letters ("Rew ard"), and its bitmap lines are not anti-aliased; the chart
//! layout (ticks, legend) had to be ours anyway. A hand-written rasteriser with a bitmap
//! font would save these three crates but re-implement what they do well.
//!
//! The file is written atomically: to a hidden temporary name in the same directory, then
//! renamed over `path`, so a reader (or a crash mid-write) never sees half a PNG.
//!
//! Public items: [`Series`], [`Chart`], [`save_png`], [`PlotError`], [`MIN_SIDE`],
//! [`MAX_SIDE`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use tiny_skia::{Color, FillRule, LineCap, LineJoin, Mask, Paint, PathBuilder, Pixmap, Rect, Stroke, Transform};

/// One named curve: (x, y) points, usually (step, value), in drawing order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart: title, axis labels, series, and whether the y axis is log10.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub log_y: bool,
}

/// Smallest accepted image side in pixels: below this the tick labels, legend and title
/// leave no room for the plot itself.
pub const MIN_SIDE: u32 = 160;
/// Largest accepted image side in pixels: 8192x8192 RGBA is 256 MiB of buffer, more than
/// a training curve ever needs.
pub const MAX_SIDE: u32 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(
        "{path}: image size {width}x{height} is out of range; \
         HINT: use {MIN_SIDE}..={MAX_SIDE} pixels per side"
    )]
    BadSize { path: PathBuf, width: u32, height: u32 },
    #[error("{path}: not a file path; HINT: give a file name such as loss.png")]
    BadPath { path: PathBuf },
    #[error("{path}: the embedded font could not be loaded (a build problem, not your input)")]
    Font { path: PathBuf },
    #[error("{path}: could not allocate a {width}x{height} image")]
    Alloc { path: PathBuf, width: u32, height: u32 },
    #[error("{path}: PNG encoding failed: {source}")]
    Encode { path: PathBuf, source: png::EncodingError },
    #[error(
        "{path}: {during} failed: {source}; \
         HINT: check that the directory exists and is writable"
    )]
    Io { path: PathBuf, during: String, source: std::io::Error },
}

/// Draws `chart` into a `width` x `height` image and writes it to `path` as PNG
/// (atomically: temporary file in the same directory, then rename).
pub fn save_png(chart: &Chart, path: &Path, width: u32, height: u32) -> Result<(), PlotError> {
    let side_ok = |s: u32| (MIN_SIDE..=MAX_SIDE).contains(&s);
    if !side_ok(width) || !side_ok(height) {
        return Err(PlotError::BadSize { path: path.to_path_buf(), width, height });
    }
    if path.file_name().is_none() {
        return Err(PlotError::BadPath { path: path.to_path_buf() });
    }
    let font = font().ok_or_else(|| PlotError::Font { path: path.to_path_buf() })?;
    let mut canvas = Pixmap::new(width, height).ok_or_else(|| PlotError::Alloc { path: path.to_path_buf(), width, height })?;
    draw_chart(&mut canvas, font, chart);
    let bytes = encode_png(&canvas).map_err(|source| PlotError::Encode { path: path.to_path_buf(), source })?;
    write_atomic(path, &bytes)
}

// ---------------------------------------------------------------------------------------
// Look

/// Series colours: the ten "tab10" hues (matplotlib's default cycle), chosen to be told
/// apart from one another at line width; cycles after ten series.
const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];
const TEXT: [u8; 3] = [25, 25, 25];
const NOTE: [u8; 3] = [110, 110, 110];
const FRAME: [u8; 3] = [80, 80, 80];
const GRID: [u8; 3] = [222, 222, 222];
const MINOR_GRID: [u8; 3] = [242, 242, 242];
/// A series with at most this many drawable points also gets a marker on each point
/// (validation curves evaluated every few hundred steps); denser curves are lines only.
const MARKER_MAX_POINTS: usize = 40;
/// The legend takes at most this share of the image height; further series are counted
/// in a "+N more" note.
const MAX_LEGEND_SHARE: f32 = 0.3;
/// Thin a series once it has more than this many points per pixel column.
const THIN_POINTS_PER_COLUMN: usize = 4;
/// Values beyond this magnitude are skipped like inf: keeps `hi - lo` and the padding
/// arithmetic finite (f64::MAX - (-f64::MAX) overflows).
const MAX_ABS: f64 = 1e300;
/// Spans below this fraction of the values' magnitude count as constant: tick labels have
/// at most 12 decimals, and f64 resolves ~16 significant digits, so a relative wiggle of
/// 1e-15 can be neither labelled nor placed on evenly spaced ticks.
const MIN_REL_SPAN: f64 = 1e-9;
/// Fraction of the data span added on both sides of the y axis (and of the x axis), so
/// curves and markers do not sit on the frame.
const Y_PAD: f64 = 0.05;
const X_PAD: f64 = 0.02;

/// Pixel sizes, all derived from the image size so that a 1600x1000 chart looks like an
/// 800x500 one scaled up.
struct Sizes {
    tick_font: f32,
    label_font: f32,
    title_font: f32,
    pad: f32,
    tick_mark: f32,
    line_width: f32,
    marker_radius: f32,
}

impl Sizes {
    fn new(width: u32, height: u32) -> Self {
        // 800x500 -> 13.3 px tick labels; the clamp keeps small images legible and big
        // ones from getting poster-sized text.
        let base = (width.min(height.saturating_mul(8) / 5) as f32 / 60.0).clamp(10.0, 30.0);
        Sizes {
            tick_font: base,
            label_font: base * 1.15,
            title_font: base * 1.4,
            pad: (base * 0.7).round(),
            tick_mark: (base * 0.4).round().max(3.0),
            line_width: (base / 7.0).clamp(1.5, 4.0),
            marker_radius: (base * 0.28).max(2.5),
        }
    }
}

fn paint(rgb: [u8; 3], anti_alias: bool) -> Paint<'static> {
    let mut p = Paint::default();
    p.set_color_rgba8(rgb[0], rgb[1], rgb[2], 255);
    p.anti_alias = anti_alias;
    p
}

// ---------------------------------------------------------------------------------------
// Text

static FONT_TTF: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();

fn font() -> Option<&'static FontRef<'static>> {
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_TTF).ok()).as_ref()
}

#[derive(Clone, Copy, PartialEq)]
enum Align {
    Start,
    Center,
    End,
}

/// Text set in one font at one size: measures and draws single lines, horizontally or
/// turned 90 degrees counter-clockwise (reading upwards, for the y-axis label).
struct TextStyle<'f> {
    font: &'f FontRef<'static>,
    px: f32,
    color: [u8; 3],
}

impl TextStyle<'_> {
    /// Pen advance of the whole line, in pixels (advances plus kerning).
    fn width(&self, text: &str) -> f32 {
        self.layout(text).1
    }

    /// Ascent minus descent: the height of a line's box.
    fn height(&self) -> f32 {
        let f = self.font.as_scaled(PxScale::from(self.px));
        f.ascent() - f.descent()
    }

    /// Glyph pen positions along the baseline, and the total advance.
    fn layout(&self, text: &str) -> (Vec<(ab_glyph::GlyphId, f32)>, f32) {
        let f = self.font.as_scaled(PxScale::from(self.px));
        let mut pen = 0.0;
        let mut prev = None;
        let mut glyphs = Vec::with_capacity(text.len());
        for c in text.chars() {
            let id = f.glyph_id(c);
            if let Some(p) = prev {
                pen += f.kern(p, id);
            }
            glyphs.push((id, pen));
            pen += f.h_advance(id);
            prev = Some(id);
        }
        (glyphs, pen)
    }

    /// `text`, cut at the end with an ellipsis so that it is at most `max_width` wide.
    fn fit(&self, text: &str, max_width: f32) -> String {
        if self.width(text) <= max_width {
            return text.to_string();
        }
        let mut cut: String = text.to_string();
        while cut.pop().is_some() {
            let candidate = format!("{}\u{2026}", cut.trim_end());
            if self.width(&candidate) <= max_width {
                return candidate;
            }
        }
        String::new()
    }

    /// Draws `text` with its box aligned to (x, y): `h` along the reading direction,
    /// `v` across it. `upright == false` turns it to read bottom to top (then (x, y) is
    /// the box centre and the alignments are ignored).
    fn draw(&self, canvas: &mut Pixmap, text: &str, (x, y): (f32, f32), h: Align, v: Align, upright: bool) {
        let f = self.font.as_scaled(PxScale::from(self.px));
        let (ascent, descent) = (f.ascent(), f.descent());
        let (glyphs, width) = self.layout(text);
        // Origin = start of the baseline, rounded so glyph rasters land on whole pixels
        // (the sub-pixel pen positions are kept inside each glyph's raster).
        let (ox, oy) = if upright {
            let ox = match h {
                Align::Start => x,
                Align::Center => x - width / 2.0,
                Align::End => x - width,
            };
            let oy = match v {
                Align::Start => y + ascent,
                Align::Center => y + (ascent + descent) / 2.0,
                Align::End => y + descent,
            };
            (ox.round() as i32, oy.round() as i32)
        } else {
            // Layout (lx, ly) -> image (ox + ly, oy - lx); box centred on (x, y).
            ((x + (ascent + descent) / 2.0).round() as i32, (y + width / 2.0).round() as i32)
        };
        let (cw, ch) = (canvas.width() as i32, canvas.height() as i32);
        let data = canvas.data_mut(); // (height, width, RGBA), opaque, so premultiplied == plain
        for (id, pen) in glyphs {
            let glyph = id.with_scale_and_position(PxScale::from(self.px), point(pen, 0.0));
            let Some(outline) = self.font.outline_glyph(glyph) else { continue };
            let b = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let lx = b.min.x as i32 + gx as i32;
                let ly = b.min.y as i32 + gy as i32;
                let (px, py) = if upright { (ox + lx, oy + ly) } else { (ox + ly, oy - lx) };
                if px < 0 || py < 0 || px >= cw || py >= ch {
                    return;
                }
                let i = (py as usize * cw as usize + px as usize) * 4;
                let c = coverage.clamp(0.0, 1.0);
                for k in 0..3 {
                    let d = f32::from(data[i + k]);
                    data[i + k] = (d + (f32::from(self.color[k]) - d) * c).round() as u8;
                }
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// Data preparation

/// A series reduced to what is drawn: finite points, y already log10 when `log_y`.
struct Prepared {
    label: String,
    color: [u8; 3],
    points: Vec<(f64, f64)>,
}

impl Prepared {
    fn has_markers(&self) -> bool {
        !self.points.is_empty() && self.points.len() <= MARKER_MAX_POINTS
    }
}

fn prepare(chart: &Chart) -> Vec<Prepared> {
    let plottable = |v: f64| v.is_finite() && v.abs() <= MAX_ABS;
    chart
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|&&(_, y)| !chart.log_y || y > 0.0)
                .map(|&(x, y)| (x, if chart.log_y { y.log10() } else { y }))
                .filter(|&(x, y)| plottable(x) && plottable(y))
                .collect();
            let mut label = if s.name.trim().is_empty() { format!("series {}", i + 1) } else { s.name.clone() };
            if points.is_empty() {
                label.push_str(" (no data)");
            }
            Prepared { label, color: PALETTE[i % PALETTE.len()], points }
        })
        .collect()
}

/// (lo, hi) of the values, padded by `frac` of the span on each side; a zero (or below
/// display precision, [`MIN_REL_SPAN`]) span is widened by `flat_pad` (or `flat_pad * |v|` when that is larger) on each side.
fn padded_range(values: impl Iterator<Item = f64>, frac: f64, flat_pad: f64) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold(None, |acc: Option<(f64, f64)>, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })?;
    let span = hi - lo;
    if span > lo.abs().max(hi.abs()) * MIN_REL_SPAN {
        Some((lo - frac * span, hi + frac * span))
    } else {
        let d = flat_pad.max(flat_pad * lo.abs());
        Some((lo - d, hi + d))
    }
}

/// Keeps, for each of `columns` equal x-buckets, the first, min-y, max-y and last point
/// (in their original order), which draws the same pixels as the full polyline.
/// Only for x sorted ascending; other series are returned as they are.
fn thin(points: &[(f64, f64)], x_lo: f64, x_hi: f64, columns: usize) -> Vec<(f64, f64)> {
    let sorted = points.windows(2).all(|w| w[0].0 <= w[1].0);
    if !sorted || columns == 0 || points.len() <= columns * THIN_POINTS_PER_COLUMN {
        return points.to_vec();
    }
    let scale = columns as f64 / (x_hi - x_lo);
    let column_of = |x: f64| (((x - x_lo) * scale) as usize).min(columns - 1);
    let mut out = Vec::with_capacity(columns * 4);
    let mut start = 0;
    while start < points.len() {
        let col = column_of(points[start].0);
        let mut end = start + 1;
        while end < points.len() && column_of(points[end].0) == col {
            end += 1;
        }
        let bucket = &points[start..end];
        let (mut i_min, mut i_max) = (0, 0);
        for (i, p) in bucket.iter().enumerate() {
            if p.1 < bucket[i_min].1 {
                i_min = i;
            }
            if p.1 > bucket[i_max].1 {
                i_max = i;
            }
        }
        let mut keep = [0, i_min, i_max, bucket.len() - 1];
        keep.sort_unstable();
        for (k, &i) in keep.iter().enumerate() {
            if k == 0 || i != keep[k - 1] {
                out.push(bucket[i]);
            }
        }
        start = end;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Ticks

/// How tick values become labels.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TickFormat {
    /// Fixed-point with this many decimals (one per linear axis, so labels line up).
    Fixed(usize),
    /// Scientific with this many mantissa decimals, for very large or small magnitudes.
    Sci(usize),
    /// The tick is log10 of the value; label the value itself.
    Log10,
}

/// One axis: its value range, major ticks (labelled, grid lines) and minor ticks (light
/// grid lines only), in plotted units (log10 units for a log axis).
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    minor: Vec<f64>,
    format: TickFormat,
}

/// Ticks at multiples of a 1/2/5 x 10^k step inside [lo, hi], aiming at `target` ticks.
fn linear_axis(lo: f64, hi: f64, target: usize) -> Axis {
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = mag
        * match raw / mag {
            r if r < 1.5 => 1.0,
            r if r < 3.0 => 2.0,
            r if r < 7.0 => 5.0,
            _ => 10.0,
        };
    // The 1e-9 keeps a tick that sits on `lo` but divides to 2.9999999999999996.
    let first = (lo / step - 1e-9).ceil();
    let mut ticks = Vec::new();
    // Bounded: with this step at most ~2.3 * target ticks fit in [lo, hi].
    for i in 0..1000 {
        let t = (first + i as f64) * step;
        if t > hi + step * 1e-9 {
            break;
        }
        // Multiples of the step computed in floating point can land at -0.0 or 1e-17.
        ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
    }
    let step_exp = (step.log10() + 1e-9).floor() as i32;
    let biggest = lo.abs().max(hi.abs());
    let format = if !(1e-3..1e6).contains(&biggest) {
        let big_exp = biggest.log10().floor() as i32;
        TickFormat::Sci((big_exp - step_exp).clamp(0, 6) as usize)
    } else {
        TickFormat::Fixed((-step_exp).clamp(0, 12) as usize)
    };
    Axis { lo, hi, ticks, minor: Vec::new(), format }
}

/// Log10 axis over [lo, hi] (already in log10 units): the densest of 1..9, 1/2/5 or 1
/// times each decade that gives at most 1.5 * `target` ticks, else every n-th decade.
fn log_axis(lo: f64, hi: f64, target: usize) -> Axis {
    let inside = |t: &f64| *t >= lo - 1e-9 && *t <= hi + 1e-9;
    let (d_lo, d_hi) = (lo.floor() as i64, hi.ceil() as i64);
    let at = |mantissas: &[f64]| -> Vec<f64> { (d_lo..=d_hi).flat_map(|d| mantissas.iter().map(move |m| d as f64 + m.log10())).filter(inside).collect() };
    let all: Vec<f64> = (1..10).map(f64::from).collect();
    let max_ticks = target.max(2) * 3 / 2;
    let mut ticks = Vec::new();
    for mantissas in [&all[..], &[1.0, 2.0, 5.0][..], &[1.0][..]] {
        ticks = at(mantissas);
        if ticks.len() <= max_ticks {
            break;
        }
    }
    if ticks.len() > max_ticks {
        let every = (ticks.len() as i64 + max_ticks as i64 - 1) / max_ticks as i64;
        ticks.retain(|t| (t.round() as i64).rem_euclid(every) == 0);
    }
    // Minor grid lines at 2..9 x 10^d, while there are few enough decades to see them.
    let minor = if d_hi - d_lo <= 8 { at(&all[1..]) } else { Vec::new() };
    Axis { lo, hi, ticks, minor, format: TickFormat::Log10 }
}

fn format_tick(v: f64, format: TickFormat) -> String {
    match format {
        TickFormat::Fixed(decimals) => format!("{v:.decimals$}"),
        TickFormat::Sci(_) if v == 0.0 => "0".to_string(),
        TickFormat::Sci(decimals) => format!("{v:.decimals$e}"),
        TickFormat::Log10 => {
            // v = log10(m * 10^d) with m in 1..=9 (+1e-9: 10^d must not floor to d-1).
            let d = (v + 1e-9).floor();
            let m = 10f64.powf(v - d).round() as i64;
            let d = d as i32;
            if (-4..=5).contains(&d) {
                let value = m as f64 * 10f64.powi(d);
                let decimals = (-d).max(0) as usize;
                format!("{value:.decimals$}")
            } else {
                format!("{m}e{d}")
            }
        }
    }
}

/// The axis with the most ticks (aiming at `start`, then fewer) whose labels do not
/// collide: neighbours at least `gap` pixels apart, given the axis length in pixels and
/// each label's extent along the axis (`extent`).
fn fit_ticks(lo: f64, hi: f64, log: bool, axis_px: f64, start: usize, gap: f64, extent: &dyn Fn(&str) -> f64) -> Axis {
    let px_per_unit = axis_px / (hi - lo);
    let mut target = start.max(2);
    loop {
        let axis = if log { log_axis(lo, hi, target) } else { linear_axis(lo, hi, target) };
        let fits = axis.ticks.windows(2).all(|w| {
            let a = extent(&format_tick(w[0], axis.format));
            let b = extent(&format_tick(w[1], axis.format));
            (w[1] - w[0]) * px_per_unit >= (a + b) / 2.0 + gap
        });
        if fits || target <= 2 {
            return axis;
        }
        target -= 1;
    }
}

// ---------------------------------------------------------------------------------------
// Drawing

/// Pixel rectangle of the plot (inside the frame) and the data-to-pixel mapping.
struct Frame {
    left: f32,
    top: f32,
    right: f32,
    bottom: f32,
}

impl Frame {
    fn x(&self, axis: &Axis, v: f64) -> f32 {
        self.left + ((v - axis.lo) / (axis.hi - axis.lo)) as f32 * (self.right - self.left)
    }
    fn y(&self, axis: &Axis, v: f64) -> f32 {
        self.bottom - ((v - axis.lo) / (axis.hi - axis.lo)) as f32 * (self.bottom - self.top)
    }
}

/// A crisp 1-pixel horizontal or vertical line (not anti-aliased, snapped to pixels).
fn hairline(canvas: &mut Pixmap, (x0, y0): (f32, f32), (x1, y1): (f32, f32), rgb: [u8; 3]) {
    let (x0, y0) = (x0.round(), y0.round());
    let (x1, y1) = (x1.round(), y1.round());
    let rect = Rect::from_ltrb(x0.min(x1), y0.min(y1), x0.max(x1) + 1.0, y0.max(y1) + 1.0);
    if let Some(rect) = rect {
        canvas.fill_rect(rect, &paint(rgb, false), Transform::identity(), None);
    }
}

fn marker(canvas: &mut Pixmap, (x, y): (f32, f32), r: f32, rgb: [u8; 3], clip: Option<&Mask>) {
    if let Some(circle) = PathBuilder::from_circle(x, y, r) {
        canvas.fill_path(&circle, &paint(rgb, true), FillRule::Winding, Transform::identity(), clip);
    }
}

/// Draws the whole chart; returns the plot frame (for tests that look inside it).
fn draw_chart(canvas: &mut Pixmap, font: &FontRef<'static>, chart: &Chart) -> Frame {
    canvas.fill(Color::WHITE);
    let (width, height) = (canvas.width() as f32, canvas.height() as f32);
    let sz = Sizes::new(canvas.width(), canvas.height());
    let tick_text = TextStyle { font, px: sz.tick_font, color: TEXT };
    let label_text = TextStyle { font, px: sz.label_font, color: TEXT };
    let title_text = TextStyle { font, px: sz.title_font, color: TEXT };
    let mut series = prepare(chart);

    // Vertical layout, top to bottom: title, plot, x tick labels, x label, legend.
    let mut top = sz.pad;
    if !chart.title.trim().is_empty() {
        let title = title_text.fit(&chart.title, width - 2.0 * sz.pad);
        title_text.draw(canvas, &title, (width / 2.0, top), Align::Center, Align::Start, true);
        top += title_text.height() + sz.pad * 0.5;
    }
    let tick_h = tick_text.height();
    let label_h = label_text.height();

    // Legend entries flow left to right and wrap into centred rows.
    let swatch = (sz.tick_font * 2.2).round();
    let entry_gap = (sz.tick_font * 1.6).round();
    let row_h = (sz.tick_font * 1.7).round();
    let max_row_w = width - 2.0 * sz.pad;
    // An entry is a series index, or None for the "+N more" note that replaces the
    // entries beyond MAX_LEGEND_SHARE of the image height.
    let mut rows: Vec<Vec<(Option<usize>, f32)>> = Vec::new();
    let mut row_w = 0.0;
    for s in &mut series {
        s.label = tick_text.fit(&s.label, max_row_w - swatch - sz.pad * 0.5);
    }
    for (i, s) in series.iter().enumerate() {
        let w = swatch + sz.pad * 0.5 + tick_text.width(&s.label);
        match rows.last_mut() {
            Some(row) if row_w + entry_gap + w <= max_row_w => {
                row.push((Some(i), w));
                row_w += entry_gap + w;
            }
            _ => {
                rows.push(vec![(Some(i), w)]);
                row_w = w;
            }
        }
    }
    let max_rows = ((height * MAX_LEGEND_SHARE / row_h) as usize).max(1);
    let mut more_note = String::new();
    if rows.len() > max_rows {
        rows.truncate(max_rows);
        let mut shown: usize = rows.iter().map(Vec::len).sum();
        if let Some(last) = rows.last_mut() {
            loop {
                more_note = format!("+{} more", series.len() - shown);
                let note_w = tick_text.width(&more_note);
                let used = last.iter().map(|&(_, w)| w + entry_gap).sum::<f32>();
                if used + note_w <= max_row_w || last.is_empty() {
                    last.push((None, note_w));
                    break;
                }
                last.pop();
                shown -= 1;
            }
        }
    }
    let legend_h = rows.len() as f32 * row_h;
    let legend_top = height - sz.pad * 0.5 - legend_h;

    let x_label_block = if chart.x_label.is_empty() { 0.0 } else { label_h + sz.pad * 0.4 };
    let x_area = sz.tick_mark + sz.pad * 0.4 + tick_h + x_label_block + sz.pad * 0.4;
    let bottom = (legend_top - x_area).max(top + tick_h + 10.0);
    let top = top + tick_h * 0.5; // room for half of the topmost y tick label
    let plot_h = f64::from(bottom - top);

    // Data ranges; an empty chart gets 0..1 axes without ticks and a note.
    let drawn = || series.iter().flat_map(|s| s.points.iter());
    let x_range = padded_range(drawn().map(|p| p.0), X_PAD, 1.0);
    let flat_y = if chart.log_y { 0.3 } else { 1.0 }; // log: about a factor 2 either side
    let y_range = padded_range(drawn().map(|p| p.1), Y_PAD, flat_y);
    let no_data = x_range.is_none();
    let (x_lo, x_hi) = x_range.unwrap_or((0.0, 1.0));
    let (y_lo, y_hi) = y_range.unwrap_or((0.0, 1.0));

    let y_axis = fit_ticks(y_lo, y_hi, chart.log_y, plot_h, (plot_h / f64::from(sz.tick_font * 3.5)) as usize, f64::from(tick_h) * 0.4, &|_| f64::from(tick_h));
    let y_tick_w = y_axis.ticks.iter().map(|&t| tick_text.width(&format_tick(t, y_axis.format))).fold(0.0, f32::max);
    let y_label_block = if chart.y_label.is_empty() { 0.0 } else { label_h + sz.pad * 0.4 };
    let left = sz.pad + y_label_block + y_tick_w + sz.pad * 0.4 + sz.tick_mark;
    // Right margin: half of the widest x tick label may hang past the frame.
    let fit_x = |right: f32| {
        let plot_w = f64::from((right - left).max(10.0));
        fit_ticks(x_lo, x_hi, false, plot_w, (plot_w / f64::from(sz.tick_font * 6.0)) as usize, f64::from(sz.tick_font) * 1.5, &|t| {
            f64::from(tick_text.width(t))
        })
    };
    let first_try = fit_x(width - sz.pad);
    let widest = |a: &Axis| a.ticks.iter().map(|&t| tick_text.width(&format_tick(t, a.format))).fold(0.0, f32::max);
    let right = width - sz.pad.max(widest(&first_try) / 2.0 + 2.0);
    let x_axis = fit_x(right);
    let right = right.max(left + 10.0);
    let frame = Frame { left, top, right, bottom };

    // Grid: minor lines, then major lines.
    for &t in &y_axis.minor {
        let y = frame.y(&y_axis, t);
        hairline(canvas, (left, y), (right, y), MINOR_GRID);
    }
    if !no_data {
        for &t in &x_axis.ticks {
            let x = frame.x(&x_axis, t);
            hairline(canvas, (x, top), (x, bottom), GRID);
        }
        for &t in &y_axis.ticks {
            let y = frame.y(&y_axis, t);
            hairline(canvas, (left, y), (right, y), GRID);
        }
    }

    // Series, clipped to the frame.
    let clip = Rect::from_ltrb(left, top, right + 1.0, bottom + 1.0).and_then(|r| {
        let mut m = Mask::new(canvas.width(), canvas.height())?;
        m.fill_path(&PathBuilder::from_rect(r), FillRule::Winding, false, Transform::identity());
        Some(m)
    });
    let stroke = Stroke { width: sz.line_width, line_cap: LineCap::Round, line_join: LineJoin::Round, ..Stroke::default() };
    let columns = (right - left).max(1.0) as usize;
    for s in &series {
        if s.points.len() >= 2 {
            let mut pb = PathBuilder::new();
            for (k, &(x, y)) in thin(&s.points, x_lo, x_hi, columns).iter().enumerate() {
                let (px, py) = (frame.x(&x_axis, x), frame.y(&y_axis, y));
                if k == 0 {
                    pb.move_to(px, py);
                } else {
                    pb.line_to(px, py);
                }
            }
            if let Some(path) = pb.finish() {
                canvas.stroke_path(&path, &paint(s.color, true), &stroke, Transform::identity(), clip.as_ref());
            }
        }
        if s.has_markers() {
            for &(x, y) in &s.points {
                let p = (frame.x(&x_axis, x), frame.y(&y_axis, y));
                marker(canvas, p, sz.marker_radius, s.color, clip.as_ref());
            }
        }
    }

    // Frame, tick marks and tick labels.
    hairline(canvas, (left, top), (right, top), FRAME);
    hairline(canvas, (left, bottom), (right, bottom), FRAME);
    hairline(canvas, (left, top), (left, bottom), FRAME);
    hairline(canvas, (right, top), (right, bottom), FRAME);
    if !no_data {
        for &t in &x_axis.ticks {
            let x = frame.x(&x_axis, t);
            hairline(canvas, (x, bottom), (x, bottom + sz.tick_mark), FRAME);
            let at = (x, bottom + sz.tick_mark + sz.pad * 0.4);
            tick_text.draw(canvas, &format_tick(t, x_axis.format), at, Align::Center, Align::Start, true);
        }
        for &t in &y_axis.ticks {
            let y = frame.y(&y_axis, t);
            hairline(canvas, (left - sz.tick_mark, y), (left, y), FRAME);
            let at = (left - sz.tick_mark - sz.pad * 0.4, y);
            tick_text.draw(canvas, &format_tick(t, y_axis.format), at, Align::End, Align::Center, true);
        }
    } else {
        let note = TextStyle { font, px: sz.title_font, color: NOTE };
        let centre = ((left + right) / 2.0, (top + bottom) / 2.0);
        note.draw(canvas, "no data", centre, Align::Center, Align::Center, true);
    }

    // Axis labels.
    if !chart.x_label.is_empty() {
        let at = ((left + right) / 2.0, bottom + sz.tick_mark + sz.pad * 0.8 + tick_h);
        let text = label_text.fit(&chart.x_label, right - left);
        label_text.draw(canvas, &text, at, Align::Center, Align::Start, true);
    }
    if !chart.y_label.is_empty() {
        let at = (sz.pad + label_h / 2.0, (top + bottom) / 2.0);
        let text = label_text.fit(&chart.y_label, bottom - top);
        label_text.draw(canvas, &text, at, Align::Center, Align::Center, false);
    }

    // Legend rows.
    for (r, row) in rows.iter().enumerate() {
        let total = row.iter().map(|&(_, w)| w).sum::<f32>() + entry_gap * (row.len() as f32 - 1.0);
        let mut x = ((width - total) / 2.0).max(sz.pad);
        let y = legend_top + r as f32 * row_h + row_h / 2.0;
        for &(entry, w) in row {
            let Some(i) = entry else {
                let note = TextStyle { font, px: sz.tick_font, color: NOTE };
                note.draw(canvas, &more_note, (x, y), Align::Start, Align::Center, true);
                continue;
            };
            let s = &series[i];
            if let Some(line) = Rect::from_xywh(x, y - sz.line_width / 2.0, swatch, sz.line_width) {
                canvas.fill_rect(line, &paint(s.color, true), Transform::identity(), None);
            }
            if s.has_markers() {
                marker(canvas, (x + swatch / 2.0, y), sz.marker_radius, s.color, None);
            }
            let at = (x + swatch + sz.pad * 0.5, y);
            tick_text.draw(canvas, &s.label, at, Align::Start, Align::Center, true);
            x += w + entry_gap;
        }
    }
    frame
}

// ---------------------------------------------------------------------------------------
// Output

/// PNG, 8-bit RGB (the canvas is opaque, so its alpha channel is dropped).
fn encode_png(canvas: &Pixmap) -> Result<Vec<u8>, png::EncodingError> {
    let rgb: Vec<u8> = canvas.data().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, canvas.width(), canvas.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(out)
}

/// Distinguishes the temporary files of concurrent writes from one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PlotError> {
    let io_err = |during: String, source| PlotError::Io { path: path.to_path_buf(), during, source };
    let name = path.file_name().ok_or_else(|| PlotError::BadPath { path: path.to_path_buf() })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(".{}.{}-{}.tmp", name.to_string_lossy(), std::process::id(), TMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| io_err(format!("creating temporary file {}", tmp.display()), e))?;
    // Sync before the rename: otherwise a crash can leave the new name with no data.
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = fs::remove_file(&tmp);
        return Err(io_err(format!("writing temporary file {}", tmp.display()), e));
    }
    drop(file);
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(format!("renaming {} to it", tmp.display()), e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(axis: &Axis) -> Vec<String> {
        axis.ticks.iter().map(|&t| format_tick(t, axis.format)).collect()
    }

    #[test]
    fn linear_ticks_are_nice_and_share_decimals() {
        let a = linear_axis(0.0, 1.0, 5);
        assert_eq!(labels(&a), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        // Padded loss range 1.6..10.8: integer ticks, none outside the range.
        let a = linear_axis(1.6, 10.8, 8);
        assert_eq!(labels(&a), ["2", "3", "4", "5", "6", "7", "8", "9", "10"]);
        // Crossing zero gives an exact 0, not -0.0 or 1e-17.
        let a = linear_axis(-0.3, 0.3, 6);
        assert_eq!(labels(&a), ["-0.3", "-0.2", "-0.1", "0.0", "0.1", "0.2", "0.3"]);
        // Millions switch to scientific notation with enough digits to tell ticks apart.
        let a = linear_axis(0.0, 2.0e6, 5);
        assert_eq!(labels(&a), ["0", "5.0e5", "1.0e6", "1.5e6", "2.0e6"]);
    }

    #[test]
    fn log_ticks_label_values_not_exponents() {
        // Under one decade (loss 2..10.4): every integer mantissa.
        let a = log_axis(2f64.log10(), 10.4f64.log10(), 8);
        assert_eq!(labels(&a), ["2", "3", "4", "5", "6", "7", "8", "9", "10"]);
        // Nine decades with room for 5 ticks: every second decade.
        let a = log_axis(-6.0, 3.0, 5);
        assert_eq!(labels(&a), ["1e-6", "0.0001", "0.01", "1", "100"]);
        assert!(a.minor.is_empty(), "no minor lines over nine decades");
        // Three decades: decades only, minor lines at 2..9 x 10^d inside the range.
        let a = log_axis(-1.0, 2.0, 3);
        assert_eq!(labels(&a), ["0.1", "1", "10", "100"]);
        assert_eq!(a.minor.len(), 3 * 8);
    }

    #[test]
    fn thinning_keeps_each_column_envelope() {
        let columns = 50;
        let points: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, ((i * 7919) % 1000) as f64)).collect();
        let thinned = thin(&points, 0.0, 99_999.0, columns);
        assert!(thinned.len() <= 4 * columns, "{} points kept", thinned.len());
        assert_eq!(thinned.first(), points.first());
        assert_eq!(thinned.last(), points.last());
        let scale = columns as f64 / 99_999.0;
        let column = |x: f64| ((x * scale) as usize).min(columns - 1);
        for c in 0..columns {
            let range = |ps: &[(f64, f64)]| {
                let ys = ps.iter().filter(|p| column(p.0) == c).map(|p| p.1);
                ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)))
            };
            assert_eq!(range(&thinned), range(&points), "column {c}");
        }
        // Unsorted x is left alone (bucketing would reorder the path).
        let unsorted = vec![(1.0, 0.0), (0.0, 1.0), (2.0, 2.0)];
        assert_eq!(thin(&unsorted, 0.0, 2.0, 1), unsorted);
    }

    /// Mean y of the pixels of `rgb` inside the frame, in columns x0..x1.
    fn mean_y_of_colour(canvas: &Pixmap, frame: &Frame, (x0, x1): (u32, u32), rgb: [u8; 3]) -> f64 {
        let (mut sum, mut n) = (0.0, 0.0);
        for y in frame.top.ceil() as u32 + 1..frame.bottom as u32 {
            for x in x0..x1 {
                let p = canvas.pixel(x, y).map(|p| [p.red(), p.green(), p.blue()]);
                if p == Some(rgb) {
                    sum += f64::from(y);
                    n += 1.0;
                }
            }
        }
        assert!(n > 0.0, "no pixels of colour {rgb:?} in columns {x0}..{x1}");
        sum / n
    }

    #[test]
    fn log_y_maps_decades_to_equal_heights() {
        let font = font().expect("embedded font");
        // 1, 10, 100 at x = 0, 1, 2: in log10 units 0, 1, 2, so the middle point (and the
        // straight line through it) sits at the vertical centre of the symmetric padded
        // range; on a linear axis it sits near the bottom.
        let mut chart =
            Chart { series: vec![Series { name: "loss".into(), points: vec![(0.0, 1.0), (1.0, 10.0), (2.0, 100.0)] }], log_y: true, ..Chart::default() };
        // Marker and line pixels at full coverage have exactly the series colour; the
        // centroid of a symmetric disc is its centre, up to pixel rounding of the centre.
        const CENTRE_TOL_PX: f64 = 1.0;
        let mut canvas = Pixmap::new(800, 500).expect("canvas");
        let frame = draw_chart(&mut canvas, font, &chart);
        let mid_x = ((frame.left + frame.right) / 2.0) as u32;
        let mid_y = f64::from((frame.top + frame.bottom) / 2.0);
        let band = (mid_x - 2, mid_x + 3);
        let y_log = mean_y_of_colour(&canvas, &frame, band, PALETTE[0]);
        assert!((y_log - mid_y).abs() <= CENTRE_TOL_PX, "log: middle point at y={y_log}, centre {mid_y}");

        chart.log_y = false;
        let mut canvas = Pixmap::new(800, 500).expect("canvas");
        let frame = draw_chart(&mut canvas, font, &chart);
        let y_lin = mean_y_of_colour(&canvas, &frame, band, PALETTE[0]);
        // Linear: 10 is (10 - 1) / 99 of the way up, about 0.13 of the padded range.
        let expected = f64::from(frame.bottom) - (0.05 + 9.0 / 99.0) / 1.1 * f64::from(frame.bottom - frame.top);
        assert!((y_lin - expected).abs() <= CENTRE_TOL_PX, "linear: middle point at y={y_lin}, expected {expected}");
    }
}
