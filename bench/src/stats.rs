//! Ratios over interleaved rounds, with their spread, and the verdict against a target.
//!
//! In round `i` every setup is measured once, back to back (the order rotated each round), so the
//! ratio of setup `x` to the baseline in the *same* round cancels most of what the rest of the
//! machine did meanwhile. The reported ratio is the median of those per-round ratios; its interval
//! is the distribution-free confidence interval of a median from order statistics (the sign test):
//! the `k`-th smallest and `k`-th largest per-round ratio, with `k` the largest for which the
//! coverage `1 − 2·P(Binomial(n, ½) < k)` is still at least 95 %. It assumes nothing about the
//! shape of the noise, so one disturbed round cannot narrow or shift it much. With fewer than 6
//! rounds no such interval reaches 95 %, and every verdict is "inconclusive".

/// A ratio with its interval.
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    /// Median of the per-round ratios.
    pub point: f64,
    /// Lower end of the interval (NaN with too few rounds).
    pub lo: f64,
    /// Upper end (NaN with too few rounds).
    pub hi: f64,
    /// Rounds paired.
    pub n: usize,
}

/// The ratio of `x` to `base`, round by round (both in round order; unpaired tails ignored).
/// `None` when no round has both, or a baseline round is zero.
pub fn paired(x: &[f64], base: &[f64]) -> Option<Ratio> {
    let mut r: Vec<f64> = x
        .iter()
        .zip(base)
        .filter(|(a, b)| a.is_finite() && b.is_finite() && **b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    if r.is_empty() {
        return None;
    }
    r.sort_by(f64::total_cmp);
    let n = r.len();
    let point = crate::load::median(&r);
    // The actual coverage is at least 95 % (96.1 % with 9 rounds, 96.9 % with 6).
    let (lo, hi) = match order_k(n, 0.95) {
        Some((k, _)) => (r[k - 1], r[n - k]),
        None => (f64::NAN, f64::NAN),
    };
    Some(Ratio { point, lo, hi, n })
}

/// The 95 % interval of the median of `v` (order statistics), NaN with fewer than 6 values.
pub fn median_interval(v: &[f64]) -> (f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    match order_k(s.len(), 0.95) {
        Some((k, _)) => (s[k - 1], s[s.len() - k]),
        None => (f64::NAN, f64::NAN),
    }
}

/// The largest `k ≥ 1` whose order-statistic interval `[x(k), x(n+1−k)]` covers the median with
/// probability at least `level`, and that probability.
fn order_k(n: usize, level: f64) -> Option<(usize, f64)> {
    // P(B ≤ j) for B ~ Binomial(n, 1/2).
    let mut pmf = 0.5f64.powi(n as i32); // P(B = 0)
    let mut cdf = 0.0;
    let mut best = None;
    for k in 1..=n.div_ceil(2) {
        cdf += pmf; // now P(B ≤ k − 1)
        let cov = 1.0 - 2.0 * cdf;
        if cov >= level {
            best = Some((k, cov));
        } else {
            break;
        }
        let j = (k - 1) as f64;
        pmf *= (n as f64 - j) / (j + 1.0);
    }
    best
}

/// Where a ratio stands against a "at least `target`" (or "at most") goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The whole interval is on the good side.
    Met,
    /// The whole interval is on the bad side.
    NotMet,
    /// The interval spans the target, or there were too few rounds for one.
    Inconclusive,
}

impl Verdict {
    /// Markdown for the report.
    pub fn md(self) -> &'static str {
        match self {
            Verdict::Met => "**met**",
            Verdict::NotMet => "**not met**",
            Verdict::Inconclusive => "**inconclusive**",
        }
    }
}

/// Verdict of "ratio ≥ target".
pub fn at_least(r: &Ratio, target: f64) -> Verdict {
    if r.lo.is_nan() || r.hi.is_nan() {
        Verdict::Inconclusive
    } else if r.lo >= target {
        Verdict::Met
    } else if r.hi < target {
        Verdict::NotMet
    } else {
        Verdict::Inconclusive
    }
}

/// `0.99x [0.93–1.04]` (the interval left out when there is none).
pub fn cell(r: Option<Ratio>) -> String {
    match r {
        None => "–".into(),
        Some(r) if r.lo.is_nan() => format!("{:.2}x [n={}]", r.point, r.n),
        Some(r) => format!("{:.2}x [{:.2}–{:.2}]", r.point, r.lo, r.hi),
    }
}

/// `99.3 % (95 % interval 97.0–101.2 %, 9 rounds)`.
pub fn pct_text(r: &Ratio) -> String {
    if r.lo.is_nan() {
        format!(
            "{:.1} %; {} rounds are too few for a 95 % interval (6 needed)",
            r.point * 100.0,
            r.n
        )
    } else {
        format!(
            "{:.1} %, 95 % interval {:.1}–{:.1} % over {} rounds",
            r.point * 100.0,
            r.lo * 100.0,
            r.hi * 100.0,
            r.n
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics_intervals() {
        assert_eq!(order_k(5, 0.95), None);
        let (k, c) = order_k(6, 0.95).unwrap();
        assert_eq!(k, 1);
        assert!((c - (1.0 - 2.0 / 64.0)).abs() < 1e-12);
        let (k, c) = order_k(9, 0.95).unwrap();
        assert_eq!(k, 2);
        assert!((c - (1.0 - 2.0 * 10.0 / 512.0)).abs() < 1e-12);
        // n = 20: P(B ≤ 5) = 0.0207, P(B ≤ 6) = 0.0577 → k = 6.
        assert_eq!(order_k(20, 0.95).unwrap().0, 6);
    }

    #[test]
    fn verdicts() {
        let base = [100.0; 9];
        let x = [97.0, 99.0, 98.0, 100.0, 96.0, 99.5, 98.5, 97.5, 99.0];
        let r = paired(&x, &base).unwrap();
        assert!((r.point - 0.985).abs() < 1e-9);
        assert!((r.lo - 0.97).abs() < 1e-9 && (r.hi - 0.995).abs() < 1e-9);
        assert_eq!(at_least(&r, 0.95), Verdict::Met);
        assert_eq!(at_least(&r, 0.98), Verdict::Inconclusive);
        assert_eq!(at_least(&r, 1.0), Verdict::NotMet);
        // Too few rounds: never a verdict.
        let r = paired(&x[..3], &base[..3]).unwrap();
        assert_eq!(at_least(&r, 0.5), Verdict::Inconclusive);
        // Pairing: a slow round slows both and cancels.
        let r = paired(&[50.0, 100.0, 100.0], &[50.0, 100.0, 100.0]).unwrap();
        assert_eq!(r.point, 1.0);
    }
}
