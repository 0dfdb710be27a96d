//! `kvpress plot`: score against compression ratio, one line per press (the seed paper's
//! Figure 4), and the needle-in-a-haystack depth × length heat map, as PNG and SVG.
//!
//! Reads every results directory under `--results` (kvpress-rs's, or kvpress's own: the flat
//! scalars of its `config.yaml` are enough).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use super::metrics;
use super::results;

/// Font family every figure uses (DejaVu Sans, embedded in the binary: no system fonts needed).
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // the font bytes are valid by construction; a failure leaves text undrawn, not a crash
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Line colours (matplotlib's "tab10", as kvpress's figures).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One finished results directory.
#[derive(Debug, Clone)]
struct Finished {
    dir: PathBuf,
    dataset: String,
    data_dir: String,
    model: String,
    press: String,
    ratio: f64,
    score: Option<f64>,
    max_context_length: Option<u64>,
}

/// Draws every figure the results under `results_dir` allow into `out_dir` (default:
/// `<results_dir>/plots`) and returns the files written.
pub fn plot(results_dir: &Path, out_dir: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    register_font();
    let found = scan(results_dir)?;
    if found.is_empty() {
        anyhow::bail!(
            "no finished results (config.yaml + metrics.json) under {}",
            results_dir.display()
        );
    }
    let out_dir = out_dir.map_or_else(|| results_dir.join("plots"), Path::to_path_buf);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut written = Vec::new();

    // score vs ratio: one figure per (dataset, data_dir, context limit, model)
    let mut figures: BTreeMap<(String, String, String), Vec<&Finished>> = BTreeMap::new();
    for r in found.iter().filter(|r| r.score.is_some()) {
        let data_dir = match r.max_context_length {
            Some(m) if r.data_dir.is_empty() => format!("max_context{m}"),
            Some(m) => format!("{} max_context{m}", r.data_dir),
            None => r.data_dir.clone(),
        };
        figures
            .entry((r.dataset.clone(), data_dir, r.model.clone()))
            .or_default()
            .push(r);
    }
    for ((dataset, data_dir, model), runs) in &figures {
        let mut lines: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        let mut baseline = None;
        for r in runs {
            let Some(score) = r.score else { continue };
            if r.press == "no_press" || r.ratio == 0.0 && r.press.is_empty() {
                baseline = Some(score);
            } else {
                lines.entry(&r.press).or_default().push((r.ratio, score));
            }
        }
        for points in lines.values_mut() {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let title = if data_dir.is_empty() {
            format!("{dataset} — {model}")
        } else {
            format!("{dataset} {data_dir} — {model}")
        };
        let stem = [dataset.as_str(), data_dir, model]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.replace('/', "--").replace(' ', "__"))
            .collect::<Vec<_>>()
            .join("__");
        let series: Vec<(String, Vec<(f64, f64)>)> =
            lines.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let png = out_dir.join(format!("{stem}.png"));
        let svg = out_dir.join(format!("{stem}.svg"));
        draw_scores(
            BitMapBackend::new(&png, (900, 600)).into_drawing_area(),
            &title,
            &series,
            baseline,
        )?;
        draw_scores(
            SVGBackend::new(&svg, (900, 600)).into_drawing_area(),
            &title,
            &series,
            baseline,
        )?;
        written.extend([png, svg]);
    }

    // needle in a haystack: one heat map per (model, press, ratio) over lengths × depths
    let mut needles: BTreeMap<(String, String, String), Vec<&Finished>> = BTreeMap::new();
    for r in found.iter().filter(|r| r.dataset == "needle_in_haystack") {
        needles
            .entry((r.model.clone(), r.press.clone(), format!("{:.2}", r.ratio)))
            .or_default()
            .push(r);
    }
    for ((model, press, ratio), runs) in &needles {
        let mut cells: BTreeMap<(u64, u32), (f64, usize)> = BTreeMap::new();
        for r in runs {
            let length = r.max_context_length.unwrap_or(0);
            for p in results::read_predictions(&r.dir)? {
                let depth = p
                    .sample
                    .extra
                    .get("needle_depth")
                    .and_then(json_number)
                    .unwrap_or(0.0)
                    .round() as u32;
                let score = metrics::needle::row_score(&p);
                let cell = cells.entry((length, depth)).or_insert((0.0, 0));
                cell.0 += score;
                cell.1 += 1;
            }
        }
        let grid: BTreeMap<(u64, u32), f64> = cells
            .into_iter()
            .map(|(k, (sum, n))| (k, sum / n.max(1) as f64))
            .collect();
        let stem = format!(
            "needle_in_haystack__{}__{}__{ratio}",
            model.replace('/', "--"),
            press
        );
        let title = format!("needle in a haystack — {model}, {press} @ {ratio}");
        let png = out_dir.join(format!("{stem}.png"));
        let svg = out_dir.join(format!("{stem}.svg"));
        draw_heat_map(
            BitMapBackend::new(&png, (900, 600)).into_drawing_area(),
            &title,
            &grid,
        )?;
        draw_heat_map(
            SVGBackend::new(&svg, (900, 600)).into_drawing_area(),
            &title,
            &grid,
        )?;
        written.extend([png, svg]);
    }
    Ok(written)
}

fn json_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The finished results directories under `root` (searched two levels deep: kvpress puts
/// repeated runs in numbered sub-directories).
fn scan(root: &Path) -> anyhow::Result<Vec<Finished>> {
    let mut found = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let config = dir.join("config.yaml");
        let metrics_file = dir.join("metrics.json");
        if config.exists() && metrics_file.exists() {
            let c = results::read_config(&config)?;
            let m: Value = serde_json::from_str(
                &std::fs::read_to_string(&metrics_file)
                    .with_context(|| format!("reading {}", metrics_file.display()))?,
            )
            .with_context(|| format!("parsing {}", metrics_file.display()))?;
            let text = |k: &str| match c.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            let dataset = text("dataset");
            let ratio = ["compression_ratio", "head_compression_ratio", "threshold"]
                .iter()
                .find_map(|k| c.get(*k).and_then(json_number))
                .unwrap_or(0.0);
            found.push(Finished {
                dir: dir.clone(),
                score: metrics::headline_score(&dataset, &m),
                dataset,
                data_dir: text("data_dir"),
                model: text("model"),
                press: text("press_name"),
                ratio,
                max_context_length: c.get("max_context_length").and_then(Value::as_u64),
            });
        }
        if depth < 2 && dir.is_dir() {
            let entries =
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    dirs.push((entry.path(), depth + 1));
                }
            }
        }
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

fn drawing<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e:?}")
}

/// Score (0–100) against compression ratio, a line with markers per press, the uncompressed
/// score as a dashed line.
fn draw_scores<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
    baseline: Option<f64>,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(drawing)?;
    let max_ratio = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(0.5f64, f64::max);
    let x_max = ((max_ratio + 0.05) * 10.0).ceil() / 10.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0f64..100f64)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("compression ratio")
        .y_desc("score")
        .label_style((FONT, 15))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(drawing)?;
    if let Some(b) = baseline {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, b), (x_max, b)],
                6,
                4,
                BLACK.stroke_width(2),
            ))
            .map_err(drawing)?
            .label(format!("no press ({b:.1})"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut points = points.clone();
        if let Some(b) = baseline {
            points.insert(0, (0.0, b));
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
            .map_err(drawing)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(drawing)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)?;
    root.present().map_err(drawing)?;
    Ok(())
}

/// Needle score (0–1) per (context length, depth) cell, red (0) to green (1), the value
/// written in each cell.
fn draw_heat_map<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    grid: &BTreeMap<(u64, u32), f64>,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(drawing)?;
    let mut lengths: Vec<u64> = grid.keys().map(|k| k.0).collect();
    lengths.dedup();
    let mut depths: Vec<u32> = grid.keys().map(|k| k.1).collect();
    depths.sort_unstable();
    depths.dedup();
    let nx = lengths.len().max(1);
    let ny = depths.len().max(1);
    let lengths_ = lengths.clone();
    let depths_ = depths.clone();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..nx as f64, 0f64..ny as f64)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("context length (tokens)")
        .y_desc("needle depth (%)")
        .x_labels(nx * 2 + 1)
        .y_labels(ny * 2 + 1)
        .x_label_formatter(&move |x| label_at(*x, &lengths_))
        .y_label_formatter(&move |y| label_at(*y, &depths_))
        .label_style((FONT, 15))
        .draw()
        .map_err(drawing)?;
    for (&(length, depth), &score) in grid {
        let x = lengths.iter().position(|l| *l == length).unwrap_or(0) as f64;
        let y = depths.iter().position(|d| *d == depth).unwrap_or(0) as f64;
        let s = score.clamp(0.0, 1.0);
        let color = RGBColor(
            (230.0 * (1.0 - s) + 30.0 * s) as u8,
            (60.0 * (1.0 - s) + 170.0 * s) as u8,
            (60.0 * (1.0 - s) + 80.0 * s) as u8,
        );
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x, y), (x + 1.0, y + 1.0)],
                color.filled(),
            )))
            .map_err(drawing)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{score:.2}"),
                (x + 0.42, y + 0.55),
                (FONT, 15).into_font().color(&WHITE),
            )))
            .map_err(drawing)?;
    }
    root.present().map_err(drawing)?;
    Ok(())
}

/// The category label at the middle of a unit cell (`0.5` → `values[0]`), empty elsewhere.
fn label_at<T: ToString>(x: f64, values: &[T]) -> String {
    let cell = x.floor();
    if (x - cell - 0.5).abs() < 1e-6 && cell >= 0.0 {
        values
            .get(cell as usize)
            .map(ToString::to_string)
            .unwrap_or_default()
    } else {
        String::new()
    }
}
