//! Axes for the charts: value ranges, tick positions and tick labels, and thinning of
//! long series. plotters draws the axes; these decide where the ticks go (handed to it
//! with `with_key_points`) and what they say.
//!
//! Why our own ticks: plotters' linear ticks are fine, but its log axis (`LogCoord`) puts
//! ticks only at powers of ten, so a loss curve from 2 to 10 gets a single tick. We plot
//! log10(y) on a linear axis and label the ticks with the values: 1..9, 1/2/5 or 1 times
//! each decade, the densest set whose labels fit, with minor grid lines at 2..9 times each
//! decade. Linear ticks are 1, 2 or 5 times a power of ten (Heckbert, "Nice numbers for
//! graph labels", Graphics Gems, 1990), all labelled with the same number of decimals.
//!
//! Crate-visible items: [`Axis`], [`Labels`], [`padded_range`], [`fit_ticks`],
//! [`category_axis`], [`thin`], [`short_number`], [`MAX_ABS`]; [`Axis`] is a plotters
//! coordinate (`Ranged`) that labels its own ticks.

use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};

/// Values beyond this magnitude are skipped like inf: keeps `hi - lo` and the padding
/// arithmetic finite (f64::MAX - (-f64::MAX) overflows).
pub(crate) const MAX_ABS: f64 = 1e300;
/// Spans below this fraction of the values' magnitude count as constant: tick labels have
/// at most 12 decimals, and f64 resolves ~16 significant digits, so a relative wiggle of
/// 1e-15 can be neither labelled nor placed on evenly spaced ticks.
const MIN_REL_SPAN: f64 = 1e-9;
/// Thin a series once it has more than this many points per pixel column.
const THIN_POINTS_PER_COLUMN: usize = 4;

/// How tick values become labels.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Labels {
    /// Fixed-point with this many decimals (one per linear axis, so labels line up).
    Fixed(usize),
    /// Scientific with this many mantissa decimals, for very large or small magnitudes.
    Sci(usize),
    /// The tick is log10 of the value; label the value itself.
    Log10,
    /// Tick `i` (an integer position) is the category `names[i]`.
    Names(Vec<String>),
}

/// One axis: its value range, major ticks (labelled, grid lines) and minor ticks (light
/// grid lines only), in plotted units (log10 units for a log axis).
#[derive(Clone, Debug)]
pub(crate) struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<f64>,
    pub minor: Vec<f64>,
    pub labels: Labels,
}

impl Axis {
    /// The label of tick value `v`.
    pub fn label(&self, v: f64) -> String {
        match &self.labels {
            Labels::Fixed(decimals) => format!("{v:.decimals$}"),
            Labels::Sci(_) if v == 0.0 => "0".to_string(),
            Labels::Sci(decimals) => format!("{v:.decimals$e}"),
            Labels::Log10 => {
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
            Labels::Names(names) => {
                let i = v.round();
                if i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            }
        }
    }

    /// The widest tick label at `px` pixels.
    pub fn widest_label(&self, px: f64) -> f64 {
        self.ticks.iter().map(|&t| super::text::width(px, &self.label(t))).fold(0.0, f64::max)
    }
}

/// plotters draws an [`Axis`] as a coordinate: linear from `lo` to `hi`, grid lines and
/// labelled ticks at `ticks`, light grid lines at `minor`.
impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, (from, to): (i32, i32)) -> i32 {
        let t = (v - self.lo) / (self.hi - self.lo);
        if !t.is_finite() {
            return from + (to - from) / 2;
        }
        // Clamped well outside the image: keeps the i32 conversion exact.
        from + (f64::from(to - from) * t.clamp(-8.0, 9.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, value: &f64) -> String {
        self.label(*value)
    }
}

/// (lo, hi) of the values, padded by `frac` of the span on each side; a zero (or below
/// display precision, [`MIN_REL_SPAN`]) span is widened by `flat_pad` (or `flat_pad * |v|`
/// when that is larger) on each side. None when there are no values.
pub(crate) fn padded_range(values: impl Iterator<Item = f64>, frac: f64, flat_pad: f64) -> Option<(f64, f64)> {
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
    let labels = if !(1e-3..1e6).contains(&biggest) {
        let big_exp = biggest.log10().floor() as i32;
        Labels::Sci((big_exp - step_exp).clamp(0, 6) as usize)
    } else {
        Labels::Fixed((-step_exp).clamp(0, 12) as usize)
    };
    Axis { lo, hi, ticks, minor: Vec::new(), labels }
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
    Axis { lo, hi, ticks, minor, labels: Labels::Log10 }
}

/// The axis over [lo, hi] with the most ticks (aiming at `start`, then fewer) whose labels
/// do not collide: neighbours at least `gap` pixels apart, given the axis length in pixels
/// and each label's extent along the axis (`extent`).
pub(crate) fn fit_ticks(lo: f64, hi: f64, log: bool, axis_px: f64, start: usize, gap: f64, extent: &dyn Fn(&str) -> f64) -> Axis {
    // The callers pad empty spans; this keeps an empty or non-finite one from giving NaN ticks.
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 || span.is_infinite() {
        return Axis { lo, hi, ticks: Vec::new(), minor: Vec::new(), labels: Labels::Fixed(0) };
    }
    let px_per_unit = axis_px / (hi - lo);
    let mut target = start.max(2);
    loop {
        let axis = if log { log_axis(lo, hi, target) } else { linear_axis(lo, hi, target) };
        let fits = axis.ticks.windows(2).all(|w| (w[1] - w[0]) * px_per_unit >= (extent(&axis.label(w[0])) + extent(&axis.label(w[1]))) / 2.0 + gap);
        if fits || target <= 2 {
            return axis;
        }
        target -= 1;
    }
}

/// An axis of `names.len()` categories at 0, 1, ..., with half a slot of room on either
/// side; every `k`-th category is labelled, the smallest `k` whose labels (of extent
/// `extent` along the axis) are `gap` pixels apart on an axis of `axis_px` pixels.
pub(crate) fn category_axis(names: &[String], axis_px: f64, gap: f64, extent: &dyn Fn(&str) -> f64) -> Axis {
    let n = names.len().max(1);
    let slot = axis_px / n as f64;
    let widest = names.iter().map(|s| extent(s)).fold(0.0, f64::max);
    let every = (((widest + gap) / slot.max(1e-9)).ceil() as usize).clamp(1, n);
    let ticks = (0..names.len()).step_by(every).map(|i| i as f64).collect();
    Axis { lo: -0.5, hi: n as f64 - 0.5, ticks, minor: Vec::new(), labels: Labels::Names(names.to_vec()) }
}

/// `v` in at most `digits` significant digits, without trailing zeros ("0.83", "1.2e-5").
pub(crate) fn short_number(v: f64, digits: usize) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { format!("{v}") };
    }
    let exp = v.abs().log10().floor() as i32;
    if !(-3..6).contains(&exp) {
        let s = format!("{v:.*e}", digits.saturating_sub(1));
        return match s.split_once('e') {
            Some((m, e)) if m.contains('.') => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
            _ => s,
        };
    }
    let decimals = (digits as i32 - 1 - exp).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Keeps, for each of `columns` equal x-buckets, the first, min-y, max-y and last point
/// (in their original order), which draws the same pixels as the full polyline.
/// Only for x sorted ascending; other series are returned as they are.
pub(crate) fn thin(points: &[(f64, f64)], x_lo: f64, x_hi: f64, columns: usize) -> Vec<(f64, f64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(axis: &Axis) -> Vec<String> {
        axis.ticks.iter().map(|&t| axis.label(t)).collect()
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
        // Under one decade (loss 2..10.4): every integer mantissa, where plotters' own log
        // axis would give the single tick 10.
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
    fn fitted_ticks_keep_labels_apart() {
        // 10 px per character: "1000" is 40 px wide; on a 200 px axis over 0..1000 at most
        // a handful of labels fit with a 15 px gap.
        let extent = |s: &str| 10.0 * s.len() as f64;
        let a = fit_ticks(0.0, 1000.0, false, 200.0, 20, 15.0, &extent);
        let px = 200.0 / 1000.0;
        for w in a.ticks.windows(2) {
            assert!((w[1] - w[0]) * px >= 40.0 + 15.0 - 1e-9, "{:?}", labels(&a));
        }
        assert!(a.ticks.len() >= 3, "{:?}", labels(&a));
        // An empty or non-finite span gives no ticks (not 1000 NaN ticks).
        for (lo, hi) in [(0.0, 0.0), (1.0, 0.0), (f64::NAN, 1.0), (-f64::MAX, f64::MAX)] {
            assert!(fit_ticks(lo, hi, false, 200.0, 5, 15.0, &extent).ticks.is_empty(), "{lo}..{hi}");
        }
    }

    #[test]
    fn categories_are_labelled_every_kth_when_crowded() {
        let names: Vec<String> = (0..10).map(|i| format!("bucket {i}")).collect();
        // 8 characters at 10 px = 80 px + 10 px gap; 100 px slots fit all, 30 px slots every 3rd.
        let extent = |s: &str| 10.0 * s.len() as f64;
        assert_eq!(category_axis(&names, 1000.0, 10.0, &extent).ticks.len(), 10);
        let a = category_axis(&names, 300.0, 10.0, &extent);
        assert_eq!(a.ticks, [0.0, 3.0, 6.0, 9.0]);
        assert_eq!(a.label(3.0), "bucket 3");
        assert_eq!((a.lo, a.hi), (-0.5, 9.5));
    }

    #[test]
    fn short_numbers_drop_trailing_zeros() {
        assert_eq!(short_number(0.8312, 2), "0.83");
        assert_eq!(short_number(0.5, 3), "0.5");
        assert_eq!(short_number(12.0, 3), "12");
        assert_eq!(short_number(1234.4, 3), "1234");
        assert_eq!(short_number(-0.0421, 2), "-0.042");
        assert_eq!(short_number(1.23e-5, 2), "1.2e-5");
        assert_eq!(short_number(3e7, 2), "3e7");
        assert_eq!(short_number(0.0, 2), "0");
    }

    #[test]
    fn padded_range_widens_flat_and_pads_spans() {
        assert_eq!(padded_range([1.0, 3.0].into_iter(), 0.5, 1.0), Some((0.0, 4.0)));
        assert_eq!(padded_range([2.0, 2.0].into_iter(), 0.5, 1.0), Some((0.0, 4.0)));
        assert_eq!(padded_range([0.0].into_iter(), 0.5, 1.0), Some((-1.0, 1.0)));
        assert_eq!(padded_range(std::iter::empty(), 0.5, 1.0), None);
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
}
