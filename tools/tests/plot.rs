//! `llama2_tools::plot::save_png` through its public API, for all three chart kinds: the
//! PNG decodes with the requested size and shows the data (pixel colour counts); degenerate
//! input does not panic; skipped values (NaN, inf, non-positive under log_y) change
//! nothing; errors name the path; the write is atomic and a failure leaves nothing behind.

use std::fs;
use std::path::{Path, PathBuf};

use llama2_tools::plot::{save_png, BarChart, BarSeries, Chart, HeatMap, LineChart, PlotError, Series, MAX_SIDE, MIN_SIDE};

/// A fresh, empty directory for one test (removed when dropped).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("llama2-plot-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0).expect("list").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Image {
    width: u32,
    height: u32,
    pixels: Vec<[u8; 3]>, // (height, width)
}

impl Image {
    fn at(&self, x: u32, y: u32) -> [u8; 3] {
        self.pixels[(y * self.width + x) as usize]
    }
}

fn decode(path: &Path) -> Image {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    let pixels = buf[..info.buffer_size()].chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
    Image { width: info.width, height: info.height, pixels }
}

fn save(chart: impl Into<Chart>, path: &Path, width: u32, height: u32) -> Image {
    save_png(&chart.into(), path, width, height).unwrap_or_else(|e| panic!("save_png: {e}"));
    decode(path)
}

/// Pixels of a series colour, told from text, grid and frame (all grey: r = g = b) by
/// their saturation. tab10 blue is (31, 119, 180), tab10 orange is (255, 127, 14);
/// anti-aliased edges blend towards white but keep the sign of (b - r).
fn is_blue(p: &[u8; 3]) -> bool {
    i32::from(p[2]) - i32::from(p[0]) > 60
}
fn is_orange(p: &[u8; 3]) -> bool {
    i32::from(p[0]) - i32::from(p[2]) > 100
}
fn count(img: &Image, f: impl Fn(&[u8; 3]) -> bool) -> usize {
    img.pixels.iter().filter(|p| f(p)).count()
}
fn is_saturated(p: &[u8; 3]) -> bool {
    p.iter().max().unwrap_or(&0) - p.iter().min().unwrap_or(&0) > 40
}
fn near(p: &[u8; 3], q: [u8; 3]) -> bool {
    p.iter().zip(q).all(|(a, b)| a.abs_diff(b) <= 12)
}

fn loss_chart() -> LineChart {
    let train = (0..2000).map(|s| (s as f64, 2.0 + 8.0 * (-(s as f64) / 300.0).exp())).collect();
    let val = (0..=4).map(|k| (k as f64 * 500.0, 2.2 + 8.0 * (-(k as f64) * 500.0 / 300.0).exp())).collect();
    LineChart {
        title: "Pretraining".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series: vec![Series { name: "train".into(), points: train }, Series { name: "val".into(), points: val }],
        log_y: false,
    }
}

fn bar_chart(a: Vec<f64>, b: Vec<f64>) -> BarChart {
    BarChart {
        title: "Reward model accuracy".into(),
        x_label: "rating bucket".into(),
        y_label: "accuracy".into(),
        categories: (0..a.len()).map(|i| format!("bucket {i}")).collect(),
        series: vec![BarSeries { name: "safety".into(), values: a }, BarSeries { name: "helpfulness".into(), values: b }],
    }
}

fn heat_map(values: Vec<Vec<f64>>) -> HeatMap {
    HeatMap {
        title: "Attention on the system message".into(),
        x_label: "turn".into(),
        y_label: "layer".into(),
        columns: (0..values.first().map_or(0, Vec::len)).map(|j| format!("turn {j}")).collect(),
        rows: (0..values.len()).map(|i| format!("L{i}")).collect(),
        values,
        scale_label: "share of attention".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Line charts

#[test]
fn two_series_write_a_png_of_the_requested_size_showing_both_curves() {
    let dir = TempDir::new("two-series");
    let img = save(loss_chart(), &dir.path("loss.png"), 800, 500);
    assert_eq!((img.width, img.height), (800, 500));
    assert_eq!(img.pixels.len(), 800 * 500);

    let mut colours = img.pixels.clone();
    colours.sort_unstable();
    colours.dedup();
    // Anti-aliased text and lines in two colours give hundreds of distinct colours; a blank
    // or frame-only image has a handful.
    assert!(colours.len() > 100, "only {} distinct colours", colours.len());
    // Both curves span the plot width (~700 px columns): the dense train curve 1 px wide,
    // anti-aliased, the 5-point val curve 2 px wide with markers; far more than a legend
    // swatch alone (~30 px). Measured: 1009 blue, 3090 orange.
    let (blue, orange) = (count(&img, is_blue), count(&img, is_orange));
    assert!(blue > 800, "train curve: {blue} blue pixels");
    assert!(orange > 1200, "val curve: {orange} orange pixels");
}

#[test]
fn overwrites_atomically_and_leaves_no_temporary_file() {
    let dir = TempDir::new("atomic");
    let path = dir.path("curve.png");
    fs::write(&path, b"old contents").expect("seed file");
    assert_eq!(save(loss_chart(), &path, 640, 400).width, 640);
    assert_eq!(dir.names(), ["curve.png"]);
}

#[test]
fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
    let dir = TempDir::new("failed-write");
    // The target is a non-empty directory: the PNG is written to a temporary file, and the
    // rename over the directory fails.
    let target = dir.path("loss.png");
    fs::create_dir_all(target.join("inside")).expect("dir");
    let err = save_png(&loss_chart().into(), &target, 640, 400).expect_err("rename over a directory");
    assert!(matches!(err, PlotError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("loss.png"), "{err}");
    assert_eq!(dir.names(), ["loss.png"], "temporary file left behind");
    assert!(target.join("inside").is_dir());

    // A bad chart leaves an existing file untouched.
    let path = dir.path("old.png");
    fs::write(&path, b"old contents").expect("seed file");
    let bad = BarChart { categories: vec!["a".into()], ..bar_chart(vec![1.0, 2.0], vec![1.0, 2.0]) };
    assert!(matches!(save_png(&bad.into(), &path, 640, 400), Err(PlotError::Shape { .. })));
    assert!(matches!(save_png(&loss_chart().into(), &path, 10, 400), Err(PlotError::BadSize { .. })));
    assert_eq!(fs::read(&path).expect("read"), b"old contents");
    assert_eq!(dir.names(), ["loss.png", "old.png"]);
}

#[test]
fn degenerate_inputs_still_write_valid_pngs() {
    let dir = TempDir::new("degenerate");
    let one = |points: Vec<(f64, f64)>| LineChart { series: vec![Series { name: "s".into(), points }], ..loss_chart() };
    let cases: Vec<(&str, Chart)> = vec![
        ("no series", LineChart { series: vec![], ..loss_chart() }.into()),
        ("empty series", one(vec![]).into()),
        ("single point", one(vec![(3.0, 1.5)]).into()),
        ("constant", one(vec![(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)]).into()),
        ("constant zero", one(vec![(0.0, 0.0), (1.0, 0.0)]).into()),
        ("same x", one(vec![(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)]).into()),
        ("all NaN", one(vec![(f64::NAN, 1.0), (1.0, f64::NAN), (f64::INFINITY, f64::NEG_INFINITY)]).into()),
        ("huge values", one(vec![(0.0, -1e300), (1.0, 1e300), (2.0, f64::MAX), (3.0, f64::MIN_POSITIVE)]).into()),
        ("tiny span", one(vec![(0.0, 1.0), (1.0, 1.0 + 1e-15), (2.0, 1.0 - 1e-15)]).into()),
        ("unsorted x", one(vec![(3.0, 1.0), (1.0, 2.0), (2.0, 0.5), (0.0, 4.0)]).into()),
        ("log of non-positive", LineChart { log_y: true, ..one(vec![(0.0, 0.0), (1.0, -2.0)]) }.into()),
        ("log constant", LineChart { log_y: true, ..one(vec![(0.0, 1e-3), (1.0, 1e-3)]) }.into()),
        ("empty labels", LineChart { title: String::new(), x_label: String::new(), y_label: String::new(), ..one(vec![(0.0, 1.0), (1.0, 2.0)]) }.into()),
        ("unnamed series", LineChart { series: vec![Series { name: String::new(), points: vec![(0.0, 1.0), (1.0, 2.0)] }], ..loss_chart() }.into()),
        ("long text", LineChart { title: "t".repeat(500), y_label: "y".repeat(500), x_label: "x".repeat(500), ..one(vec![(0.0, 1.0), (1.0, 0.0)]) }.into()),
        (
            "many series",
            LineChart {
                series: (0..200).map(|i| Series { name: format!("run {i}"), points: vec![(0.0, f64::from(i)), (1.0, 0.0)] }).collect(),
                ..loss_chart()
            }
            .into(),
        ),
        ("bars: no categories", bar_chart(vec![], vec![]).into()),
        ("bars: no series", BarChart { series: vec![], ..bar_chart(vec![1.0], vec![1.0]) }.into()),
        ("bars: one bar", bar_chart(vec![0.7], vec![f64::NAN]).into()),
        ("bars: all NaN", bar_chart(vec![f64::NAN, f64::INFINITY], vec![f64::NAN, f64::NEG_INFINITY]).into()),
        ("bars: all zero", bar_chart(vec![0.0, 0.0], vec![0.0, 0.0]).into()),
        ("bars: all equal", bar_chart(vec![0.5, 0.5], vec![0.5, 0.5]).into()),
        ("bars: negative", bar_chart(vec![-1.0, 2.0], vec![-3.0, 0.5]).into()),
        ("bars: huge", bar_chart(vec![1e300, -1e300], vec![f64::MAX, 0.0]).into()),
        ("bars: many", bar_chart((0..300).map(f64::from).collect(), (0..300).map(|i| f64::from(i) * 0.5).collect()).into()),
        (
            "bars: long names",
            BarChart { categories: vec!["c".repeat(300), String::new()], title: "t".repeat(400), ..bar_chart(vec![1.0, 2.0], vec![2.0, 1.0]) }.into(),
        ),
        ("heat: empty", heat_map(vec![]).into()),
        ("heat: no columns", heat_map(vec![vec![], vec![]]).into()),
        ("heat: one cell", heat_map(vec![vec![0.3]]).into()),
        ("heat: all equal", heat_map(vec![vec![2.0, 2.0], vec![2.0, 2.0]]).into()),
        ("heat: all NaN", heat_map(vec![vec![f64::NAN, f64::INFINITY]]).into()),
        ("heat: huge", heat_map(vec![vec![1e300, -1e300, f64::MAX]]).into()),
        ("heat: big", heat_map((0..100).map(|i| (0..150).map(|j| f64::from(i * j)).collect()).collect()).into()),
        ("heat: empty labels", HeatMap { scale_label: String::new(), title: String::new(), ..heat_map(vec![vec![1.0, 2.0]]) }.into()),
    ];
    for (name, chart) in &cases {
        for (w, h) in [(MIN_SIDE, MIN_SIDE), (800, 500), (1999, 1201)] {
            let path = dir.path("case.png");
            save_png(chart, &path, w, h).unwrap_or_else(|e| panic!("{name} at {w}x{h}: {e}"));
            let img = decode(&path);
            assert_eq!((img.width, img.height), (w, h), "{name}");
            assert!(count(&img, |p| *p != [255, 255, 255]) > 0, "{name} at {w}x{h}: blank image");
        }
    }
}

#[test]
fn empty_chart_says_no_data_and_draws_no_curve() {
    let dir = TempDir::new("empty");
    for (name, chart) in [
        ("line", Chart::from(LineChart { series: vec![], ..loss_chart() })),
        ("bars", bar_chart(vec![f64::NAN], vec![f64::NAN]).into()),
        ("heat", heat_map(vec![vec![f64::NAN; 3]; 2]).into()),
    ] {
        let path = dir.path("empty.png");
        save_png(&chart, &path, 800, 500).expect("save_png");
        let img = decode(&path);
        // Axes, title, axis labels and the grey "no data" note, and no data colour at all
        // (the bar legend's swatches aside: 2 boxes of 27x15 px at this size).
        let non_white = count(&img, |p| *p != [255, 255, 255]);
        assert!(non_white > 1000, "{name}: {non_white} non-white pixels");
        let saturated = count(&img, is_saturated);
        assert!(saturated <= if name == "bars" { 2 * 28 * 16 } else { 0 }, "{name}: {saturated} saturated pixels");
    }
}

/// Two charts that must draw the same pixels.
fn assert_same_image(dir: &TempDir, a: impl Into<Chart>, b: impl Into<Chart>) {
    let (ia, ib) = (save(a, &dir.path("a.png"), 800, 500), save(b, &dir.path("b.png"), 800, 500));
    let differ = ia.pixels.iter().zip(&ib.pixels).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{differ} pixels differ");
}

#[test]
fn non_finite_points_are_skipped() {
    let dir = TempDir::new("non-finite");
    let clean = vec![(0.0, 3.0), (1.0, 2.5), (3.0, 2.0), (4.0, 1.8)];
    let mut dirty = clean.clone();
    dirty.insert(2, (2.0, f64::NAN));
    dirty.insert(1, (0.5, f64::INFINITY));
    dirty.push((f64::NAN, 1.0));
    dirty.push((f64::NEG_INFINITY, 1.0));
    let chart = |points| LineChart { series: vec![Series { name: "loss".into(), points }], ..loss_chart() };
    assert_same_image(&dir, chart(clean), chart(dirty));
}

#[test]
fn log_y_draws_positive_values_and_skips_the_rest() {
    let dir = TempDir::new("log-y");
    let positive = vec![(0.0, 10.0), (1.0, 3.0), (3.0, 0.5), (4.0, 0.02)];
    let mut mixed = positive.clone();
    mixed.insert(2, (2.0, 0.0));
    mixed.insert(1, (0.5, -4.0));
    let chart = |points| LineChart { series: vec![Series { name: "loss".into(), points }], log_y: true, ..loss_chart() };
    assert_same_image(&dir, chart(positive.clone()), chart(mixed));

    let img = save(chart(positive), &dir.path("log.png"), 800, 500);
    assert!(count(&img, is_blue) > 500, "log curve not drawn");

    // Only non-positive values: nothing to draw, same as an empty series of that name.
    assert_same_image(&dir, chart(vec![(0.0, 0.0), (1.0, -1.0)]), chart(vec![]));
}

/// Root-mean-square distance (px) of the blue pixels above the x axis from their
/// least-squares line: ~1 for a straight line with markers, tens for a bent one.
fn blue_line_residual(img: &Image) -> f64 {
    // The x axis: the row with the most frame-grey (80, 80, 80) pixels.
    let axis_row = (0..img.height).max_by_key(|&y| (0..img.width).filter(|&x| img.at(x, y) == [80, 80, 80]).count()).unwrap_or(img.height);
    let pts: Vec<(f64, f64)> = (0..axis_row)
        .flat_map(|y| (0..img.width).map(move |x| (x, y)))
        .filter(|&(x, y)| is_blue(&img.at(x, y)))
        .map(|(x, y)| (f64::from(x), f64::from(y)))
        .collect();
    assert!(pts.len() > 100, "{} blue pixels", pts.len());
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let slope = sxy / sxx;
    (pts.iter().map(|p| (p.1 - my - slope * (p.0 - mx)).powi(2)).sum::<f64>() / n).sqrt()
}

#[test]
fn log_y_maps_decades_to_equal_heights() {
    let dir = TempDir::new("log-decades");
    // 1, 10, 100 at x = 0, 1, 2: on a log axis one straight line through the three points;
    // on a linear axis 10 sits near the bottom and the line bends there.
    let points = vec![(0.0, 1.0), (1.0, 10.0), (2.0, 100.0)];
    let chart = LineChart { series: vec![Series { name: "loss".into(), points }], log_y: true, ..loss_chart() };
    let log = blue_line_residual(&save(chart.clone(), &dir.path("log.png"), 800, 500));
    let linear = blue_line_residual(&save(LineChart { log_y: false, ..chart }, &dir.path("lin.png"), 800, 500));
    // Markers (radius 4) and the 2 px stroke scatter pixels ~2 px about the line.
    assert!(log < 3.0, "log axis: residual {log:.1} px");
    assert!(linear > 20.0, "linear axis: residual {linear:.1} px");
}

// ---------------------------------------------------------------------------------------
// Bar charts

#[test]
fn bar_heights_follow_the_values_and_nan_bars_are_left_out() {
    let dir = TempDir::new("bars");
    // Orange bars twice as tall as blue ones, same width: twice the pixels (legend
    // swatches and anti-aliased label edges aside).
    let img = save(bar_chart(vec![1.0, 1.0, 1.0], vec![2.0, 2.0, 2.0]), &dir.path("bars.png"), 800, 500);
    let (blue, orange) = (count(&img, is_blue) as f64, count(&img, is_orange) as f64);
    assert!(blue > 5000.0, "{blue} blue pixels");
    let ratio = orange / blue;
    assert!((1.9..2.1).contains(&ratio), "orange/blue = {ratio:.3} ({orange} / {blue})");

    // A NaN bar is not drawn: two of three blue bars remain.
    let img = save(bar_chart(vec![1.0, f64::NAN, 1.0], vec![2.0, 2.0, 2.0]), &dir.path("nan.png"), 800, 500);
    let ratio = count(&img, is_blue) as f64 / blue;
    assert!((0.6..0.72).contains(&ratio), "blue with one NaN bar / without = {ratio:.3}");

    // Negative bars grow down from 0: same pixels as their positive mirror image.
    let up = save(bar_chart(vec![1.0, 2.0], vec![0.5, 1.5]), &dir.path("up.png"), 800, 500);
    let down = save(bar_chart(vec![-1.0, -2.0], vec![-0.5, -1.5]), &dir.path("down.png"), 800, 500);
    let (a, b) = (count(&up, is_blue) as f64, count(&down, is_blue) as f64);
    assert!((a - b).abs() / a < 0.02, "blue up {a}, down {b}");
}

// ---------------------------------------------------------------------------------------
// Heat maps

/// Viridis ends: the colour of the smallest and of the largest value.
const VIRIDIS_LO: [u8; 3] = [68, 1, 84];
const VIRIDIS_HI: [u8; 3] = [254, 232, 37];
const NO_DATA: [u8; 3] = [205, 205, 205];

fn mean_y(img: &Image, colour: [u8; 3]) -> (f64, usize) {
    let ys: Vec<u32> =
        (0..img.height).flat_map(|y| (0..img.width).map(move |x| (x, y))).filter(|&(x, y)| near(&img.at(x, y), colour)).map(|(_, y)| y).collect();
    (ys.iter().map(|&y| f64::from(y)).sum::<f64>() / ys.len().max(1) as f64, ys.len())
}

#[test]
fn heat_map_colours_cells_by_value_with_row_zero_on_top() {
    let dir = TempDir::new("heat");
    // Row 0 largest, row 1 smallest, one cell of row 2 without a value.
    let img = save(heat_map(vec![vec![1.0, 1.0, 1.0], vec![0.0, 0.0, 0.0], vec![0.5, f64::NAN, 0.5]]), &dir.path("heat.png"), 800, 500);
    let (y_hi, n_hi) = mean_y(&img, VIRIDIS_HI);
    let (y_lo, n_lo) = mean_y(&img, VIRIDIS_LO);
    let (y_none, n_none) = mean_y(&img, NO_DATA);
    // Cells of ~240x120 px: three cells per colour, minus the value text in each
    // (measured: 86495 high, 85920 low, 29232 no-data pixels).
    assert!(n_hi > 3 * 20_000 && n_lo > 3 * 20_000, "cells: {n_hi} high, {n_lo} low pixels");
    let ratio = n_none as f64 / n_hi as f64;
    assert!((0.3..0.36).contains(&ratio), "one no-data cell for three full ones: {ratio:.3}");
    assert!(y_hi < y_lo && y_lo < y_none, "rows top to bottom: y {y_hi:.0}, {y_lo:.0}, {y_none:.0}");

    // Shapes must agree with the names; the error names the path and what is off.
    let path = dir.path("ragged.png");
    let mut ragged = heat_map(vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
    ragged.values[1].pop();
    let err = save_png(&ragged.into(), &path, 800, 500).expect_err("ragged rows");
    let msg = err.to_string();
    assert!(matches!(err, PlotError::Shape { .. }) && msg.contains("ragged.png") && msg.contains("row 1") && msg.contains("HINT"), "{msg}");
    let short = HeatMap { rows: vec!["only".into()], ..heat_map(vec![vec![1.0], vec![2.0]]) };
    assert!(matches!(save_png(&short.into(), &path, 800, 500), Err(PlotError::Shape { .. })));
    assert!(!path.exists());
}

// ---------------------------------------------------------------------------------------
// Errors

#[test]
fn errors_name_the_path_and_hint_at_a_fix() {
    let dir = TempDir::new("errors");
    let chart: Chart = loss_chart().into();

    let path = dir.path("tiny.png");
    let err = save_png(&chart, &path, MIN_SIDE - 1, 500).expect_err("too small");
    assert!(matches!(err, PlotError::BadSize { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("tiny.png") && msg.contains("HINT"), "{msg}");
    assert!(matches!(save_png(&chart, &path, 800, MAX_SIDE + 1), Err(PlotError::BadSize { .. })));
    assert!(!path.exists(), "nothing written on a size error");

    let missing = dir.path("no/such/dir/loss.png");
    let err = save_png(&chart, &missing, 800, 500).expect_err("missing directory");
    assert!(matches!(err, PlotError::Io { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("no/such/dir/loss.png") && msg.contains("HINT"), "{msg}");

    let bars = dir.path("bars.png");
    let err = save_png(&bar_chart(vec![1.0, 2.0], vec![1.0]).into(), &bars, 800, 500).expect_err("short series");
    let msg = err.to_string();
    assert!(msg.contains("bars.png") && msg.contains("\"helpfulness\" has 1 values for 2 categories") && msg.contains("HINT"), "{msg}");

    assert!(matches!(save_png(&chart, Path::new(""), 800, 500), Err(PlotError::BadPath { .. })));
    assert!(matches!(save_png(&chart, &dir.0.join(".."), 800, 500), Err(PlotError::BadPath { .. })));
    assert!(dir.names().is_empty(), "{:?}", dir.names());
}
