//! `llama2_train::plot::save_png` through its public API: the PNG decodes with the requested
//! size and shows the curves; degenerate input does not panic; skipped points (NaN, inf,
//! non-positive under log_y) change nothing; errors name the path; the write is atomic.

use std::fs;
use std::path::{Path, PathBuf};

use llama2_train::plot::{save_png, Chart, PlotError, Series, MAX_SIDE, MIN_SIDE};

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

/// Pixels of a series colour, told from text, grid and frame (all grey: r = g = b) by
/// their saturation. tab10 blue is (31, 119, 180), tab10 orange is (255, 127, 14);
/// anti-aliased edges blend towards white but keep the sign of (b - r).
fn count_blue(img: &Image) -> usize {
    img.pixels.iter().filter(|p| i32::from(p[2]) - i32::from(p[0]) > 60).count()
}
fn count_orange(img: &Image) -> usize {
    img.pixels.iter().filter(|p| i32::from(p[0]) - i32::from(p[2]) > 100).count()
}
fn count_saturated(img: &Image) -> usize {
    img.pixels.iter().filter(|p| p.iter().max().unwrap_or(&0) - p.iter().min().unwrap_or(&0) > 40).count()
}
fn count_non_white(img: &Image) -> usize {
    img.pixels.iter().filter(|p| **p != [255, 255, 255]).count()
}

fn loss_chart() -> Chart {
    let train = (0..2000).map(|s| (s as f64, 2.0 + 8.0 * (-(s as f64) / 300.0).exp())).collect();
    let val = (0..=4).map(|k| (k as f64 * 500.0, 2.2 + 8.0 * (-(k as f64) * 500.0 / 300.0).exp())).collect();
    Chart {
        title: "Pretraining".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series: vec![Series { name: "train".into(), points: train }, Series { name: "val".into(), points: val }],
        log_y: false,
    }
}

#[test]
fn two_series_write_a_png_of_the_requested_size_showing_both_curves() {
    let dir = TempDir::new("two-series");
    let path = dir.path("loss.png");
    save_png(&loss_chart(), &path, 800, 500).expect("save_png");
    let img = decode(&path);
    assert_eq!((img.width, img.height), (800, 500));
    assert_eq!(img.pixels.len(), 800 * 500);

    let mut colours = img.pixels.clone();
    colours.sort_unstable();
    colours.dedup();
    // Anti-aliased text and lines in two colours give hundreds of distinct colours; a blank
    // or frame-only image has a handful.
    assert!(colours.len() > 100, "only {} distinct colours", colours.len());
    // Both curves span the plot width (~700 px) with a 1.9 px line (the val curve has 5
    // markers too): far more than a legend swatch alone (~100 px). Measured: ~1900 each.
    let (blue, orange) = (count_blue(&img), count_orange(&img));
    assert!(blue > 1000, "train curve: {blue} blue pixels");
    assert!(orange > 1000, "val curve: {orange} orange pixels");
}

#[test]
fn overwrites_atomically_and_leaves_no_temporary_file() {
    let dir = TempDir::new("atomic");
    let path = dir.path("curve.png");
    fs::write(&path, b"old contents").expect("seed file");
    save_png(&loss_chart(), &path, 640, 400).expect("save_png");
    assert_eq!(decode(&path).width, 640);
    let names: Vec<String> = fs::read_dir(&dir.0).expect("list").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["curve.png"]);
}

#[test]
fn degenerate_inputs_still_write_valid_pngs() {
    let dir = TempDir::new("degenerate");
    let one = |points: Vec<(f64, f64)>| Chart { series: vec![Series { name: "s".into(), points }], ..loss_chart() };
    let cases: Vec<(&str, Chart)> = vec![
        ("no series", Chart { series: vec![], ..loss_chart() }),
        ("empty series", one(vec![])),
        ("single point", one(vec![(3.0, 1.5)])),
        ("constant", one(vec![(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)])),
        ("constant zero", one(vec![(0.0, 0.0), (1.0, 0.0)])),
        ("same x", one(vec![(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)])),
        ("all NaN", one(vec![(f64::NAN, 1.0), (1.0, f64::NAN), (f64::INFINITY, f64::NEG_INFINITY)])),
        ("huge values", one(vec![(0.0, -1e300), (1.0, 1e300), (2.0, f64::MAX), (3.0, f64::MIN_POSITIVE)])),
        ("tiny span", one(vec![(0.0, 1.0), (1.0, 1.0 + 1e-15), (2.0, 1.0 - 1e-15)])),
        ("unsorted x", one(vec![(3.0, 1.0), (1.0, 2.0), (2.0, 0.5), (0.0, 4.0)])),
        ("log of non-positive", Chart { log_y: true, ..one(vec![(0.0, 0.0), (1.0, -2.0)]) }),
        ("log constant", Chart { log_y: true, ..one(vec![(0.0, 1e-3), (1.0, 1e-3)]) }),
        ("empty labels", Chart { title: String::new(), x_label: String::new(), y_label: String::new(), ..one(vec![(0.0, 1.0), (1.0, 2.0)]) }),
        ("unnamed series", Chart { series: vec![Series { name: String::new(), points: vec![(0.0, 1.0), (1.0, 2.0)] }], ..loss_chart() }),
        ("long text", Chart { title: "t".repeat(500), y_label: "y".repeat(500), x_label: "x".repeat(500), ..one(vec![(0.0, 1.0), (1.0, 0.0)]) }),
        (
            "many series",
            Chart { series: (0..200).map(|i| Series { name: format!("run {i}"), points: vec![(0.0, f64::from(i)), (1.0, 0.0)] }).collect(), ..loss_chart() },
        ),
    ];
    for (name, chart) in &cases {
        for (w, h) in [(MIN_SIDE, MIN_SIDE), (800, 500), (1999, 1201)] {
            let path = dir.path("case.png");
            save_png(chart, &path, w, h).unwrap_or_else(|e| panic!("{name} at {w}x{h}: {e}"));
            let img = decode(&path);
            assert_eq!((img.width, img.height), (w, h), "{name}");
            assert!(count_non_white(&img) > 0, "{name} at {w}x{h}: blank image");
        }
    }
}

#[test]
fn empty_chart_says_no_data_and_draws_no_curve() {
    let dir = TempDir::new("empty");
    let path = dir.path("empty.png");
    save_png(&Chart { series: vec![], ..loss_chart() }, &path, 800, 500).expect("save_png");
    let img = decode(&path);
    // Frame, title, axis labels and the grey "no data" note, but no colour at all.
    assert!(count_non_white(&img) > 1000, "{} non-white pixels", count_non_white(&img));
    assert_eq!(count_saturated(&img), 0);
}

/// Two charts that must draw the same pixels.
fn assert_same_image(dir: &TempDir, a: &Chart, b: &Chart) {
    let (pa, pb) = (dir.path("a.png"), dir.path("b.png"));
    save_png(a, &pa, 800, 500).expect("save a");
    save_png(b, &pb, 800, 500).expect("save b");
    let (ia, ib) = (decode(&pa), decode(&pb));
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
    let chart = |points| Chart { series: vec![Series { name: "loss".into(), points }], ..loss_chart() };
    assert_same_image(&dir, &chart(clean), &chart(dirty));
}

#[test]
fn log_y_draws_positive_values_and_skips_the_rest() {
    let dir = TempDir::new("log-y");
    let positive = vec![(0.0, 10.0), (1.0, 3.0), (3.0, 0.5), (4.0, 0.02)];
    let mut mixed = positive.clone();
    mixed.insert(2, (2.0, 0.0));
    mixed.insert(1, (0.5, -4.0));
    let chart = |points| Chart { series: vec![Series { name: "loss".into(), points }], log_y: true, ..loss_chart() };
    assert_same_image(&dir, &chart(positive.clone()), &chart(mixed));

    let path = dir.path("log.png");
    save_png(&chart(positive), &path, 800, 500).expect("save_png");
    assert!(count_blue(&decode(&path)) > 500, "log curve not drawn");

    // Only non-positive values: nothing to draw, same as an empty series of that name.
    let none = chart(vec![(0.0, 0.0), (1.0, -1.0)]);
    assert_same_image(&dir, &none, &chart(vec![]));
}

#[test]
fn errors_name_the_path_and_hint_at_a_fix() {
    let dir = TempDir::new("errors");
    let chart = loss_chart();

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

    assert!(matches!(save_png(&chart, Path::new(""), 800, 500), Err(PlotError::BadPath { .. })));
    assert!(matches!(save_png(&chart, &dir.0.join(".."), 800, 500), Err(PlotError::BadPath { .. })));
}
