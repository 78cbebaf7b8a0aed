//! Text for the charts: the embedded DejaVu Sans, registered with plotters, and
//! [`Canvas`], plotters' RGB bitmap backend with its own text placement.
//!
//! Why a wrapper: plotters 0.3.7's `ab_glyph` text path (`style/font/ab_glyph.rs`) puts
//! each glyph's raster at the integer pen position and drops the glyph's left side
//! bearing (`px_bounds().min.x`), so letters are mis-spaced ("Rew ard"), and it puts the
//! baseline at half the font size below the top while reporting a box of size/1.24, so
//! centred labels sit high. [`Canvas`] passes every drawing call to `BitMapBackend` and
//! only replaces `draw_text` and `estimate_text_size`: glyphs at their sub-pixel pen
//! positions (advances plus kerning) with their bearings, the box from the font's ascent
//! and descent, anchors and the 90/180/270 degree turns as plotters defines them.
//!
//! Crate-visible items: [`register`], [`Canvas`], [`width`], [`height`], [`fit`].

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::backend::BitMapBackend;
use plotters::prelude::DrawingBackend;
use plotters::style::text_anchor::{HPos, VPos};
use plotters::style::FontStyle;
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind};

/// DejaVu Sans 2.37 (Bitstream Vera licence, `tools/assets/DejaVuSans.LICENSE`).
static FONT_TTF: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
static REGISTERED: OnceLock<bool> = OnceLock::new();

fn font() -> Option<&'static FontRef<'static>> {
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_TTF).ok()).as_ref()
}

/// Parses the embedded font and registers it with plotters as "sans-serif" (once per
/// process). False if the font does not parse, which is a build problem.
pub(crate) fn register() -> bool {
    *REGISTERED.get_or_init(|| font().is_some() && plotters::style::register_font("sans-serif", FontStyle::Normal, FONT_TTF).is_ok())
}

/// Glyph pen positions along the baseline and the total advance, in pixels at `px`.
fn layout(font: &FontRef<'static>, px: f32, text: &str) -> (Vec<(ab_glyph::GlyphId, f32)>, f32) {
    let f = font.as_scaled(PxScale::from(px));
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

/// Width of one line of `text` at `px` pixels (0 if the font is missing).
pub(crate) fn width(px: f64, text: &str) -> f64 {
    font().map_or(0.0, |f| f64::from(layout(f, px as f32, text).1))
}

/// Height of a line at `px` pixels: ascent minus descent.
pub(crate) fn height(px: f64) -> f64 {
    font().map_or(px, |f| {
        let s = f.as_scaled(PxScale::from(px as f32));
        f64::from(s.ascent() - s.descent())
    })
}

/// `text`, cut at the end with an ellipsis so that it is at most `max_width` wide.
pub(crate) fn fit(px: f64, text: &str, max_width: f64) -> String {
    if width(px, text) <= max_width {
        return text.to_string();
    }
    let mut cut = text.to_string();
    while cut.pop().is_some() {
        let candidate = format!("{}\u{2026}", cut.trim_end());
        if width(px, &candidate) <= max_width {
            return candidate;
        }
    }
    String::new()
}

/// plotters' RGB bitmap backend over a caller's buffer, with our text placement.
pub(crate) struct Canvas<'a>(pub(crate) BitMapBackend<'a>);

type Error<'a> = DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

impl<'a> DrawingBackend for Canvas<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), Error<'a>> {
        self.0.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), Error<'a>> {
        self.0.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), Error<'a>> {
        self.0.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> Result<(), Error<'a>> {
        self.0.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(&mut self, upper_left: BackendCoord, bottom_right: BackendCoord, style: &S, fill: bool) -> Result<(), Error<'a>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(&mut self, path: I, style: &S) -> Result<(), Error<'a>> {
        self.0.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(&mut self, center: BackendCoord, radius: u32, style: &S, fill: bool) -> Result<(), Error<'a>> {
        self.0.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(&mut self, vert: I, style: &S) -> Result<(), Error<'a>> {
        self.0.fill_polygon(vert, style)
    }
    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> Result<(), Error<'a>> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<T: BackendTextStyle>(&self, text: &str, style: &T) -> Result<(u32, u32), Error<'a>> {
        Ok((width(style.size(), text).ceil() as u32, height(style.size()).ceil() as u32))
    }

    /// Draws `text` with its box (advance width x ascent-descent) anchored at `pos` as
    /// `style.anchor()` says, then turned about `pos` by `style.transform()`.
    fn draw_text<T: BackendTextStyle>(&mut self, text: &str, style: &T, pos: BackendCoord) -> Result<(), Error<'a>> {
        let color = style.color();
        let Some(font) = font() else { return Ok(()) };
        if color.alpha == 0.0 {
            return Ok(());
        }
        let px = style.size() as f32;
        let scaled = font.as_scaled(PxScale::from(px));
        let (ascent, descent) = (scaled.ascent(), scaled.descent());
        let (glyphs, advance) = layout(font, px, text);
        let anchor = style.anchor();
        // Start of the baseline relative to the anchor, rounded to whole pixels so that each
        // glyph keeps its sub-pixel pen position inside its own raster.
        let x0 = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -advance / 2.0,
            HPos::Right => -advance,
        };
        let y0 = match anchor.v_pos {
            VPos::Top => ascent,
            VPos::Center => (ascent + descent) / 2.0,
            VPos::Bottom => descent,
        };
        let (x0, y0) = (x0.round() as i32, y0.round() as i32);
        let turn = style.transform();
        let mut result = Ok(());
        for (id, pen) in glyphs {
            let Some(outline) = font.outline_glyph(id.with_scale_and_position(PxScale::from(px), point(pen, 0.0))) else { continue };
            let b = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                if result.is_err() || coverage <= 0.0 {
                    return;
                }
                let (lx, ly) = (x0 + b.min.x as i32 + gx as i32, y0 + b.min.y as i32 + gy as i32);
                let (tx, ty) = turn.transform(lx, ly);
                result = self.0.draw_pixel((pos.0 + tx, pos.1 + ty), color.mix(f64::from(coverage.min(1.0))));
            });
            if result.is_err() {
                break;
            }
        }
        result
    }
}
