//! `--plot-global docs/BENCHMARKS.md`: plots the global-mode latency table of that file (the
//! section `## Global mode`, rows `| path | p50 / p99 | ... |` in µs, one column per run) as
//! grouped bars: p50 and p99 of each run, per path.

use std::path::Path;

use crate::plot;

/// File name of the plot, under `plots/` beside the markdown.
pub const PLOT: &str = "global_latency_per_path.png";

/// One row of the table: the path, and (p50, p99) per run.
pub type Row = (String, Vec<(f64, f64)>);

/// Parse the table.
pub fn parse(md: &str) -> Result<Vec<Row>, String> {
    let start = md
        .find("## Global mode")
        .ok_or("no `## Global mode` section")?;
    let mut rows = Vec::new();
    for line in md[start..].lines().skip(1) {
        if line.starts_with("## ") {
            break;
        }
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() < 2
            || !line.starts_with('|')
            || cells[0] == "path"
            || cells[0].starts_with("---")
        {
            continue;
        }
        let mut runs = Vec::new();
        for c in &cells[1..] {
            let Some((a, b)) = c.split_once('/') else {
                return Err(format!(
                    "cell {c:?} of row {:?}: expected `p50 / p99`",
                    cells[0]
                ));
            };
            let n = |x: &str| {
                x.trim()
                    .parse::<f64>()
                    .map_err(|e| format!("cell {c:?} of row {:?}: {e}", cells[0]))
            };
            runs.push((n(a)?, n(b)?));
        }
        rows.push((cells[0].to_string(), runs));
    }
    if rows.is_empty() {
        return Err("the `## Global mode` section has no `p50 / p99` table".into());
    }
    Ok(rows)
}

/// Read `md_path`, write `plots/global_latency_per_path.png` beside it.
pub fn run(md_path: &Path) -> Result<std::path::PathBuf, String> {
    let md = std::fs::read_to_string(md_path).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let rows = parse(&md)?;
    let runs = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
    let groups: Vec<String> = rows
        .iter()
        .map(|(p, _)| p.split(" (").next().unwrap_or(p).to_string())
        .collect();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let p50 = [[86, 180, 233], [0, 114, 178], [0, 70, 120]];
    let p99 = [[240, 190, 120], [230, 159, 0], [213, 94, 0]];
    let names: Vec<String> = (0..runs)
        .flat_map(|i| [format!("run {} p50", i + 1), format!("run {} p99", i + 1)])
        .collect();
    let mut series = Vec::new();
    for i in 0..runs {
        for (j, q) in [0usize, 1].into_iter().enumerate() {
            series.push(plot::Series {
                name: names[2 * i + j].as_str(),
                colour: if q == 0 { p50[i % 3] } else { p99[i % 3] },
                data: rows
                    .iter()
                    .map(|(_, r)| {
                        r.get(i)
                            .map_or(f64::NAN, |c| if q == 0 { c.0 } else { c.1 })
                    })
                    .collect(),
            });
        }
    }
    let dir = md_path.parent().unwrap_or(Path::new(".")).join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = dir.join(PLOT);
    plot::grouped(
        &out,
        "Global mode: WebSocket handshake latency per admission path (Envoy 1.40, 3 pods, Redis)",
        "handshake latency, µs (p50 and p99 of 200 handshakes)",
        &groups,
        &series,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_published_table() {
        let md = "## Global mode: x\n\n| path | run 1 | run 2 |\n|---|---:|---:|\n| local mode | 584 / 785 | 399 / 688 |\n| global (borrow) | 1049 / 2054 | 995 / 1663 |\n\nRedis...\n## Next\n| a | 1 / 2 |\n";
        let rows = super::parse(md).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].1, vec![(1049.0, 2054.0), (995.0, 1663.0)]);
        assert!(super::parse("## Global mode\n| path | run |\n| x | 12 |\n").is_err());
    }
}
