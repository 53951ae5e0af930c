//! The latency chart, written as SVG by hand (no font or plotting library
//! needed offline): one panel per series group, each series drawn as its
//! cumulative distribution over a log-scale millisecond axis.

use std::fmt::Write;

use crate::results::Series;

const W: f64 = 860.0;
const PANEL_H: f64 = 270.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 40.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders all `series`, grouped by their `group` in first-seen order.
pub fn latency_chart(series: &[Series]) -> String {
    let mut groups: Vec<&str> = Vec::new();
    for s in series {
        if !groups.contains(&s.group.as_str()) {
            groups.push(&s.group);
        }
    }
    let h = PANEL_H * groups.len().max(1) as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (gi, g) in groups.iter().enumerate() {
        let members: Vec<&Series> = series
            .iter()
            .filter(|s| s.group == *g && !s.values_ms.is_empty())
            .collect();
        panel(&mut svg, gi as f64 * PANEL_H, g, &members);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, y0: f64, title: &str, series: &[&Series]) {
    let (px0, px1) = (LEFT, W - RIGHT);
    let (py0, py1) = (y0 + TOP, y0 + PANEL_H - BOTTOM);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{} (cumulative distribution)</text>"#,
        y0 + 22.0,
        esc(title)
    );
    let all = series.iter().flat_map(|s| s.values_ms.iter().copied());
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in all.filter(|v| *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || hi <= 0.0 {
        let _ = writeln!(svg, r#"<text x="{LEFT}" y="{}">no data</text>"#, py0 + 20.0);
        return;
    }
    let (dlo, dhi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let x = |v: f64| px0 + (v.max(lo).log10() - dlo) / (dhi - dlo) * (px1 - px0);
    let y = |q: f64| py1 - q * (py1 - py0);
    let _ = writeln!(
        svg,
        r##"<rect x="{px0}" y="{py0}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        px1 - px0,
        py1 - py0
    );
    let mut d = dlo;
    while d <= dhi + 1e-9 {
        let v = 10f64.powf(d);
        let xv = x(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{xv:.1}" y1="{py0}" x2="{xv:.1}" y2="{py1}" stroke="#ddd"/><text x="{xv:.1}" y="{}" text-anchor="middle">{}</text>"##,
            py1 + 14.0,
            crate::results::fmt_num(v)
        );
        d += 1.0;
    }
    for q in [0.0, 0.5, 0.9, 1.0] {
        let yq = y(q);
        let _ = writeln!(
            svg,
            r##"<line x1="{px0}" y1="{yq:.1}" x2="{px1}" y2="{yq:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            px0 - 4.0,
            yq + 4.0,
            if q == 0.0 {
                "0".to_owned()
            } else {
                format!("p{}", (q * 100.0) as u32)
            }
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">milliseconds (log scale)</text>"#,
        (px0 + px1) / 2.0,
        py1 + 30.0
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut v = s.values_ms.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mut pts = String::new();
        let mut prev_y = y(0.0);
        for (k, val) in v.iter().enumerate() {
            let xv = x(*val);
            let yv = y((k + 1) as f64 / n);
            let _ = write!(pts, "{xv:.1},{prev_y:.1} {xv:.1},{yv:.1} ");
            prev_y = yv;
        }
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.6"/>"#,
            pts.trim_end()
        );
        let ly = py0 + 12.0 + i as f64 * 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{} (n={})</text>"#,
            px1 + 10.0,
            px1 + 30.0,
            px1 + 36.0,
            ly + 4.0,
            esc(&s.label),
            s.values_ms.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_polyline_per_series_and_escaped_labels() {
        let s = vec![
            Series {
                group: "CNI ADD".into(),
                label: "a<b".into(),
                values_ms: vec![1.0, 2.0, 30.0],
            },
            Series {
                group: "CNI ADD".into(),
                label: "c".into(),
                values_ms: vec![5.0],
            },
            Series {
                group: "Other".into(),
                label: "d".into(),
                values_ms: vec![],
            },
        ];
        let svg = latency_chart(&s);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("no data"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
