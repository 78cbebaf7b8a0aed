//! Drawing the three chart kinds with plotters on a [`Canvas`]: the layout (title, plot,
//! legend strip or colour bar), the axes from [`super::axis`], then the data.
//!
//! Layout: the title on top; the legend in a strip under the plot, so it never covers
//! data, wrapped into rows of at most [`MAX_LEGEND_SHARE`] of the image height (further
//! entries are counted in a "+N more" note); tick labels and axis labels in label areas
//! measured from the labels themselves. The heat map has a horizontal colour bar under
//! its plot instead of a legend, aligned with the plot's columns.
//!
//! Crate-visible items: [`Sizes`], [`line_chart`], [`bar_chart`], [`heat_map`],
//! [`PALETTE`], [`NO_DATA`].

use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{self, Axis};
use super::text::{self, Canvas};
use super::{BarChart, HeatMap, LineChart};

type Area<'a> = DrawingArea<Canvas<'a>, plotters::coord::Shift>;
type DrawResult<T> = Result<T, DrawingAreaErrorKind<<Canvas<'static> as DrawingBackend>::ErrorType>>;
type Frame<'a, 'b> = ChartContext<'b, Canvas<'a>, Cartesian2d<Axis, Axis>>;

/// Series colours: the ten "tab10" hues (matplotlib's default cycle), chosen to be told
/// apart from one another at line width; cycles after ten series.
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Heat-map cells without a finite value.
pub(crate) const NO_DATA: RGBColor = RGBColor(205, 205, 205);
const TEXT: RGBColor = RGBColor(25, 25, 25);
const NOTE: RGBColor = RGBColor(110, 110, 110);
const FRAME: RGBColor = RGBColor(80, 80, 80);
const GRID: RGBColor = RGBColor(222, 222, 222);
const MINOR_GRID: RGBColor = RGBColor(242, 242, 242);
/// A series with at most this many drawable points also gets a marker on each point
/// (validation curves evaluated every few hundred steps); denser curves are lines only.
const MARKER_MAX_POINTS: usize = 40;
/// The legend takes at most this share of the image height.
const MAX_LEGEND_SHARE: f64 = 0.3;
/// Fraction of the data span added on both sides of the y axis (and of the x axis), so
/// curves and markers do not sit on the frame.
const Y_PAD: f64 = 0.05;
const X_PAD: f64 = 0.02;
/// Bars leave this much of the y span above the tallest bar, for its value label.
const BAR_HEADROOM: f64 = 0.12;
/// A category's bars fill this share of its slot; the rest separates the groups.
const BAR_GROUP_WIDTH: f64 = 0.8;

/// Pixel sizes, all derived from the image size so that a 1600x1000 chart looks like an
/// 800x500 one scaled up.
pub(crate) struct Sizes {
    tick_font: f64,
    label_font: f64,
    title_font: f64,
    pad: f64,
    tick_mark: i32,
    line_width: u32,
    marker_radius: u32,
}

impl Sizes {
    pub(crate) fn new(width: u32, height: u32) -> Self {
        // 800x500 -> 13.3 px tick labels; the clamp keeps small images legible and big
        // ones from getting poster-sized text.
        let base = (f64::from(width.min(height.saturating_mul(8) / 5)) / 60.0).clamp(10.0, 30.0);
        Sizes {
            tick_font: base,
            label_font: base * 1.15,
            title_font: base * 1.4,
            pad: (base * 0.7).round(),
            tick_mark: (base * 0.35).round().max(3.0) as i32,
            line_width: (base / 7.0).round().clamp(1.0, 4.0) as u32,
            marker_radius: (base * 0.28).round().max(2.0) as u32,
        }
    }
}

fn font(px: f64, color: RGBColor) -> TextStyle<'static> {
    ("sans-serif", px).into_font().color(&color)
}

/// The title (cut to the width) on top; returns the area under it.
fn titled<'a>(root: &Area<'a>, title: &str, sz: &Sizes) -> DrawResult<Area<'a>> {
    if title.trim().is_empty() {
        return Ok(root.margin(sz.pad as i32 / 2, 0, 0, 0));
    }
    let width = f64::from(root.dim_in_pixel().0) - 2.0 * sz.pad;
    root.titled(&text::fit(sz.title_font, title, width), font(sz.title_font, TEXT))
}

// ---------------------------------------------------------------------------------------
// Frame: label areas, margins, mesh

/// What to draw of the mesh.
struct Mesh {
    x_grid: bool,
    y_grid: bool,
}

/// Builds the chart on `area` with axes from `make_x(plot width px)` and
/// `make_y(plot height px)`, sizes the label areas to the labels, and draws the mesh
/// (grid, axes, ticks, labels). Returns the chart and the two axes.
fn frame<'a, 'b>(
    area: &'b Area<'a>,
    sz: &Sizes,
    (x_label, y_label): (&str, &str),
    make_x: &dyn Fn(f64) -> Axis,
    make_y: &dyn Fn(f64) -> Axis,
    mesh: Mesh,
) -> DrawResult<(Frame<'a, 'b>, Axis, Axis)> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (f64::from(w), f64::from(h));
    let tick_h = text::height(sz.tick_font);
    let label_h = text::height(sz.label_font);
    let label_dist = f64::from(2 * sz.tick_mark);
    let x_desc_h = if x_label.is_empty() { 0.0 } else { label_h + sz.pad * 0.3 };
    let y_desc_w = if y_label.is_empty() { 0.0 } else { label_h + sz.pad * 0.4 };
    let bottom_area = (label_dist + tick_h + x_desc_h + sz.pad * 0.3).ceil();
    let (top_margin, bottom_margin, left_margin) = ((tick_h / 2.0).ceil(), (sz.pad * 0.3).ceil(), sz.pad.ceil());
    let plot_h = (h - top_margin - bottom_margin - bottom_area).max(10.0);
    let y = make_y(plot_h);
    let left_area = (y_desc_w + y.widest_label(sz.tick_font) + label_dist).ceil();
    // Right margin: the last x tick label, centred on its tick, may hang past the plot.
    let plot_w = |right: f64| (w - left_margin - left_area - right).max(10.0);
    let first = make_x(plot_w(sz.pad));
    let hang = first.ticks.last().map_or(0.0, |&t| {
        let past_tick = (first.hi - t) / (first.hi - first.lo) * plot_w(sz.pad);
        text::width(sz.tick_font, &first.label(t)) / 2.0 - past_tick + 2.0
    });
    let right_margin = sz.pad.max(hang).ceil();
    let x = make_x(plot_w(right_margin));

    let mut chart = ChartBuilder::on(area)
        .margin_top(top_margin as i32)
        .margin_bottom(bottom_margin as i32)
        .margin_left(left_margin as i32)
        .margin_right(right_margin as i32)
        .x_label_area_size(bottom_area as i32)
        .y_label_area_size(left_area as i32)
        .build_cartesian_2d(x.clone(), y.clone())?;
    let x_desc = text::fit(sz.label_font, x_label, plot_w(right_margin));
    let y_desc = text::fit(sz.label_font, y_label, plot_h);
    let mut style = chart.configure_mesh();
    style
        .label_style(font(sz.tick_font, TEXT))
        .axis_desc_style(font(sz.label_font, TEXT))
        .bold_line_style(GRID)
        .light_line_style(MINOR_GRID)
        .axis_style(FRAME)
        .set_all_tick_mark_size(sz.tick_mark);
    if !x_desc.is_empty() {
        style.x_desc(x_desc);
    }
    if !y_desc.is_empty() {
        style.y_desc(y_desc);
    }
    if !mesh.x_grid {
        style.disable_x_mesh();
    }
    if !mesh.y_grid {
        style.disable_y_mesh();
    }
    style.draw()?;
    Ok((chart, x, y))
}

/// "no data" in grey in the middle of the plot.
fn no_data_note(chart: &Frame<'_, '_>, x: &Axis, y: &Axis, sz: &Sizes) -> DrawResult<()> {
    let style = font(sz.title_font, NOTE).pos(Pos::new(HPos::Center, VPos::Center));
    chart.plotting_area().draw(&Text::new("no data", ((x.lo + x.hi) / 2.0, (y.lo + y.hi) / 2.0), style))
}

// ---------------------------------------------------------------------------------------
// Legend strip

/// How a legend entry shows its series.
#[derive(Clone, Copy)]
enum Swatch {
    Line { marker: bool },
    Box,
}

struct Entry {
    label: String,
    color: RGBColor,
    swatch: Swatch,
}

/// Splits `root` into the area above the legend and draws the legend (centred rows of
/// swatch + label, wrapped to the width) into the strip at the bottom.
fn with_legend<'a>(root: &Area<'a>, entries: &[Entry], sz: &Sizes) -> DrawResult<Area<'a>> {
    if entries.is_empty() {
        return Ok(root.clone());
    }
    let (w, h) = root.dim_in_pixel();
    let (w, h) = (f64::from(w), f64::from(h));
    let swatch_w = sz.tick_font * 2.0;
    let gap = sz.pad * 1.5;
    let max_row_w = w - 2.0 * sz.pad;
    let entry_w = |label: &str| swatch_w + sz.pad * 0.5 + text::width(sz.tick_font, label);
    let labels: Vec<String> = entries.iter().map(|e| text::fit(sz.tick_font, &e.label, max_row_w - swatch_w - sz.pad * 0.5)).collect();
    let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0.0;
    for (i, label) in labels.iter().enumerate() {
        let ew = entry_w(label);
        if let Some(row) = rows.last_mut().filter(|r| r.is_empty() || used + gap + ew <= max_row_w) {
            used += if row.is_empty() { ew } else { gap + ew };
            row.push(i);
        } else {
            rows.push(vec![i]);
            used = ew;
        }
    }
    let row_h = text::height(sz.tick_font) * 1.5;
    let max_rows = ((h * MAX_LEGEND_SHARE / row_h) as usize).max(1);
    let mut more = String::new();
    if rows.len() > max_rows {
        rows.truncate(max_rows);
        let shown: usize = rows.iter().map(Vec::len).sum();
        if let Some(last) = rows.last_mut() {
            // Room for the note: drop entries from the end of the last row until it fits.
            let mut hidden = entries.len() - shown;
            loop {
                more = format!("+{hidden} more");
                let row_w: f64 = last.iter().map(|&i| entry_w(&labels[i]) + gap).sum();
                if row_w + text::width(sz.tick_font, &more) <= max_row_w || last.len() <= 1 {
                    break;
                }
                last.pop();
                hidden += 1;
            }
        }
    }
    let legend_h = (rows.len() as f64 * row_h + sz.pad * 0.5).ceil();
    let (upper, strip) = root.split_vertically(h as i32 - legend_h as i32);
    let left = font(sz.tick_font, TEXT).pos(Pos::new(HPos::Left, VPos::Center));
    for (r, row) in rows.iter().enumerate() {
        let note_w = if r + 1 == rows.len() && !more.is_empty() { gap + text::width(sz.tick_font, &more) } else { 0.0 };
        let total = row.iter().map(|&i| entry_w(&labels[i])).sum::<f64>() + gap * (row.len().max(1) - 1) as f64 + note_w;
        let mut x = ((w - total) / 2.0).max(sz.pad);
        let y = (r as f64 * row_h + row_h / 2.0).round() as i32;
        for &i in row {
            let e = &entries[i];
            let (x0, x1) = (x.round() as i32, (x + swatch_w).round() as i32);
            match e.swatch {
                Swatch::Line { marker } => {
                    strip.draw(&PathElement::new(vec![(x0, y), (x1, y)], e.color.stroke_width(sz.line_width.max(2))))?;
                    if marker {
                        strip.draw(&Circle::new(((x0 + x1) / 2, y), sz.marker_radius, e.color.filled()))?;
                    }
                }
                Swatch::Box => {
                    let half = (row_h * 0.3).round() as i32;
                    strip.draw(&Rectangle::new([(x0, y - half), (x1, y + half)], e.color.filled()))?;
                }
            }
            strip.draw(&Text::new(labels[i].as_str(), ((x + swatch_w + sz.pad * 0.5).round() as i32, y), left.clone()))?;
            x += entry_w(&labels[i]) + gap;
        }
        if note_w > 0.0 {
            strip.draw(&Text::new(more.as_str(), (x.round() as i32, y), font(sz.tick_font, NOTE).pos(Pos::new(HPos::Left, VPos::Center))))?;
        }
    }
    Ok(upper)
}

// ---------------------------------------------------------------------------------------
// Line chart

/// A series reduced to what is drawn: finite points, y already log10 when `log_y`.
struct Prepared {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

fn prepare(chart: &LineChart) -> Vec<Prepared> {
    let plottable = |v: f64| v.is_finite() && v.abs() <= axis::MAX_ABS;
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

/// Numeric axis over `range` (or 0..1 without ticks when there is no data).
fn value_axis(range: Option<(f64, f64)>, log: bool, axis_px: f64, start: usize, gap: f64, extent: &dyn Fn(&str) -> f64) -> Axis {
    match range {
        Some((lo, hi)) => axis::fit_ticks(lo, hi, log, axis_px, start, gap, extent),
        None => Axis { lo: 0.0, hi: 1.0, ticks: Vec::new(), minor: Vec::new(), labels: axis::Labels::Fixed(0) },
    }
}

pub(crate) fn line_chart(root: &Area<'_>, c: &LineChart, sz: &Sizes) -> DrawResult<()> {
    let series = prepare(c);
    let marker = |s: &Prepared| !s.points.is_empty() && s.points.len() <= MARKER_MAX_POINTS;
    let entries: Vec<Entry> = series.iter().map(|s| Entry { label: s.label.clone(), color: s.color, swatch: Swatch::Line { marker: marker(s) } }).collect();
    let area = with_legend(&titled(root, &c.title, sz)?, &entries, sz)?;

    let drawn = || series.iter().flat_map(|s| s.points.iter());
    let x_range = axis::padded_range(drawn().map(|p| p.0), X_PAD, 1.0);
    let flat_y = if c.log_y { 0.3 } else { 1.0 }; // log: about a factor 2 either side
    let y_range = axis::padded_range(drawn().map(|p| p.1), Y_PAD, flat_y);
    let tick_h = text::height(sz.tick_font);
    let make_y = |px: f64| value_axis(y_range, c.log_y, px, (px / (sz.tick_font * 3.5)) as usize, tick_h * 0.4, &|_| tick_h);
    let make_x = |px: f64| value_axis(x_range, false, px, (px / (sz.tick_font * 6.0)) as usize, sz.tick_font * 1.5, &|t| text::width(sz.tick_font, t));
    let (mut chart, x, y) = frame(&area, sz, (&c.x_label, &c.y_label), &make_x, &make_y, Mesh { x_grid: true, y_grid: true })?;
    if x_range.is_none() {
        return no_data_note(&chart, &x, &y, sz);
    }
    let columns = chart.plotting_area().dim_in_pixel().0.max(1) as usize;
    for s in &series {
        if s.points.len() >= 2 {
            // A dense curve (noisy training loss) is drawn 1 px wide, where plotters
            // anti-aliases; wider strokes are filled polygons without anti-aliasing, which
            // turn a dense zigzag into a solid band. Sparse curves get the wider stroke, one
            // segment at a time (a whole-path polygon self-intersects and leaves holes).
            if s.points.len() * 2 > columns {
                chart.draw_series(LineSeries::new(axis::thin(&s.points, x.lo, x.hi, columns), s.color.stroke_width(1)))?;
            } else {
                let style = s.color.stroke_width(sz.line_width);
                chart.draw_series(s.points.windows(2).map(|w| PathElement::new(vec![w[0], w[1]], style)))?;
            }
        }
        if marker(s) {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, sz.marker_radius, s.color.filled())))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Grouped bar chart

pub(crate) fn bar_chart(root: &Area<'_>, c: &BarChart, sz: &Sizes) -> DrawResult<()> {
    let entries: Vec<Entry> = c
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut label = if s.name.trim().is_empty() { format!("series {}", i + 1) } else { s.name.clone() };
            if !s.values.iter().any(|v| v.is_finite()) {
                label.push_str(" (no data)");
            }
            Entry { label, color: PALETTE[i % PALETTE.len()], swatch: Swatch::Box }
        })
        .collect();
    let area = with_legend(&titled(root, &c.title, sz)?, &entries, sz)?;

    let plottable = |v: &f64| v.is_finite() && v.abs() <= axis::MAX_ABS;
    let values = || c.series.iter().flat_map(|s| s.values.iter().copied()).filter(plottable);
    let (v_lo, v_hi) = values().fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let y_range = values().next().map(|_| {
        // Bars grow from 0: the axis starts (or ends) there exactly, with headroom on the
        // side the bars grow to (for the value labels).
        // All bars 0: a 0..1 axis, not an empty span.
        if v_lo == 0.0 && v_hi == 0.0 {
            return (0.0, 1.0);
        }
        let (lo, hi) = axis::padded_range([v_lo, v_hi].into_iter(), BAR_HEADROOM, 1.0).unwrap_or((v_lo, v_hi));
        (if v_lo >= 0.0 { 0.0 } else { lo }, if v_hi <= 0.0 { 0.0 } else { hi })
    });
    let tick_h = text::height(sz.tick_font);
    let make_y = |px: f64| value_axis(y_range, false, px, (px / (sz.tick_font * 3.5)) as usize, tick_h * 0.4, &|_| tick_h);
    let make_x = |px: f64| axis::category_axis(&c.categories, px, sz.tick_font, &|t| text::width(sz.tick_font, t));
    let (mut chart, x, y) = frame(&area, sz, (&c.x_label, &c.y_label), &make_x, &make_y, Mesh { x_grid: false, y_grid: true })?;
    if y_range.is_none() {
        return no_data_note(&chart, &x, &y, sz);
    }
    let n_series = c.series.len().max(1) as f64;
    let bar_w = BAR_GROUP_WIDTH / n_series;
    let bar_px = f64::from(chart.plotting_area().dim_in_pixel().0) / c.categories.len().max(1) as f64 * bar_w;
    for (s, series) in c.series.iter().enumerate() {
        let color = PALETTE[s % PALETTE.len()];
        let bars = series.values.iter().enumerate().filter(|(_, v)| plottable(v)).map(|(i, &v)| {
            let x0 = i as f64 - BAR_GROUP_WIDTH / 2.0 + s as f64 * bar_w;
            (x0, x0 + bar_w, v)
        });
        // A sliver between neighbouring bars of a group (5% of a bar each side).
        chart.draw_series(bars.clone().map(|(x0, x1, v)| Rectangle::new([(x0 + bar_w * 0.05, 0.0), (x1 - bar_w * 0.05, v)], color.filled())))?;
        // Value labels on the bars' ends, where they fit.
        let labels = bars.filter_map(|(x0, x1, v)| {
            let label = axis::short_number(v, 3);
            (text::width(sz.tick_font, &label) + 2.0 <= bar_px).then_some(((x0 + x1) / 2.0, v, label))
        });
        chart.draw_series(labels.map(|(xc, v, label)| {
            let (v_pos, dy) = if v >= 0.0 { (VPos::Bottom, -3) } else { (VPos::Top, 3) };
            EmptyElement::at((xc, v)) + Text::new(label, (0, dy), font(sz.tick_font, TEXT).pos(Pos::new(HPos::Center, v_pos)))
        }))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Heat map

/// (lo, hi) of the colour scale: the finite values' range, widened when flat.
fn scale_range(h: &HeatMap) -> Option<(f64, f64)> {
    let plottable = |v: &f64| v.is_finite() && v.abs() <= axis::MAX_ABS;
    axis::padded_range(h.values.iter().flatten().copied().filter(plottable), 0.0, 0.5)
}

fn viridis(v: f64, lo: f64, hi: f64) -> RGBColor {
    ViridisRGB::get_color_normalized(v.clamp(lo, hi), lo, hi)
}

/// Black or white, whichever reads better on `c` (Rec. 709 luma).
fn ink_on(c: &RGBColor) -> RGBColor {
    let luma = 0.2126 * f64::from(c.0) + 0.7152 * f64::from(c.1) + 0.0722 * f64::from(c.2);
    if luma > 140.0 {
        TEXT
    } else {
        WHITE
    }
}

pub(crate) fn heat_map(root: &Area<'_>, hm: &HeatMap, sz: &Sizes) -> DrawResult<()> {
    let area = titled(root, &hm.title, sz)?;
    let (_, h) = area.dim_in_pixel();
    let tick_h = text::height(sz.tick_font);
    let bar_h = (tick_h * 1.2).round();
    let scale_desc_h = if hm.scale_label.is_empty() { 0.0 } else { text::height(sz.label_font) + sz.pad * 0.3 };
    let strip_h = (bar_h + f64::from(2 * sz.tick_mark) + tick_h + scale_desc_h + sz.pad * 0.8).ceil();
    let (upper, strip) = area.split_vertically(h as i32 - strip_h as i32);

    let gap = sz.tick_font;
    let make_x = |px: f64| axis::category_axis(&hm.columns, px, gap, &|t| text::width(sz.tick_font, t));
    // Row i at y = i on a reversed axis (lo at the bottom is the last row): row 0 on top.
    let make_y = |px: f64| {
        let a = axis::category_axis(&hm.rows, px, tick_h * 0.2, &|_| tick_h);
        Axis { lo: a.hi, hi: a.lo, ..a }
    };
    let (mut chart, x, y) = frame(&upper, sz, (&hm.x_label, &hm.y_label), &make_x, &make_y, Mesh { x_grid: false, y_grid: false })?;
    let Some((lo, hi)) = scale_range(hm) else {
        return no_data_note(&chart, &x, &y, sz);
    };
    let cells = hm.values.iter().enumerate().flat_map(|(i, row)| row.iter().enumerate().map(move |(j, &v)| (i, j, v)));
    let color_of = |v: f64| if v.is_finite() && v.abs() <= axis::MAX_ABS { viridis(v, lo, hi) } else { NO_DATA };
    chart.draw_series(cells.clone().map(|(i, j, v)| {
        let (xc, yc) = (j as f64, i as f64);
        Rectangle::new([(xc - 0.5, yc - 0.5), (xc + 0.5, yc + 0.5)], color_of(v).filled())
    }))?;
    // The value in each cell, when the cells are large enough to hold it.
    let (pw, ph) = chart.plotting_area().dim_in_pixel();
    let cell_w = f64::from(pw) / hm.columns.len().max(1) as f64;
    let cell_h = f64::from(ph) / hm.rows.len().max(1) as f64;
    if cell_h >= tick_h * 1.2 {
        let labels = cells.filter(|(_, _, v)| v.is_finite()).filter_map(|(i, j, v)| {
            let label = axis::short_number(v, 2);
            (text::width(sz.tick_font, &label) + 4.0 <= cell_w).then(|| {
                let style = font(sz.tick_font, ink_on(&color_of(v))).pos(Pos::new(HPos::Center, VPos::Center));
                Text::new(label, (j as f64, i as f64), style)
            })
        });
        chart.draw_series(labels)?;
    }

    // Colour bar under the plot, over exactly the plot's columns.
    let (plot_x, _) = chart.plotting_area().get_pixel_range();
    let (strip_x, _) = strip.get_pixel_range();
    let left = (plot_x.start - strip_x.start).max(0);
    let right = (strip_x.end - plot_x.end).max(0);
    let extent = |t: &str| text::width(sz.tick_font, t);
    let scale = axis::fit_ticks(lo, hi, false, f64::from(pw), (f64::from(pw) / (sz.tick_font * 6.0)) as usize, sz.tick_font * 1.5, &extent);
    let mut bar = ChartBuilder::on(&strip)
        .margin_left(left)
        .margin_right(right)
        .margin_top((sz.pad * 0.5) as i32)
        .x_label_area_size((strip_h - bar_h - sz.pad * 0.5).floor() as i32)
        .build_cartesian_2d(scale, Axis { lo: 0.0, hi: 1.0, ticks: Vec::new(), minor: Vec::new(), labels: axis::Labels::Fixed(0) })?;
    let mut style = bar.configure_mesh();
    style
        .label_style(font(sz.tick_font, TEXT))
        .axis_desc_style(font(sz.label_font, TEXT))
        .axis_style(FRAME)
        .set_all_tick_mark_size(sz.tick_mark)
        .disable_mesh()
        .disable_y_axis();
    let scale_desc = text::fit(sz.label_font, &hm.scale_label, f64::from(pw));
    if !scale_desc.is_empty() {
        style.x_desc(scale_desc);
    }
    style.draw()?;
    // One rectangle per pixel column of the bar.
    let steps = pw.max(1);
    let step = (hi - lo) / f64::from(steps);
    bar.draw_series((0..steps).map(|k| {
        let v0 = lo + step * f64::from(k);
        Rectangle::new([(v0, 0.0), (v0 + step, 1.0)], viridis(v0 + step / 2.0, lo, hi).filled())
    }))?;
    Ok(())
}
