//! Results: the median of a target's runs, the markdown table printed and pasted into
//! BENCHMARKS.md, and the same rows as JSON.

use std::time::Duration;

use serde_json::{json, Value};

use super::wrk::{format_latency, Target, WrkRun};

/// One table row: a target, its runs, and the row it is compared with.
#[derive(Clone, Debug)]
pub struct Row {
    /// What was loaded.
    pub target: Target,
    /// Index of the baseline row serving the same bytes (an nginx row), if any.
    pub baseline: Option<usize>,
    /// Every recorded run, in order.
    pub runs: Vec<WrkRun>,
}

/// The median of each figure over a row's runs, taken figure by figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Median requests per second.
    pub requests_per_sec: f64,
    /// Median of the runs' p50 latencies.
    pub p50: Duration,
    /// Median of the runs' p99 latencies.
    pub p99: Duration,
    /// Median server CPU time per request, when it was measured.
    pub server_cpu_per_request: Option<Duration>,
}

impl Row {
    /// Medians over the runs; a row has at least one run.
    pub fn summary(&self) -> Summary {
        let seconds = |pick: fn(&WrkRun) -> Duration| {
            Duration::from_secs_f64(median(
                self.runs
                    .iter()
                    .map(|run| pick(run).as_secs_f64())
                    .collect(),
            ))
        };
        let cpu_per_request: Vec<f64> = self
            .runs
            .iter()
            .filter_map(WrkRun::server_cpu_per_request)
            .map(|cpu| cpu.as_secs_f64())
            .collect();
        Summary {
            requests_per_sec: median(self.runs.iter().map(|run| run.requests_per_sec).collect()),
            p50: seconds(|run| run.p50),
            p99: seconds(|run| run.p99),
            server_cpu_per_request: (!cpu_per_request.is_empty())
                .then(|| Duration::from_secs_f64(median(cpu_per_request))),
        }
    }

    /// Median requests/s of this row over its baseline's.
    pub fn ratio_to_baseline(&self, rows: &[Row]) -> Option<f64> {
        let baseline = rows.get(self.baseline?)?.summary().requests_per_sec;
        Some(self.summary().requests_per_sec / baseline)
    }
}

/// p50, one tail percentile (nearest rank), mean and extremes of some samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median.
    pub p50: f64,
    /// The nearest-rank percentile asked for (p90, p99...): with fewer samples than that
    /// percentile needs, the maximum.
    pub tail: f64,
    /// The mean.
    pub mean: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `samples` with the `tail_quantile` (e.g. 0.99) percentile. Panics when
    /// empty.
    pub fn of(samples: &[f64], tail_quantile: f64) -> Self {
        assert!(!samples.is_empty(), "statistics of no samples");
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            p50: median(sorted.clone()),
            tail: nearest_rank(&sorted, tail_quantile),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

/// The nearest-rank percentile of sorted samples.
pub fn nearest_rank(sorted: &[f64], quantile: f64) -> f64 {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounded to three decimals, for JSON.
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The middle value; the mean of the middle two for an even count. Panics when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "median of no values");
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// The rows as a markdown table: median requests/s, p50, p99, the requests/s ratio to the
/// baseline row, and the server's CPU time per request.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut table = String::from(
        "| scenario | requests/s | p50 | p99 | req/s vs nginx | server CPU per request |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let summary = row.summary();
        let ratio = match row.ratio_to_baseline(rows) {
            Some(ratio) => format!("{ratio:.2}x"),
            None => "(baseline)".to_owned(),
        };
        let cpu = summary
            .server_cpu_per_request
            .map(|cpu| format!("{:.1} µs", cpu.as_secs_f64() * 1e6))
            .unwrap_or_else(|| "-".to_owned());
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.target.label,
            thousands(summary.requests_per_sec),
            format_latency(summary.p50),
            format_latency(summary.p99),
            ratio,
            cpu
        ));
    }
    table
}

/// The rows as JSON: medians, ratio, and every run.
pub fn rows_json(rows: &[Row]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            let summary = row.summary();
            json!({
                "scenario": row.target.label,
                "url": row.target.url,
                "host": row.target.host,
                "baseline": row.baseline.map(|index| rows[index].target.label.clone()),
                "requests_per_sec": round(summary.requests_per_sec, 1),
                "p50_ms": millis(summary.p50),
                "p99_ms": millis(summary.p99),
                "ratio_to_baseline": row.ratio_to_baseline(rows).map(|ratio| round(ratio, 3)),
                "server_cpu_us_per_request": summary.server_cpu_per_request.map(micros),
                "runs": row.runs.iter().map(run_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    Value::Array(rows)
}

fn run_json(run: &WrkRun) -> Value {
    json!({
        "requests_per_sec": run.requests_per_sec,
        "p50_ms": millis(run.p50),
        "p99_ms": millis(run.p99),
        "requests": run.requests,
        "error_responses": run.error_responses,
        "socket_errors": run.socket_errors,
        "server_cpu_ms": run.server_cpu.map(millis),
    })
}

/// Kibibytes as mebibytes with one decimal, e.g. `12.3 MiB`.
pub fn format_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn millis(duration: Duration) -> f64 {
    round(duration.as_secs_f64() * 1000.0, 3)
}

fn micros(duration: Duration) -> f64 {
    round(duration.as_secs_f64() * 1e6, 2)
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// `49369.12` as `49,369`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(requests_per_sec: f64, p50_us: u64, p99_us: u64) -> WrkRun {
        WrkRun {
            requests_per_sec,
            p50: Duration::from_micros(p50_us),
            p99: Duration::from_micros(p99_us),
            requests: 1000,
            error_responses: 0,
            socket_errors: 0,
            server_cpu: Some(Duration::from_micros(p50_us * 10)),
        }
    }

    fn row(label: &str, baseline: Option<usize>, runs: Vec<WrkRun>) -> Row {
        Row {
            target: Target {
                label: label.to_owned(),
                url: "http://127.0.0.1:1/".to_owned(),
                host: None,
                server_pid: None,
            },
            baseline,
            runs,
        }
    }

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
    }

    #[test]
    fn summary_takes_each_figure_median_separately() {
        let row = row(
            "x",
            None,
            vec![
                run(100.0, 900, 5000),
                run(300.0, 500, 2000),
                run(200.0, 700, 9000),
            ],
        );
        assert_eq!(
            row.summary(),
            Summary {
                requests_per_sec: 200.0,
                p50: Duration::from_micros(700),
                p99: Duration::from_micros(5000),
                server_cpu_per_request: Some(Duration::from_nanos(7000)),
            }
        );
    }

    #[test]
    fn table_shows_medians_and_the_ratio_to_the_baseline_row() {
        let rows = vec![
            row("nginx `/a`", None, vec![run(40_000.0, 700, 2000)]),
            row("shoal `/a`", Some(0), vec![run(10_000.0, 2500, 9100)]),
        ];
        let table = markdown_table(&rows);
        assert!(
            table.contains("| nginx `/a` | 40,000 | 700 µs | 2.00 ms | (baseline) | 7.0 µs |"),
            "{table}"
        );
        assert!(
            table.contains("| shoal `/a` | 10,000 | 2.50 ms | 9.10 ms | 0.25x | 25.0 µs |"),
            "{table}"
        );
        let json = rows_json(&rows);
        assert_eq!(json[1]["ratio_to_baseline"], 0.25);
        assert_eq!(json[1]["baseline"], "nginx `/a`");
        assert_eq!(json[1]["p99_ms"], 9.1);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
