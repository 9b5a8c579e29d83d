//! PNG plots with their text in the image: [`plotters`] draws into an RGB buffer with an embedded
//! font (DejaVu Sans, `bench/assets/`, no system font or library needed), and a minimal PNG
//! encoder here writes it (zlib from `miniz_oxide`, CRC-32 here). Every plot has a title, axis
//! labels with units and a legend (or labelled bars).

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut err = None;
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            err = Some("the embedded DejaVu Sans font did not load".to_string());
        }
    });
    err.map_or(Ok(()), Err)
}

fn e<E: std::fmt::Debug>(x: E) -> String {
    format!("plot: {x:?}")
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// Draw on a white `w`×`h` canvas with `f`, then write it as PNG to `path`.
fn png<F>(path: &Path, w: u32, h: u32, f: F) -> Result<(), String>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
{
    font()?;
    let mut c = Canvas::new(w as usize, h as usize);
    {
        let root = BitMapBackend::with_buffer(&mut c.px, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        f(&root)?;
        root.present().map_err(e)?;
    }
    c.save(path).map_err(|x| format!("{}: {x}", path.display()))
}

/// An RGB canvas.
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    /// Encode as PNG (8-bit RGB) and write to `path`.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut raw = Vec::with_capacity((self.w * 3 + 1) * self.h);
        for row in self.px.chunks(self.w * 3) {
            raw.push(0); // filter: none
            raw.extend_from_slice(row);
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(
            &mut png,
            b"IDAT",
            &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 9),
        );
        chunk(&mut png, b"IEND", &[]);
        std::fs::write(path, png)
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Axis range of a latency CDF plot: log10 of the left and right edges (whole decades).
#[derive(Debug, Clone, Copy)]
pub struct LogRange {
    /// log10(µs) at the left edge.
    pub lo: i32,
    /// log10(µs) at the right edge.
    pub hi: i32,
}

/// One series of a plot: its name in the legend, its colour.
pub struct Series<'a, T> {
    /// Legend text.
    pub name: &'a str,
    /// Line or bar colour.
    pub colour: [u8; 3],
    /// The values.
    pub data: T,
}

/// The cumulative distribution of each series of latencies (µs) on a log x axis from 10^lo to
/// 10^hi µs (whole decades around the data); returns that range.
pub fn cdf(path: &Path, title: &str, series: &[Series<'_, &[u32]>]) -> Result<LogRange, String> {
    let min = series
        .iter()
        .filter_map(|s| s.data.iter().copied().min())
        .min()
        .unwrap_or(1)
        .max(1);
    let max = series
        .iter()
        .filter_map(|s| s.data.iter().copied().max())
        .max()
        .unwrap_or(10)
        .max(2);
    let lo = (f64::from(min)).log10().floor() as i32;
    let hi = ((f64::from(max)).log10().ceil() as i32).max(lo + 1);
    png(path, 1000, 600, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (10f64.powi(lo)..10f64.powi(hi)).log_scale(),
                0f64..1.0001f64,
            )
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("handshake latency, µs (log scale)")
            .y_desc("fraction of handshakes ≤ x")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_labels(11)
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()
            .map_err(e)?;
        for s in series {
            let mut v = s.data.to_vec();
            if v.is_empty() {
                continue;
            }
            v.sort_unstable();
            let n = v.len() as f64;
            let mut pts = Vec::with_capacity(v.len() * 2);
            let mut prev_q = 0.0;
            for (i, &us) in v.iter().enumerate() {
                let x = f64::from(us.max(1));
                pts.push((x, prev_q));
                prev_q = (i + 1) as f64 / n;
                pts.push((x, prev_q));
            }
            let col = rgb(s.colour);
            chart
                .draw_series(LineSeries::new(pts, col.stroke_width(2)))
                .map_err(e)?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], col.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(e)
    })?;
    Ok(LogRange { lo, hi })
}

/// One bar of a bar chart: the value and the whiskers (both NaN for none).
#[derive(Debug, Clone, Copy)]
pub struct Bar {
    /// Height.
    pub value: f64,
    /// Lower whisker.
    pub lo: f64,
    /// Upper whisker.
    pub hi: f64,
}

/// A panel of a bar chart: a title, a y-axis label with its unit, and one bar per series.
pub struct Panel<'a> {
    /// Panel title.
    pub title: &'a str,
    /// y-axis label, with the unit.
    pub y_desc: &'a str,
    /// x tick label, colour and bar of each series.
    pub bars: Vec<Series<'a, Bar>>,
}

/// Panels side by side under one title; each bar labelled on the x axis and with its value
/// printed above it; whiskers as described in `note` (printed under the title).
pub fn bars(path: &Path, title: &str, note: &str, panels: &[Panel<'_>]) -> Result<(), String> {
    let w = 560 * panels.len().max(1) as u32;
    png(path, w, 620, |root| {
        let root = root.titled(title, ("sans-serif", 22)).map_err(e)?;
        let (top, rest) = root.split_vertically(26);
        top.draw(&Text::new(
            note.to_string(),
            (10, 4),
            ("sans-serif", 14).into_font().color(&RGBColor(80, 80, 80)),
        ))
        .map_err(e)?;
        let areas = rest.split_evenly((1, panels.len().max(1)));
        for (area, p) in areas.iter().zip(panels) {
            let n = p.bars.len();
            let top = p
                .bars
                .iter()
                .map(|b| {
                    if b.data.hi.is_finite() {
                        b.data.hi.max(b.data.value)
                    } else {
                        b.data.value
                    }
                })
                .filter(|v| v.is_finite())
                .fold(0.0f64, f64::max)
                * 1.18;
            let top = if top > 0.0 { top } else { 1.0 };
            let labels: Vec<String> = p.bars.iter().map(|b| b.name.to_string()).collect();
            let mut chart = ChartBuilder::on(area)
                .caption(p.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(70)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
                .map_err(e)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n.max(1))
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 0.01 && i >= 0.0 {
                        labels.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .x_desc("setup")
                .y_desc(p.y_desc)
                .y_label_formatter(&|v| {
                    if top >= 10.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.1}")
                    }
                })
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 16))
                .draw()
                .map_err(e)?;
            for (i, b) in p.bars.iter().enumerate() {
                let x = i as f64;
                let col = rgb(b.colour);
                if !b.data.value.is_finite() {
                    continue;
                }
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.35, 0.0), (x + 0.35, b.data.value)],
                        col.mix(0.75).filled(),
                    )))
                    .map_err(e)?;
                if b.data.lo.is_finite() && b.data.hi.is_finite() {
                    let k = BLACK.stroke_width(2);
                    chart
                        .draw_series([
                            PathElement::new(vec![(x, b.data.lo), (x, b.data.hi)], k),
                            PathElement::new(vec![(x - 0.12, b.data.lo), (x + 0.12, b.data.lo)], k),
                            PathElement::new(vec![(x - 0.12, b.data.hi), (x + 0.12, b.data.hi)], k),
                        ])
                        .map_err(e)?;
                }
                let label_y = if b.data.hi.is_finite() {
                    b.data.hi.max(b.data.value)
                } else {
                    b.data.value
                };
                chart
                    .draw_series(std::iter::once(Text::new(
                        num(b.data.value),
                        (x - 0.3, label_y + top * 0.06),
                        ("sans-serif", 14).into_font(),
                    )))
                    .map_err(e)?;
            }
        }
        Ok(())
    })
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Grouped bars: for each group (x tick), one bar per series (legend), y with `y_desc`.
pub fn grouped(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[&str],
    series: &[Series<'_, Vec<f64>>],
) -> Result<(), String> {
    png(path, 1100, 620, |root| {
        let top = series
            .iter()
            .flat_map(|s| s.data.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            * 1.15;
        let top = if top > 0.0 { top } else { 1.0 };
        let g = groups.len();
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(60)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(g as f64 - 0.5), 0f64..top)
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(g.max(1))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    groups
                        .get(i as usize)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("admission path")
            .y_desc(y_desc)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(e)?;
        let k = series.len().max(1) as f64;
        let bw = 0.8 / k;
        for (j, s) in series.iter().enumerate() {
            let col = rgb(s.colour);
            let rects: Vec<_> = s
                .data
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| {
                    let x0 = i as f64 - 0.4 + j as f64 * bw;
                    Rectangle::new([(x0 + 0.01, 0.0), (x0 + bw - 0.01, v)], col.filled())
                })
                .collect();
            chart
                .draw_series(rects)
                .map_err(e)?
                .label(s.name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], col.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(e)
    })
}

/// Step lines over time: each series is `(x, y)` points (x in seconds), drawn as a step line;
/// `marks` are labelled vertical lines at given x values.
pub fn steps(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series<'_, &[(f64, f64)]>],
    marks: &[(f64, &str)],
) -> Result<(), String> {
    let x_max = series
        .iter()
        .flat_map(|s| s.data.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.data.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.15;
    png(path, 1000, 600, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()
            .map_err(e)?;
        for &(x, label) in marks {
            chart
                .draw_series(LineSeries::new(
                    vec![(x, 0.0), (x, y_max)],
                    RGBColor(120, 120, 120).stroke_width(1),
                ))
                .map_err(e)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.to_string(),
                    (x, y_max * 0.97),
                    ("sans-serif", 15),
                )))
                .map_err(e)?;
        }
        for s in series {
            let mut pts = Vec::with_capacity(s.data.len() * 2);
            let mut prev: Option<f64> = None;
            for &(x, y) in s.data {
                if let Some(py) = prev {
                    pts.push((x, py));
                }
                pts.push((x, y));
                prev = Some(y);
            }
            let col = rgb(s.colour);
            chart
                .draw_series(LineSeries::new(pts, col.stroke_width(3)))
                .map_err(e)?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], col.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(e)
    })
}
