//! Turns the criterion micro-benchmark results (`target/criterion/<group>/
//! <function>/<value>/new/{benchmark,estimates}.json`) into a
//! [`BenchOutput`], so RESULTS.md carries the same figures criterion printed.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use crate::results::BenchOutput;

/// The benchmark groups of `benches/micro.rs`; other crates' criterion
/// results share the target dir and are left out.
pub const GROUPS: [&str; 3] = ["allocate", "reconcile", "agent"];

/// Where a benchmark sits: criterion's `benchmark.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BenchId {
    pub group_id: String,
    pub function_id: Option<String>,
    pub value_str: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct Interval {
    lower_bound: f64,
    upper_bound: f64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct Estimate {
    point_estimate: f64,
    confidence_interval: Interval,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct Estimates {
    mean: Estimate,
}

/// Mean time per iteration and its 95 % confidence interval, nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mean {
    pub ns: f64,
    pub lower_ns: f64,
    pub upper_ns: f64,
}

/// The mean of criterion's `estimates.json`.
pub fn parse_estimates(json: &str) -> anyhow::Result<Mean> {
    let e: Estimates =
        serde_json::from_str(json).map_err(|e| anyhow::anyhow!("criterion estimates.json: {e}"))?;
    anyhow::ensure!(
        e.mean.point_estimate.is_finite() && e.mean.point_estimate >= 0.0,
        "criterion estimates.json: mean {} is not a time",
        e.mean.point_estimate
    );
    Ok(Mean {
        ns: e.mean.point_estimate,
        lower_ns: e.mean.confidence_interval.lower_bound,
        upper_ns: e.mean.confidence_interval.upper_bound,
    })
}

/// The `new/` result directories under `dir`, depth first, sorted.
fn new_dirs(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for p in entries {
        if p.file_name().is_some_and(|n| n == "new") {
            if p.join("benchmark.json").is_file() && p.join("estimates.json").is_file() {
                found.push(p);
            }
        } else if p.file_name().is_some_and(|n| n != "base" && n != "report") {
            new_dirs(&p, found)?;
        }
    }
    Ok(())
}

/// The figure name of a benchmark: `group: function, value`.
pub fn figure(id: &BenchId) -> String {
    let mut s = id.group_id.clone();
    if let Some(f) = &id.function_id {
        s.push_str(&format!(": {f}"));
    }
    if let Some(v) = &id.value_str {
        s.push_str(&format!(", n={v}"));
    }
    s
}

/// Reads every result of `groups` under `criterion_dir`; results written
/// before `newer_than` (left over from an older run) are skipped.
pub fn collect(
    criterion_dir: &Path,
    groups: &[&str],
    newer_than: Option<SystemTime>,
) -> anyhow::Result<BenchOutput> {
    let mut out = BenchOutput::new(
        "micro",
        "6. Micro-benchmarks (criterion, pure cores)",
        "`cargo bench -p twill-bench --bench micro`: subnet allocation for a new node among n \
         existing /29 leases of a /16, and the reconcile core for n remote nodes (diff after one \
         join, diff against an empty kernel, remote_nodes + desired_state), and the agent's \
         op -> lease lookup (`op_node`) for every op of a full sync. One row per \
         benchmark: criterion's mean time per iteration; its 95 % confidence interval is in \
         the notes.",
    );
    let mut dirs = Vec::new();
    for g in groups {
        let d = criterion_dir.join(g);
        if d.is_dir() {
            new_dirs(&d, &mut dirs)?;
        }
    }
    let mut means: Vec<(BenchId, Mean)> = Vec::new();
    for d in dirs {
        let est = d.join("estimates.json");
        if let Some(t) = newer_than {
            let modified = std::fs::metadata(&est).and_then(|m| m.modified());
            if modified.map_or(true, |m| m < t) {
                continue;
            }
        }
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        };
        let id: BenchId = serde_json::from_str(&read(d.join("benchmark.json"))?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", d.join("benchmark.json").display()))?;
        let mean = parse_estimates(&read(est)?)?;
        means.push((id, mean));
    }
    anyhow::ensure!(
        !means.is_empty(),
        "no criterion results of {groups:?} under {} (newer than the run start)",
        criterion_dir.display()
    );
    // Directory order puts n=500 after n=2000: sort by the number.
    means.sort_by(|(a, _), (b, _)| {
        let n = |i: &BenchId| i.value_str.as_deref().and_then(|v| v.parse::<f64>().ok());
        (&a.group_id, &a.function_id)
            .cmp(&(&b.group_id, &b.function_id))
            .then(n(a).unwrap_or(0.0).total_cmp(&n(b).unwrap_or(0.0)))
    });
    for (id, m) in &means {
        let name = figure(id);
        let (unit, scale) = if m.ns >= 1e7 {
            ("ms", 1e6)
        } else {
            ("us", 1e3)
        };
        out.push(&name, unit, m.ns / scale);
        out.notes.push(format!(
            "{name}: 95 % CI of the mean {:.2} .. {:.2} {unit}",
            m.lower_ns / scale,
            m.upper_ns / scale
        ));
    }
    out.notes.extend(per_node_notes(&means));
    Ok(out)
}

/// For benchmarks measured at several sizes n: how the cost per node grows
/// from the smallest n to the largest.
fn per_node_notes(means: &[(BenchId, Mean)]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut seen: Vec<(String, Option<String>)> = Vec::new();
    for (id, _) in means {
        let key = (id.group_id.clone(), id.function_id.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key.clone());
        let mut sized: Vec<(f64, f64)> = means
            .iter()
            .filter(|(i, _)| i.group_id == key.0 && i.function_id == key.1)
            .filter_map(|(i, m)| {
                let n: f64 = i.value_str.as_deref()?.parse().ok()?;
                (n > 0.0).then_some((n, m.ns / n))
            })
            .collect();
        sized.sort_by(|a, b| a.0.total_cmp(&b.0));
        if let (Some(lo), Some(hi)) = (sized.first(), sized.last()) {
            if hi.0 > lo.0 {
                notes.push(format!(
                    "{}: {} per node at n={} is {:.2}x that at n={}",
                    key.0,
                    key.1.as_deref().unwrap_or(""),
                    hi.0,
                    hi.1 / lo.1,
                    lo.0
                ));
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    const EST: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":135414.0,"upper_bound":138817.8},"point_estimate":137004.2,"standard_error":868.7},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1}}"#;

    #[test]
    fn estimates_give_the_mean() {
        let m = parse_estimates(EST).unwrap();
        assert_eq!(
            (m.ns, m.lower_ns, m.upper_ns),
            (137004.2, 135414.0, 138817.8)
        );
        assert!(parse_estimates("{}").is_err());
        assert!(parse_estimates(r#"{"mean":{"point_estimate":-1.0,"confidence_interval":{"lower_bound":0,"upper_bound":0}}}"#).is_err());
    }

    fn write_bench(root: &Path, group: &str, func: &str, n: u32, ns: f64) {
        let d = root.join(group).join(func).join(n.to_string()).join("new");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("benchmark.json"),
            format!(r#"{{"group_id":"{group}","function_id":"{func}","value_str":"{n}","throughput":null}}"#),
        )
        .unwrap();
        std::fs::write(
            d.join("estimates.json"),
            EST.replace("137004.2", &ns.to_string()),
        )
        .unwrap();
    }

    #[test]
    fn collects_rows_of_the_wanted_groups_only() {
        let dir = tempfile::tempdir().unwrap();
        write_bench(dir.path(), "reconcile", "diff", 1000, 100_000.0);
        write_bench(dir.path(), "reconcile", "diff", 5000, 1_000_000.0);
        write_bench(dir.path(), "reconcile", "diff", 500, 50_000.0);
        write_bench(dir.path(), "other", "x", 1, 5.0);
        let out = collect(dir.path(), &GROUPS, None).unwrap();
        let rows: Vec<(&str, f64)> = out
            .rows
            .iter()
            .map(|r| (r.figure.as_str(), r.runs[0]))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("reconcile: diff, n=500", 50.0),
                ("reconcile: diff, n=1000", 100.0),
                ("reconcile: diff, n=5000", 1000.0)
            ]
        );
        // 200 ns per node at 5000 against 100 at 500.
        assert!(
            out.notes
                .iter()
                .any(|n| n.contains("is 2.00x that at n=500")),
            "{:?}",
            out.notes
        );
        // Everything is older than a time in the future: nothing is left.
        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert!(collect(dir.path(), &GROUPS, Some(later)).is_err());
    }
}
