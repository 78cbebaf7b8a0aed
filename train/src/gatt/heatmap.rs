//! The GAtt attention picture as a PNG heat map (Llama 2 Figure 10): one
//! panel per model, rows = layers (layer 0 at the top), columns = the
//! tokens of the answer, colour = attention mass on the system message
//! (one colour scale, 0 to the largest value of all panels, shown in a
//! colour bar).
//!
//! Small and isolated on purpose, until the project's plots move onto
//! `plotters`: cells are filled rectangles (tiny-skia), text is drawn from
//! DejaVu Sans with ab_glyph (the font `crate::plot` embeds), the image is
//! encoded by `png` and written with the one atomic writer.
//!
//! Public items: [`Panel`], [`save_heatmap`].

use crate::error::{Result, TrainError};
use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use tiny_skia::{Color, Paint, Pixmap, Rect, Transform};

static FONT_TTF: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// One model's map: `values[layer][token]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub title: String,
    pub values: Vec<Vec<f64>>,
}

/// Viridis at 5 anchors (matplotlib's `viridis` at 0, .25, .5, .75, 1),
/// linearly interpolated between them.
fn colour(x: f64) -> [u8; 3] {
    const A: [[f64; 3]; 5] = [[68.0, 1.0, 84.0], [59.0, 82.0, 139.0], [33.0, 145.0, 140.0], [94.0, 201.0, 98.0], [253.0, 231.0, 37.0]];
    let x = if x.is_finite() { x.clamp(0.0, 1.0) } else { 0.0 } * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f64;
    let c = |k: usize| (A[i][k] + (A[i + 1][k] - A[i][k]) * f).round() as u8;
    [c(0), c(1), c(2)]
}

fn fill(canvas: &mut Pixmap, x: f32, y: f32, w: f32, h: f32, rgb: [u8; 3]) {
    if let Some(r) = Rect::from_xywh(x, y, w, h) {
        let mut p = Paint::default();
        p.set_color_rgba8(rgb[0], rgb[1], rgb[2], 255);
        canvas.fill_rect(r, &p, Transform::identity(), None);
    }
}

/// Draws one line of text with its left end at x and its baseline at y.
fn text(canvas: &mut Pixmap, font: &FontRef<'static>, s: &str, x: f32, y: f32, px: f32) {
    let f = font.as_scaled(PxScale::from(px));
    let (w, h) = (canvas.width() as i64, canvas.height() as i64);
    let mut pen = x;
    for c in s.chars() {
        let id = f.glyph_id(c);
        let g = id.with_scale_and_position(PxScale::from(px), point(pen, y));
        pen += f.h_advance(id);
        let Some(o) = font.outline_glyph(g) else { continue };
        let b = o.px_bounds();
        let data = canvas.data_mut();
        o.draw(|gx, gy, cov| {
            let (px_, py_) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
            if px_ < 0 || py_ < 0 || px_ >= w || py_ >= h {
                return;
            }
            let i = ((py_ * w + px_) * 4) as usize;
            for k in 0..3 {
                // black text over the pixel, by coverage
                data[i + k] = (data[i + k] as f32 * (1.0 - cov.clamp(0.0, 1.0))) as u8;
            }
        });
    }
}

fn text_width(font: &FontRef<'static>, s: &str, px: f32) -> f32 {
    let f = font.as_scaled(PxScale::from(px));
    s.chars().map(|c| f.h_advance(f.glyph_id(c))).sum()
}

/// Writes the panels side by side to `path` (PNG).
pub fn save_heatmap(path: &std::path::Path, title: &str, panels: &[Panel]) -> Result<()> {
    let font = FontRef::try_from_slice(FONT_TTF).map_err(|e| TrainError::Invalid(format!("embedded font: {e}")))?;
    let layers = panels.iter().map(|p| p.values.len()).max().unwrap_or(0).max(1);
    let vmax = panels.iter().flat_map(|p| p.values.iter().flatten()).copied().filter(|x| x.is_finite()).fold(0.0f64, f64::max).max(1e-12);
    let (cell_h, margin, label_w, top, panel_gap, bar_w) = (36.0f32, 16.0f32, 70.0f32, 56.0f32, 30.0f32, 90.0f32);
    let widths: Vec<f32> = panels
        .iter()
        .map(|p| (p.values.iter().map(|r| r.len()).max().unwrap_or(1).max(1) as f32 * 12.0).clamp(160.0, 900.0).max(text_width(&font, &p.title, 13.0)))
        .collect();
    let footer = "attention mass on the system message (max over heads)";
    let width = (margin + label_w + widths.iter().sum::<f32>() + panel_gap * panels.len() as f32 + bar_w + margin)
        .max(2.0 * margin + text_width(&font, title, 16.0))
        .max(2.0 * margin + text_width(&font, footer, 12.0))
        .ceil() as u32;
    let height = (top + layers as f32 * cell_h + 60.0).ceil() as u32;
    let mut canvas = Pixmap::new(width.max(64), height.max(64)).ok_or_else(|| TrainError::Invalid("heat map too large".into()))?;
    canvas.fill(Color::WHITE);
    text(&mut canvas, &font, title, margin, 24.0, 16.0);
    for l in 0..layers {
        text(&mut canvas, &font, &format!("layer {l}"), margin, top + (l as f32 + 0.65) * cell_h, 12.0);
    }
    let mut x0 = margin + label_w;
    for (p, &w) in panels.iter().zip(&widths) {
        text(&mut canvas, &font, &p.title, x0, top - 8.0, 13.0);
        for (l, row) in p.values.iter().enumerate() {
            let cw = w / row.len().max(1) as f32;
            for (j, &v) in row.iter().enumerate() {
                // whole-pixel cell edges: no anti-aliased seams between cells
                let (xa, xb) = ((x0 + j as f32 * cw).round(), (x0 + (j + 1) as f32 * cw).round());
                fill(&mut canvas, xa, top + l as f32 * cell_h, (xb - xa).max(1.0), cell_h, colour(v / vmax));
            }
        }
        let n = p.values.first().map_or(0, |r| r.len());
        text(&mut canvas, &font, &format!("answer tokens 1..{n}"), x0, top + layers as f32 * cell_h + 18.0, 12.0);
        x0 += w + panel_gap;
    }
    // colour bar
    let bar_h = layers as f32 * cell_h;
    for k in 0..100 {
        let v = 1.0 - k as f64 / 99.0;
        fill(&mut canvas, x0, top + bar_h * k as f32 / 100.0, 16.0, bar_h / 100.0 + 1.0, colour(v));
    }
    text(&mut canvas, &font, &format!("{vmax:.3}"), x0 + 20.0, top + 10.0, 11.0);
    text(&mut canvas, &font, "0", x0 + 20.0, top + bar_h, 11.0);
    text(&mut canvas, &font, footer, margin, height as f32 - 12.0, 12.0);
    let rgb: Vec<u8> = canvas.data().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, canvas.width(), canvas.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| TrainError::Invalid(format!("png: {e}")))?;
        w.write_image_data(&rgb).map_err(|e| TrainError::Invalid(format!("png: {e}")))?;
    }
    llama2_model::atomic::write_atomic(path, &bytes).map_err(|e| TrainError::io(path, e))
}
