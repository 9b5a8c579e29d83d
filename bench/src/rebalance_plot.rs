//! `--plot-rebalance CSV PNG`: plots the per-pod live counts over time that the e2e test
//! `tests/tests/rebalance.rs` writes with `WSCAP_PLOT_DIR` (`rebalance.csv`: a `# ...` note
//! line, `#mark,x,label` lines, a header `t_seconds,pod_a,...`, then one row per sample).

use std::path::Path;

use crate::plot;

/// The CSV: the note line, the series (names and `(t, count)` points), the marks (`#mark,x,label`).
pub type Parsed = (String, Vec<(String, Vec<(f64, f64)>)>, Vec<(f64, String)>);

/// Parse the CSV.
pub fn parse(csv: &str) -> Result<Parsed, String> {
    let mut note = String::new();
    let mut marks: Vec<(f64, String)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut series: Vec<Vec<(f64, f64)>> = Vec::new();
    for (i, line) in csv.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(m) = line.strip_prefix("#mark,") {
            let (x, label) = m
                .split_once(',')
                .ok_or(format!("line {}: #mark,x,label", i + 1))?;
            let x = x
                .parse::<f64>()
                .map_err(|e| format!("line {}: {x:?}: {e}", i + 1))?;
            marks.push((x, format!(" {label}")));
            continue;
        }
        if let Some(n) = line.strip_prefix('#') {
            note = n.trim().to_string();
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if names.is_empty() {
            if cells.len() < 2 || cells[0] != "t_seconds" {
                return Err(format!("line {}: expected the header t_seconds,...", i + 1));
            }
            names = cells[1..].iter().map(|s| s.replace('_', "-")).collect();
            series = vec![Vec::new(); names.len()];
            continue;
        }
        if cells.len() != names.len() + 1 {
            return Err(format!(
                "line {}: {} cells, want {}",
                i + 1,
                cells.len(),
                names.len() + 1
            ));
        }
        let num = |c: &str| {
            c.parse::<f64>()
                .map_err(|e| format!("line {}: {c:?}: {e}", i + 1))
        };
        let t = num(cells[0])?;
        for (j, c) in cells[1..].iter().enumerate() {
            series[j].push((t, num(c)?));
        }
    }
    if names.is_empty() || series.iter().all(Vec::is_empty) {
        return Err("no samples".into());
    }
    Ok((note, names.into_iter().zip(series).collect(), marks))
}

/// Read `csv_path`, write the plot to `png_path`.
pub fn run(csv_path: &Path, png_path: &Path) -> Result<(), String> {
    let csv =
        std::fs::read_to_string(csv_path).map_err(|e| format!("{}: {e}", csv_path.display()))?;
    let (note, series, marks) = parse(&csv)?;
    let marks: Vec<(f64, &str)> = marks.iter().map(|(x, l)| (*x, l.as_str())).collect();
    let colours = [[0, 114, 178], [230, 159, 0], [0, 158, 115], [204, 121, 167]];
    let s: Vec<plot::Series<'_, &[(f64, f64)]>> = series
        .iter()
        .enumerate()
        .map(|(i, (name, pts))| plot::Series {
            name: name.as_str(),
            colour: colours[i % colours.len()],
            data: pts.as_slice(),
        })
        .collect();
    let title = format!("Rebalance after a scale-out ({note})");
    plot::steps(
        png_path,
        &title,
        "time since sampling began, s",
        "live WebSockets on the pod (pod's own count)",
        &s,
        &marks,
    )
}
