//! SVG charts of one flavor's workload samples, drawn with plotters into a string: each
//! vCPU's share of a core per window against the `V` line, and each vCPU's throughput alone
//! and beside the neighbours.

use hvagent_probe::report::Sample;
use plotters::prelude::*;

use plotters::coord::types::RangedCoordf64;

use super::judge::{V_SHARE, per_vcpu_median, relative_throughput, vcpus_sampled};

const SIZE: (u32, u32) = (760, 380);
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn failed(e: impl std::fmt::Display) -> String {
    format!("cannot draw the chart: {e}")
}

type Plot<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A white canvas with `title` and axes over `x` × `y`; `draw` configures the mesh and adds
/// the series, then the legend goes to `legend`.
fn svg(
    title: &str,
    y_label_area: u32,
    (x, y): (std::ops::Range<f64>, std::ops::Range<f64>),
    legend: SeriesLabelPosition,
    draw: impl FnOnce(&mut Plot) -> Result<(), String>,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(y_label_area)
            .build_cartesian_2d(x, y)
            .map_err(failed)?;
        draw(&mut chart)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(legend)
            .draw()
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// Each vCPU's share of a core per window, alone then beside the neighbours, against the
/// 20 % line `V` promises: as steal leaves it (1 − steal, solid) and as throughput shows it
/// (the window's throughput over the median alone, dashed; where there is no steal clock, as
/// under TCG, only this one moves).
pub fn share_over_time(title: &str, alone: &[Sample], with: &[Sample]) -> Result<String, String> {
    let samples: Vec<&Sample> = alone.iter().chain(with).collect();
    let vcpus = samples
        .iter()
        .map(|s| s.steal_ratio.len())
        .max()
        .unwrap_or(0);
    let end = (samples.iter().map(|s| s.t_ms).max().unwrap_or(0) as f64 / 1000.0).max(1.0);
    let top = relative_throughput(alone, &[alone, with].concat())
        .iter()
        .flatten()
        .flatten()
        .copied()
        .fold(1.0, f64::max)
        .min(2.0)
        * 1.05;
    let ranges = (0.0..end, 0.0..top);
    svg(
        title,
        48,
        ranges,
        SeriesLabelPosition::MiddleRight,
        |chart| {
            chart
                .configure_mesh()
                .x_desc("seconds since the workload started")
                .y_desc("share of a core")
                .draw()
                .map_err(failed)?;
            chart
                .draw_series(LineSeries::new(
                    [(0.0, V_SHARE), (end, V_SHARE)],
                    RED.stroke_width(2),
                ))
                .map_err(failed)?
                .label("20 % (V promise)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED.stroke_width(2)));
            if let Some(first) = with.first() {
                let x = first.t_ms as f64 / 1000.0;
                chart
                    .draw_series(LineSeries::new([(x, 0.0), (x, top)], BLACK.mix(0.4)))
                    .map_err(failed)?
                    .label("neighbours busy from here")
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.mix(0.4)));
            }
            // Alone and beside the neighbours as separate lines: no samples were taken
            // while the neighbours booted, and a line across that gap would invent some.
            let segments = [
                (alone, relative_throughput(alone, alone)),
                (with, relative_throughput(alone, with)),
            ];
            for v in 0..vcpus {
                let c = colour(v);
                for (k, (seg, rel)) in segments.iter().enumerate() {
                    let t = |s: &Sample| s.t_ms as f64 / 1000.0;
                    let steal: Vec<(f64, f64)> = seg
                        .iter()
                        .filter_map(|s| Some((t(s), 1.0 - s.steal_ratio.get(v)?)))
                        .collect();
                    let throughput: Vec<(f64, f64)> = seg
                        .iter()
                        .zip(rel)
                        .filter_map(|(s, r)| Some((t(s), (*r.get(v)?)?)))
                        .collect();
                    let solid = chart
                        .draw_series(LineSeries::new(steal, c.stroke_width(2)))
                        .map_err(failed)?;
                    if k == 0 {
                        solid
                            .label(format!("vCPU {v}: 1 − steal"))
                            .legend(move |(x, y)| {
                                PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2))
                            });
                    }
                    let dashed = chart
                        .draw_series(DashedLineSeries::new(throughput, 6, 4, c.stroke_width(1)))
                        .map_err(failed)?;
                    if k == 0 {
                        dashed
                            .label(format!("vCPU {v}: throughput / alone"))
                            .legend(move |(x, y)| {
                                PathElement::new([(x, y), (x + 16, y)], c.stroke_width(1))
                            });
                    }
                }
            }
            Ok(())
        },
    )
}

/// Per vCPU, median throughput alone and beside the neighbours, as pairs of bars.
pub fn throughput_bars(title: &str, alone: &[Sample], with: &[Sample]) -> Result<String, String> {
    let vcpus = vcpus_sampled(alone, with);
    // The same medians the verdict compares; a vCPU never measured draws no bar.
    let bars = |samples| -> Vec<f64> {
        per_vcpu_median(samples, vcpus)
            .into_iter()
            .map(|m| m.unwrap_or(0.0))
            .collect()
    };
    let (a, w) = (bars(alone), bars(with));
    let top = a.iter().chain(&w).copied().fold(1.0, f64::max) * 1.15;
    let ranges = (-0.5..(vcpus as f64 - 0.5).max(0.5), 0.0..top);
    svg(
        title,
        64,
        ranges,
        SeriesLabelPosition::UpperRight,
        |chart| {
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(vcpus.max(1))
                .x_label_formatter(&|x| format!("vCPU {}", x.round()))
                .y_desc("workload chunks per second (median)")
                .draw()
                .map_err(failed)?;
            for (values, offset, c, label) in [
                (&a, -0.35, colour(0), "alone"),
                (&w, 0.0, colour(1), "beside neighbours"),
            ] {
                chart
                    .draw_series(values.iter().enumerate().map(|(v, &y)| {
                        let x = v as f64 + offset;
                        Rectangle::new([(x, 0.0), (x + 0.35, y)], c.filled())
                    }))
                    .map_err(failed)?
                    .label(label)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled())
                    });
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: u64, throughput: &[f64], steal: &[f64]) -> Sample {
        Sample {
            t_ms,
            throughput: throughput.iter().map(|&x| Some(x)).collect(),
            steal_ratio: steal.to_vec(),
        }
    }

    #[test]
    fn share_chart_has_a_line_per_vcpu_and_the_v_line() {
        let alone = [
            sample(1000, &[10.0, 10.0], &[0.0, 0.1]),
            sample(2000, &[10.0, 9.0], &[0.0, 0.0]),
        ];
        let with = [sample(3000, &[5.0, 4.0], &[0.5, 0.9])];
        let svg = share_over_time("SCS-2V-4", &alone, &with).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in [
            "SCS-2V-4",
            "vCPU 0: 1 − steal",
            "vCPU 1: throughput / alone",
            "20 % (V promise)",
            "neighbours busy from here",
            "share of a core",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        // Two vCPU lines + the 20 % line + the neighbour marker (+ legend samples).
        assert!(svg.matches("<polyline").count() >= 4, "{svg}");
        let none = share_over_time("empty", &[], &[]).unwrap();
        assert!(!none.contains("vCPU 0") && !none.contains("neighbours busy"));
    }

    #[test]
    fn throughput_chart_has_two_bars_per_vcpu() {
        let alone = [sample(1000, &[10.0, 12.0, 8.0], &[0.0; 3])];
        let with = [sample(3000, &[9.0, 6.0, 8.0], &[0.0; 3])];
        let svg = throughput_bars("SCS-3C-4", &alone, &with).unwrap();
        for text in ["alone", "beside neighbours", "vCPU 2"] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        // 6 bars + 2 legend swatches + the background and the plot frame.
        assert!(
            svg.matches("<rect").count() >= 8,
            "{}",
            svg.matches("<rect").count()
        );
    }
}
