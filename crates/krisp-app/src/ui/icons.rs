//! The app's icons (assets/icons/*.svg rendered to 64×64 PNG, compiled in).

/// Which picture the tray shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Noise removal on and working.
    On,
    /// Noise removal off (pass-through).
    Off,
    /// Something needs the user: device gone, audio server down, license stopped.
    Problem,
}

static APP: &[u8] = include_bytes!("../../../../assets/icons/png/krisp-64.png");
static ON: &[u8] = include_bytes!("../../../../assets/icons/png/krisp-on-64.png");
static OFF: &[u8] = include_bytes!("../../../../assets/icons/png/krisp-off-64.png");
static PROBLEM: &[u8] = include_bytes!("../../../../assets/icons/png/krisp-problem-64.png");

/// An RGBA picture.
pub struct Rgba {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

fn decode(png_bytes: &[u8]) -> Rgba {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder
        .read_info()
        .expect("invariant: the compiled-in icons are valid PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("invariant: small icon")];
    let info = reader
        .next_frame(&mut buf)
        .expect("invariant: the compiled-in icons are valid PNG");
    buf.truncate(info.buffer_size());
    assert_eq!(info.color_type, png::ColorType::Rgba, "icons are RGBA");
    Rgba {
        pixels: buf,
        width: info.width,
        height: info.height,
    }
}

/// The application icon (window, launcher).
pub fn app() -> Rgba {
    decode(APP)
}

/// The tray picture for a state.
pub fn tray(look: Look) -> Rgba {
    decode(match look {
        Look::On => ON,
        Look::Off => OFF,
        Look::Problem => PROBLEM,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icons_decode_and_differ_by_state() {
        let on = tray(Look::On);
        let off = tray(Look::Off);
        let problem = tray(Look::Problem);
        for i in [&on, &off, &problem, &app()] {
            assert_eq!((i.width, i.height), (64, 64));
            assert_eq!(i.pixels.len(), 64 * 64 * 4);
        }
        // The centre-left of the disc carries the state colour: green, grey, red.
        let px = |i: &Rgba| {
            let o = (32 * 64 + 10) * 4;
            [i.pixels[o], i.pixels[o + 1], i.pixels[o + 2]]
        };
        let (g, o, r) = (px(&on), px(&off), px(&problem));
        assert!(g[1] > g[0] + 60, "on is green: {g:?}");
        assert!(r[0] > r[1] + 100, "problem is red: {r:?}");
        assert!(o[0].abs_diff(o[1]) < 20, "off is grey: {o:?}");
    }
}
