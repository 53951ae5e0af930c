//! What a benchmark run produces: figures measured once per repetition (with
//! an optional target), raw latency samples for the chart, and notes. Saved
//! as JSON so `report` can combine the outputs of separate runs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stats::{summarize, Summary};

/// Direction of a target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Cmp {
    /// The figure must be at least the value.
    AtLeast,
    /// The figure must be below the value.
    Below,
}

/// A goal for one figure, judged on the median over the runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub cmp: Cmp,
    pub value: f64,
}

impl Target {
    pub fn at_least(value: f64) -> Self {
        Target {
            cmp: Cmp::AtLeast,
            value,
        }
    }
    pub fn below(value: f64) -> Self {
        Target {
            cmp: Cmp::Below,
            value,
        }
    }
    /// Whether `figure` meets the target.
    pub fn met(&self, figure: f64) -> bool {
        match self.cmp {
            Cmp::AtLeast => figure >= self.value,
            Cmp::Below => figure < self.value,
        }
    }
    /// `>= 5` / `< 100`.
    pub fn describe(&self, unit: &str) -> String {
        let op = match self.cmp {
            Cmp::AtLeast => ">=",
            Cmp::Below => "<",
        };
        format!("{op} {} {unit}", fmt_num(self.value))
    }
}

/// One figure, one value per repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub figure: String,
    pub unit: String,
    pub runs: Vec<f64>,
    pub target: Option<Target>,
    /// Set when the thing measured does not exist (e.g. host-gw backend):
    /// the row is reported as "not implemented", never with a number.
    #[serde(default)]
    pub not_implemented: bool,
}

impl Row {
    pub fn new(figure: impl Into<String>, unit: impl Into<String>) -> Self {
        Row {
            figure: figure.into(),
            unit: unit.into(),
            runs: Vec::new(),
            target: None,
            not_implemented: false,
        }
    }
    pub fn target(mut self, t: Target) -> Self {
        self.target = Some(t);
        self
    }
    pub fn summary(&self) -> Option<Summary> {
        summarize(&self.runs)
    }
    /// `Some(met)` when there is a target and at least one run.
    pub fn verdict(&self) -> Option<bool> {
        let t = self.target?;
        self.summary().map(|s| t.met(s.median))
    }
}

/// Raw samples (milliseconds) of one latency distribution, for the chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Chart panel this series belongs to.
    pub group: String,
    pub label: String,
    pub values_ms: Vec<f64>,
}

/// Everything one benchmark produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchOutput {
    /// Short name (`cni`, `converge`, ...), also the file name.
    pub name: String,
    pub title: String,
    /// How it was measured, in one or two sentences.
    pub method: String,
    pub rows: Vec<Row>,
    pub series: Vec<Series>,
    pub notes: Vec<String>,
}

impl BenchOutput {
    pub fn new(name: &str, title: &str, method: &str) -> Self {
        BenchOutput {
            name: name.to_owned(),
            title: title.to_owned(),
            method: method.to_owned(),
            rows: Vec::new(),
            series: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The row named `figure`, created (with `unit`) if missing.
    pub fn row(&mut self, figure: &str, unit: &str) -> &mut Row {
        let idx = match self.rows.iter().position(|r| r.figure == figure) {
            Some(i) => i,
            None => {
                self.rows.push(Row::new(figure, unit));
                self.rows.len() - 1
            }
        };
        &mut self.rows[idx]
    }

    /// Adds one run's value to `figure`.
    pub fn push(&mut self, figure: &str, unit: &str, value: f64) {
        self.row(figure, unit).runs.push(value);
    }

    /// Sets the target of `figure`.
    pub fn set_target(&mut self, figure: &str, unit: &str, t: Target) {
        self.row(figure, unit).target = Some(t);
    }

    /// Appends samples to the series `label` of `group`.
    pub fn samples(&mut self, group: &str, label: &str, values: &[f64]) {
        if let Some(s) = self
            .series
            .iter_mut()
            .find(|s| s.group == group && s.label == label)
        {
            s.values_ms.extend_from_slice(values);
        } else {
            self.series.push(Series {
                group: group.to_owned(),
                label: label.to_owned(),
                values_ms: values.to_vec(),
            });
        }
    }

    /// Writes `<dir>/<name>.json`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", self.name));
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }

    /// Reads `<dir>/<name>.json`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("cannot parse {}: {e}", path.display()))
    }

    /// The plain-text table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = format!("== {}\n", self.title);
        for r in &self.rows {
            s.push_str(&format!("  {:<58} {}\n", r.figure, cell(r)));
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s
    }
}

/// `min / median / max unit  (target ..: met)` for one row.
pub fn cell(r: &Row) -> String {
    if r.not_implemented {
        return "not implemented".to_owned();
    }
    let Some(s) = r.summary() else {
        return "no data".to_owned();
    };
    let mut out = format!(
        "{} / {} / {} {}",
        fmt_num(s.min),
        fmt_num(s.median),
        fmt_num(s.max),
        r.unit
    );
    if let Some(t) = r.target {
        let met = if t.met(s.median) { "met" } else { "NOT met" };
        out.push_str(&format!("  (target {}: {met})", t.describe(&r.unit)));
    }
    out
}

/// A number with a precision suited to its size.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_is_judged_on_the_median() {
        let mut o = BenchOutput::new("t", "t", "m");
        for v in [1.0, 10.0, 12.0] {
            o.push("ratio", "x", v);
        }
        o.set_target("ratio", "x", Target::at_least(5.0));
        assert_eq!(o.rows[0].verdict(), Some(true));
        o.set_target("ratio", "x", Target::below(5.0));
        assert_eq!(o.rows[0].verdict(), Some(false));
        assert!(cell(&o.rows[0]).contains("NOT met"));
    }

    #[test]
    fn not_implemented_rows_have_no_number() {
        let mut r = Row::new("host-gw", "Gbit/s");
        r.not_implemented = true;
        r.runs.push(1.0);
        assert_eq!(cell(&r), "not implemented");
    }

    #[test]
    fn roundtrips_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = BenchOutput::new("x", "X", "m");
        o.push("a", "ms", 1.5);
        o.samples("g", "l", &[1.0, 2.0]);
        o.save(dir.path()).unwrap();
        let back = BenchOutput::load(&dir.path().join("x.json")).unwrap();
        assert_eq!(back, o);
    }
}
