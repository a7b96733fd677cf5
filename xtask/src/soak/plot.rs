//! The soak's picture: four small panels (RSS, `/metrics` series, state-file size, scrape
//! time) over operations, as hand-written SVG polylines.

use std::fmt::Write as _;

/// One panel: a title, its unit, and (operations, value) points.
pub struct Panel<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    pub points: Vec<(f64, f64)>,
    /// A second line in the same panel (its name and points), dashed.
    pub extra: Option<(&'a str, Vec<(f64, f64)>)>,
}

const W: f64 = 420.0;
const H: f64 = 190.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 34.0;

/// A "nice" upper end for an axis that starts at 0: 1, 2 or 5 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|m| *m >= v)
        .unwrap_or(10.0 * p)
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else if v >= 1.0 {
        format!("{v}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Panels side by side, two per row, under `caption`.
pub fn svg(caption: &str, panels: &[Panel<'_>]) -> String {
    let cols = 2usize;
    let rows = panels.len().div_ceil(cols);
    let (tw, th) = (W * cols as f64, H * rows as f64 + 28.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{tw}" height="{th}" viewBox="0 0 {tw} {th}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{tw}" height="{th}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="13">{}</text>"#,
        tw / 2.0,
        esc(caption)
    );
    let xmax = nice_max(
        panels
            .iter()
            .flat_map(|p| p.points.iter().map(|(x, _)| *x))
            .fold(0.0, f64::max),
    );
    for (i, p) in panels.iter().enumerate() {
        let (ox, oy) = ((i % cols) as f64 * W, 28.0 + (i / cols) as f64 * H);
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let (x0, y0) = (ox + LEFT, oy + TOP);
        let all = p
            .points
            .iter()
            .chain(p.extra.iter().flat_map(|(_, v)| v.iter()));
        let ymax = nice_max(all.map(|(_, y)| *y).fold(0.0, f64::max) * 1.05);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{} ({})</text>"#,
            x0 + pw / 2.0,
            oy + 16.0,
            esc(p.title),
            esc(p.unit)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
        );
        for k in 0..=4 {
            let f = k as f64 / 4.0;
            let y = y0 + ph - f * ph;
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 + pw,
                x0 - 4.0,
                y + 4.0,
                label(ymax * f)
            );
            let x = x0 + f * pw;
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                y0 + ph + 14.0,
                label(xmax * f)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">operations</text>"##,
            x0 + pw / 2.0,
            y0 + ph + 28.0
        );
        let line = |s: &mut String, points: &[(f64, f64)], style: &str| {
            let pts: Vec<String> = points
                .iter()
                .map(|(x, y)| {
                    format!(
                        "{:.1},{:.1}",
                        x0 + x / xmax * pw,
                        y0 + ph - (y / ymax).min(1.0) * ph
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" {style} stroke-width="1.5" points="{}"/>"#,
                pts.join(" ")
            );
        };
        line(&mut s, &p.points, r##"stroke="#1f77b4""##);
        if let Some((name, points)) = &p.extra {
            line(
                &mut s,
                points,
                r##"stroke="#d62728" stroke-dasharray="4 3""##,
            );
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end" fill="#d62728">{} (dashed)</text>"##,
                x0 + pw - 4.0,
                y0 + ph - 6.0,
                esc(name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_panels_four_polylines_inside_their_frames() {
        let panels: Vec<Panel> = (0..4)
            .map(|i| Panel {
                title: "t",
                unit: "u",
                points: (0..=10).map(|k| (k as f64 * 1e5, (k * i) as f64)).collect(),
                extra: (i == 0).then(|| ("heap", vec![(0.0, 1.0), (1e6, 2.0)])),
            })
            .collect();
        let s = svg("soak <1M>", &panels);
        assert!(s.starts_with("<svg ") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<polyline").count(), 5);
        assert!(s.contains("soak &lt;1M&gt;"));
        // Every point within the picture.
        for line in s.lines().filter(|l| l.starts_with("<polyline")) {
            let pts = line
                .split("points=\"")
                .nth(1)
                .unwrap()
                .trim_end_matches("\"/>");
            for p in pts.split(' ') {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((0.0..=2.0 * W).contains(&x) && (0.0..=2.0 * H + 28.0).contains(&y));
            }
        }
    }

    #[test]
    fn axes_end_at_round_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(1_000_000.0), 1_000_000.0);
        assert_eq!(nice_max(1_000_001.0), 2_000_000.0);
        assert_eq!(label(2_000_000.0), "2M");
        assert_eq!(label(500.0), "500");
    }
}
