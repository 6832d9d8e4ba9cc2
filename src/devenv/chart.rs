//! SVG line charts for the docs: the dashboard's panels as a real Prometheus answered them, and
//! the scale bench's run over time. Plain SVG, no fonts or scripts to load.

use std::fmt::Write;

/// One line of a chart: its name and its points (x, y), x increasing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart: a title, what the x and y axes count, and its lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const COLORS: [&str; 8] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const LEGEND_ROWS: usize = 4;

/// Charts laid out in `columns`, each `width` by `height` pixels, under `title`.
pub fn grid(title: &str, charts: &[Chart], columns: usize, width: u32, height: u32) -> String {
    let columns = columns.max(1);
    let rows = charts.len().div_ceil(columns);
    let (total_width, total_height) = (width * columns as u32, height * rows as u32 + 40);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_width}\" height=\"{total_height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n\
         <text x=\"10\" y=\"26\" font-size=\"18\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    for (index, chart) in charts.iter().enumerate() {
        let (x, y) = ((index % columns) as u32 * width, (index / columns) as u32 * height + 40);
        let _ = writeln!(svg, "<g transform=\"translate({x},{y})\">{}</g>", plot(chart, width, height));
    }
    svg.push_str("</svg>\n");
    svg
}

/// One chart in a `width` by `height` box: frame, title, axes with their extremes, lines, legend.
fn plot(chart: &Chart, width: u32, height: u32) -> String {
    let (left, right, top) = (48.0, 10.0, 24.0);
    let legend = chart.series.len().min(LEGEND_ROWS) as f64 * 13.0;
    let bottom = 24.0 + legend;
    let (w, h) = (f64::from(width) - left - right, f64::from(height) - top - bottom);
    let points =
        || chart.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (x_min, x_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| (lo.min(*x), hi.max(*x)));
    let y_max = points().fold(0.0_f64, |hi, (_, y)| hi.max(*y));
    let y_min = points().fold(0.0_f64, |lo, (_, y)| lo.min(*y));
    let (x_span, y_span) = ((x_max - x_min).max(1e-9), (y_max - y_min).max(1e-9));
    let to_x = |x: f64| left + (x - x_min) / x_span * w;
    let to_y = |y: f64| top + h - (y - y_min) / y_span * h;
    let mut svg = format!(
        "<rect x=\"0.5\" y=\"0.5\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#dddddd\"/>\
         <text x=\"8\" y=\"16\" font-weight=\"bold\">{}</text>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#999999\"/>\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999999\"/>",
        width - 1,
        height - 1,
        escape(&chart.title),
        top + h,
        top + h,
        left + w,
        top + h
    );
    if x_min > x_max {
        let _ =
            write!(svg, "<text x=\"{}\" y=\"{}\" fill=\"#999999\">no data</text>", left + 8.0, top + h / 2.0);
        return svg;
    }
    let label = |svg: &mut String, x: f64, y: f64, anchor: &str, text: String| {
        let _ = write!(
            svg,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\" fill=\"#555555\">{}</text>",
            escape(&text)
        );
    };
    label(&mut svg, left - 4.0, top + 4.0, "end", number(y_max));
    label(&mut svg, left - 4.0, top + h, "end", number(y_min));
    label(&mut svg, left, top + h + 13.0, "start", format!("{} {}", number(x_min), chart.x_label));
    label(&mut svg, left + w, top + h + 13.0, "end", format!("{} {}", number(x_max), chart.x_label));
    label(&mut svg, left + w, top - 6.0, "end", chart.y_label.clone());
    for (index, series) in chart.series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let path: Vec<String> = series
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", to_x(*x), to_y(*y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
        if index < LEGEND_ROWS {
            let y = top + h + 26.0 + index as f64 * 13.0;
            let _ = write!(
                svg,
                "<rect x=\"{left}\" y=\"{:.1}\" width=\"10\" height=\"3\" fill=\"{color}\"/>",
                y - 4.0
            );
            label(&mut svg, left + 14.0, y, "start", series.name.clone());
        }
    }
    svg
}

/// A number as an axis shows it: at most three significant decimals, no trailing zeros.
fn number(value: f64) -> String {
    let text = if value.abs() >= 100.0 { format!("{value:.0}") } else { format!("{value:.3}") };
    let text =
        if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text };
    if text == "-0" { "0".to_owned() } else { text }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_draws_each_chart_with_its_lines_titles_and_extremes() {
        let ready =
            Series { name: "Ready".into(), points: vec![(0.0, 0.0), (30.0, 5_000.0), (60.0, 10_000.0)] };
        let empty = Chart { title: "Nothing <yet>".into(), ..Default::default() };
        let chart = Chart {
            title: "Enrollments".into(),
            x_label: "s".into(),
            y_label: "count".into(),
            series: vec![ready],
        };
        let svg = grid("Scale run", &[chart, empty], 2, 400, 200);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("Enrollments") && svg.contains("10000") && svg.contains("60 s"), "{svg}");
        assert!(svg.contains("Nothing &lt;yet&gt;") && svg.contains("no data"), "escaped, and says so");
        assert!(svg.contains("points=\"48.0,"), "the first point at the left axis: {svg}");
    }

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1234.6), "1235");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(-0.0001), "0");
    }
}
