//! PNG plots drawn without any font or system library: a pixel buffer, lines, and a minimal PNG
//! encoder (zlib from `miniz_oxide`, CRC-32 here). Labels live in the markdown beside the image.

use std::path::Path;

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

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A line `thick` pixels wide.
    pub fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: [u8; 3], thick: i64) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let x = (x0 + (x1 - x0) * t).round() as i64;
            let y = (y0 + (y1 - y0) * t).round() as i64;
            for dx in 0..thick {
                for dy in 0..thick {
                    self.set(x + dx - thick / 2, y + dy - thick / 2, c);
                }
            }
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

/// Plot the cumulative distribution of each series of latencies (µs) on a log-x axis: x from
/// 10^lo to 10^hi µs, y from 0 to 1. Grid: a dark vertical line at each decade, light ones at 2×
/// and 5×; light horizontal lines every 0.1, darker at 0.5 and 0.99.
pub fn cdf(path: &Path, series: &[(&[u32], [u8; 3])]) -> std::io::Result<LogRange> {
    let (w, h) = (960usize, 540usize);
    let (ml, mr, mt, mb) = (40.0, 20.0, 20.0, 40.0);
    let (pw, ph) = (w as f64 - ml - mr, h as f64 - mt - mb);
    let min = series
        .iter()
        .filter_map(|(s, _)| s.iter().copied().min())
        .min()
        .unwrap_or(1)
        .max(1);
    let max = series
        .iter()
        .filter_map(|(s, _)| {
            let mut v = s.to_vec();
            v.sort_unstable();
            v.get(((v.len() as f64) * 0.999) as usize)
                .or(v.last())
                .copied()
        })
        .max()
        .unwrap_or(10)
        .max(2);
    let lo = (f64::from(min)).log10().floor() as i32;
    let hi = ((f64::from(max)).log10().ceil() as i32).max(lo + 1);
    let xof = |us: f64| ml + (us.max(1.0).log10() - f64::from(lo)) / f64::from(hi - lo) * pw;
    let yof = |q: f64| mt + (1.0 - q) * ph;
    let mut c = Canvas::new(w, h);
    for d in lo..=hi {
        let base = 10f64.powi(d);
        c.line(xof(base), mt, xof(base), mt + ph, [120, 120, 120], 1);
        if d < hi {
            for m in [2.0, 5.0] {
                let x = xof(base * m);
                c.line(x, mt, x, mt + ph, [215, 215, 215], 1);
            }
        }
    }
    for i in 0..=10 {
        let q = f64::from(i) / 10.0;
        c.line(ml, yof(q), ml + pw, yof(q), [225, 225, 225], 1);
    }
    for q in [0.5, 0.99] {
        c.line(ml, yof(q), ml + pw, yof(q), [150, 150, 150], 1);
    }
    c.line(ml, mt + ph, ml + pw, mt + ph, [0, 0, 0], 2);
    c.line(ml, mt, ml, mt + ph, [0, 0, 0], 2);
    for (s, col) in series {
        let mut v = s.to_vec();
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        let n = v.len() as f64;
        let mut prev: Option<(f64, f64)> = None;
        for (i, &us) in v.iter().enumerate() {
            let p = (xof(f64::from(us)).min(ml + pw), yof((i + 1) as f64 / n));
            if let Some((px, py)) = prev {
                // A step: across at the old height, then up.
                c.line(px, py, p.0, py, *col, 3);
                c.line(p.0, py, p.0, p.1, *col, 3);
            }
            prev = Some(p);
        }
    }
    c.save(path)?;
    Ok(LogRange { lo, hi })
}
