//! `kvpress plot`: score against compression ratio, one line per press (the seed paper's
//! Figure 4), and the needle-in-a-haystack depth × length heat map, as PNG and SVG; with
//! `--bench`, the speed and memory curves of `cargo xtask bench`.
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
        let chart = LineChart {
            title: &title,
            x_desc: "compression ratio",
            y_desc: "score",
            series: &series,
            baseline: baseline.map(|b| ("no press", b)),
            y_range: Some((0.0, 100.0)),
            legend: SeriesLabelPosition::LowerLeft,
        };
        let [png, svg] = chart.write(&out_dir.join(stem))?;
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
                // a quantized cache is its own line: "knorm + int4"
                press: match text("kv_quant") {
                    q if q.is_empty() => text("press_name"),
                    q => format!("{} + {q}", text("press_name")),
                },
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

/// A chart of lines with markers, optionally with a dashed reference line.
pub struct LineChart<'a> {
    /// Caption.
    pub title: &'a str,
    /// X axis label.
    pub x_desc: &'a str,
    /// Y axis label.
    pub y_desc: &'a str,
    /// One named line each, points sorted by x.
    pub series: &'a [(String, Vec<(f64, f64)>)],
    /// A dashed horizontal line (label, y), also prepended at x = 0 to every line without a
    /// point there.
    pub baseline: Option<(&'a str, f64)>,
    /// Fixed y range (default: 0 to the largest value + 10%).
    pub y_range: Option<(f64, f64)>,
    /// Legend corner.
    pub legend: SeriesLabelPosition,
}

impl LineChart<'_> {
    /// Draws the chart to `<stem>.png` and `<stem>.svg` and returns both paths.
    pub fn write(&self, stem: &Path) -> anyhow::Result<[PathBuf; 2]> {
        register_font();
        let png = PathBuf::from(format!("{}.png", stem.display()));
        let svg = PathBuf::from(format!("{}.svg", stem.display()));
        self.draw(BitMapBackend::new(&png, (900, 600)).into_drawing_area())?;
        self.draw(SVGBackend::new(&svg, (900, 600)).into_drawing_area())?;
        Ok([png, svg])
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        root.fill(&WHITE).map_err(drawing)?;
        let xs = self
            .series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(x, _)| *x));
        let x_max = xs.clone().fold(f64::MIN, f64::max);
        let x_min = xs.fold(f64::MAX, f64::min).min(if self.baseline.is_some() {
            0.0
        } else {
            f64::MAX
        });
        let (x_min, x_max) = if x_min <= x_max {
            let pad = ((x_max - x_min) * 0.05).max(1e-9);
            (x_min - pad, x_max + pad)
        } else {
            (0.0, 1.0)
        };
        let (y_min, y_max) = self.y_range.unwrap_or_else(|| {
            let top = self
                .series
                .iter()
                .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
                .chain(self.baseline.map(|b| b.1))
                .fold(0.0f64, f64::max);
            (0.0, if top > 0.0 { top * 1.1 } else { 1.0 })
        });
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, (FONT, 22))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x_min..x_max, y_min..y_max)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_desc(self.x_desc)
            .y_desc(self.y_desc)
            .label_style((FONT, 15))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(drawing)?;
        if let Some((label, b)) = self.baseline {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x_min, b), (x_max, b)],
                    6,
                    4,
                    BLACK.stroke_width(2),
                ))
                .map_err(drawing)?
                .label(format!("{label} ({b:.1})"))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2))
                });
        }
        for (i, (name, points)) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let mut points = points.clone();
            if let Some((_, b)) = self.baseline
                && points.first().is_none_or(|p| p.0 != 0.0)
            {
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
            .position(self.legend.clone())
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
        Ok(())
    }
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

/// One configuration measured by `cargo xtask bench` (the fields the plots use).
#[derive(Debug, Clone, serde::Deserialize)]
struct BenchPoint {
    length: usize,
    press: Option<String>,
    compression_ratio: f64,
    decode_tok_per_s: f64,
    cache_bytes_after_prefill: usize,
    peak_rss_kib: u64,
    #[serde(default)]
    kv_quant: Option<String>,
}

impl BenchPoint {
    /// The cache format of a quantized run (`int4`); `None` in full precision.
    fn format(&self) -> Option<&str> {
        self.kv_quant
            .as_deref()
            .map(|q| q.split('_').next().unwrap_or(q))
    }

    /// The line of a press run: the press, with the cache format when quantized
    /// (`knorm + int4`); `None` without a press.
    fn series(&self) -> Option<String> {
        let press = self.press.as_deref()?;
        Some(match self.format() {
            None => press.to_string(),
            Some(f) => format!("{press} + {f}"),
        })
    }
}

/// The figures of a `cargo xtask bench` run (`bench.json`): peak memory against context length
/// (one figure per press and cache format, a line per ratio, the same format without a press as
/// `no press`), and decode tokens/s and cache MiB against compression ratio (one figure per
/// context length, a line per press and format, starting at x = 0 from the same format's run
/// without a press; the full-precision run without a press dashed).
pub fn plot_bench(bench_json: &Path, out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(bench_json)
        .with_context(|| format!("reading {}", bench_json.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", bench_json.display()))?;
    let points: Vec<BenchPoint> = serde_json::from_value(doc["results"].clone())
        .with_context(|| format!("{}: no bench results", bench_json.display()))?;
    if points.is_empty() {
        anyhow::bail!("{}: no bench results", bench_json.display());
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let model = doc["model"]
        .as_str()
        .and_then(|m| Path::new(m).file_name()?.to_str())
        .unwrap_or("model")
        .to_string();
    let mib = |b: f64| b / (1u64 << 20) as f64;
    let mut written = Vec::new();
    // runs without a press, by cache format: each format's reference
    let unpressed = |format: Option<&str>| -> Vec<&BenchPoint> {
        points
            .iter()
            .filter(|p| p.press.is_none() && p.format() == format)
            .collect()
    };
    let presses: std::collections::BTreeSet<String> =
        points.iter().filter_map(BenchPoint::series).collect();

    // peak memory against length: per press and format, a line per ratio
    for press in presses
        .iter()
        .map(String::as_str)
        .chain(presses.is_empty().then_some("none"))
    {
        let runs: Vec<&BenchPoint> = points
            .iter()
            .filter(|p| p.series().as_deref() == Some(press))
            .collect();
        let format = runs.first().and_then(|p| p.format());
        let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for p in unpressed(format) {
            lines
                .entry("no press".into())
                .or_default()
                .push((p.length as f64, p.peak_rss_kib as f64 / 1024.0));
        }
        for p in runs {
            lines
                .entry(format!("ratio {:.2}", p.compression_ratio))
                .or_default()
                .push((p.length as f64, p.peak_rss_kib as f64 / 1024.0));
        }
        let series = sorted_series(lines);
        let title = format!("peak memory — {model}, {press}");
        let chart = LineChart {
            title: &title,
            x_desc: "context length (tokens)",
            y_desc: "peak resident memory (MiB)",
            series: &series,
            baseline: None,
            y_range: None,
            legend: SeriesLabelPosition::UpperLeft,
        };
        let stem = format!("peak_memory__{}", results::press_dir_name(Some(press)));
        written.extend(chart.write(&out_dir.join(stem))?);
    }

    // decode speed and cache size against ratio: per length, a line per press and format
    let lengths: std::collections::BTreeSet<usize> = points.iter().map(|p| p.length).collect();
    for &length in &lengths {
        let reference =
            |format: Option<&str>| unpressed(format).into_iter().find(|p| p.length == length);
        for (what, y_desc, value) in [
            (
                "decode",
                "decode tokens/s",
                &(|p: &BenchPoint| p.decode_tok_per_s) as &dyn Fn(&BenchPoint) -> f64,
            ),
            (
                "cache",
                "KV cache after prefill (MiB)",
                &|p: &BenchPoint| mib(p.cache_bytes_after_prefill as f64),
            ),
        ] {
            let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
            for p in points.iter().filter(|p| p.length == length) {
                let Some(name) = p.series() else {
                    continue;
                };
                let line = lines.entry(name).or_default();
                if line.is_empty()
                    && let Some(start) = p.format().and_then(|f| reference(Some(f)))
                {
                    line.push((0.0, value(start)));
                }
                line.push((p.compression_ratio, value(p)));
            }
            let series = sorted_series(lines);
            let title = format!("{y_desc} at {length} tokens — {model}");
            let chart = LineChart {
                title: &title,
                x_desc: "compression ratio",
                y_desc,
                series: &series,
                baseline: reference(None).map(|p| ("no press", value(p))),
                y_range: None,
                legend: SeriesLabelPosition::LowerLeft,
            };
            written.extend(chart.write(&out_dir.join(format!("{what}__{length}")))?);
        }
    }
    Ok(written)
}

fn sorted_series(lines: BTreeMap<String, Vec<(f64, f64)>>) -> Vec<(String, Vec<(f64, f64)>)> {
    lines
        .into_iter()
        .map(|(name, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (name, points)
        })
        .collect()
}
