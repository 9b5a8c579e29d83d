//! Reading the module's reports: admin `GET /wscap` JSON and Prometheus text.

use std::collections::BTreeMap;

use serde_json::Value;

/// One host as `GET /wscap` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    /// `ip:port`.
    pub address: String,
    /// Live WebSocket connections.
    pub active: i64,
    /// Limit in force.
    pub limit: i64,
    /// `active` or `draining`.
    pub state: String,
    /// Admissions so far.
    pub admitted: i64,
    /// Rejections so far (if the module reports them per host).
    pub rejected: i64,
}

/// The hosts of `cluster` in a `GET /wscap` document (empty if the cluster is absent).
pub fn hosts(doc: &Value, cluster: &str) -> Vec<HostView> {
    let Some(clusters) = doc.get("clusters").and_then(Value::as_array) else {
        return Vec::new();
    };
    let Some(c) = clusters
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(cluster))
    else {
        return Vec::new();
    };
    c.get("hosts")
        .and_then(Value::as_array)
        .map(|hs| {
            hs.iter()
                .map(|h| HostView {
                    address: h
                        .get("address")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    active: h.get("active").and_then(Value::as_i64).unwrap_or(-1),
                    limit: h.get("limit").and_then(Value::as_i64).unwrap_or(-1),
                    state: h
                        .get("state")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    admitted: h.get("admitted").and_then(Value::as_i64).unwrap_or(-1),
                    rejected: h.get("rejected").and_then(Value::as_i64).unwrap_or(-1),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Host `addr` of `cluster`, if reported.
pub fn host(doc: &Value, cluster: &str, addr: &str) -> Option<HostView> {
    hosts(doc, cluster).into_iter().find(|h| h.address == addr)
}

/// One Prometheus sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parse Prometheus text exposition (comments skipped; escapes in label values handled).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i..]),
            None => match line.split_once(' ') {
                Some((n, _)) => (n, &line[n.len()..]),
                None => continue,
            },
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut end = None;
            loop {
                // key
                while let Some(&(_, c)) = chars.peek() {
                    if c == ',' || c == ' ' {
                        chars.next();
                    } else {
                        break;
                    }
                }
                let Some(&(ks, c)) = chars.peek() else { break };
                if c == '}' {
                    end = Some(ks + 1);
                    break;
                }
                let mut ke = ks;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        ke = i;
                        break;
                    }
                }
                let key = r[ks..ke].trim().to_string();
                // value
                if chars.next().map(|(_, c)| c) != Some('"') {
                    break;
                }
                let mut val = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => val.push('\n'),
                            Some(o) => val.push(o),
                            None => {}
                        },
                        '"' => break,
                        o => val.push(o),
                    }
                }
                labels.insert(key, val);
            }
            let Some(e) = end else { continue };
            rest = &r[e..];
        }
        let Some(v) = rest.split_whitespace().next() else {
            continue;
        };
        let Ok(value) = v.parse::<f64>() else {
            continue;
        };
        out.push(Sample {
            name: name.trim().to_string(),
            labels,
            value,
        });
    }
    out
}

/// Value of metric `name` whose labels include all of `labels`, if exactly one sample matches.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = samples.iter().filter(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    });
    let first = found.next()?;
    if found.next().is_some() {
        return None;
    }
    Some(first.value)
}

/// Sum of metric `name` over samples whose labels include all of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let t =
            "# TYPE x gauge\nx{cluster=\"b\",host=\"127.0.0.1:80\"} 20\ny 3\nz{a=\"q\\\"x\"} 1.5\n";
        let s = parse_prometheus(t);
        assert_eq!(s.len(), 3);
        assert_eq!(
            value(&s, "x", &[("cluster", "b"), ("host", "127.0.0.1:80")]),
            Some(20.0)
        );
        assert_eq!(value(&s, "y", &[]), Some(3.0));
        assert_eq!(value(&s, "z", &[("a", "q\"x")]), Some(1.5));
        assert_eq!(value(&s, "x", &[("cluster", "c")]), None);
    }
}
