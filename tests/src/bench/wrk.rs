//! Load runs with `wrk`: one run against one target, runs interleaved across targets, and
//! reading wrk's `--latency` report.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::cpu_time;

/// How wrk loads a target; the same for every target in one benchmark.
#[derive(Clone, Debug)]
pub struct WrkSettings {
    /// `-t`: wrk's threads.
    pub threads: u32,
    /// `-c`: open connections, shared by the threads.
    pub connections: u32,
    /// `-d`: length of one run.
    pub duration: Duration,
}

impl WrkSettings {
    /// wrk's arguments for these settings, before the headers and the URL.
    fn args(&self) -> Vec<String> {
        vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", self.duration.as_secs().max(1)),
            "--latency".to_owned(),
        ]
    }

    /// The command line as a reader would type it, e.g. `wrk -t1 -c32 -d10s --latency`.
    pub fn command_line(&self) -> String {
        format!("wrk {}", self.args().join(" "))
    }
}

/// One URL to load, with the `Host` header it needs (host-mode apps on 127.0.0.1).
#[derive(Clone, Debug)]
pub struct Target {
    /// What the row is called in tables, e.g. "shoal host `/`".
    pub label: String,
    /// The URL wrk connects to.
    pub url: String,
    /// Sent as `Host` instead of the URL's authority.
    pub host: Option<String>,
    /// The serving process, whose CPU time is read around each measured run.
    pub server_pid: Option<u32>,
}

/// What one wrk run reported.
#[derive(Clone, Debug, PartialEq)]
pub struct WrkRun {
    /// `Requests/sec:`.
    pub requests_per_sec: f64,
    /// The 50% line of the latency distribution.
    pub p50: Duration,
    /// The 99% line of the latency distribution.
    pub p99: Duration,
    /// Requests completed in the run.
    pub requests: u64,
    /// `Non-2xx or 3xx responses:` (wrk counts status 400 and above).
    pub error_responses: u64,
    /// The sum of `Socket errors:` (connect, read, write, timeout).
    pub socket_errors: u64,
    /// CPU time the serving process used during the run, when its pid is known.
    pub server_cpu: Option<Duration>,
}

impl WrkRun {
    /// Server CPU time per completed request.
    pub fn server_cpu_per_request(&self) -> Option<Duration> {
        let requests = u32::try_from(self.requests)
            .ok()
            .filter(|&count| count > 0)?;
        Some(self.server_cpu? / requests)
    }
}

/// Runs wrk once against `target`. Fails when wrk fails or any response was an error status:
/// a run that measured 404s measured nothing.
pub fn run(settings: &WrkSettings, target: &Target) -> Result<WrkRun> {
    let run = run_counting_errors(settings, target)?;
    if run.error_responses > 0 {
        bail!(
            "{}: {} of {} responses had an error status",
            target.label,
            run.error_responses,
            run.requests
        );
    }
    Ok(run)
}

/// Runs wrk once against `target`; fails only when wrk fails. Answers with an error status are
/// counted in the result, for a scenario where they are a finding.
pub fn run_counting_errors(settings: &WrkSettings, target: &Target) -> Result<WrkRun> {
    let mut command = Command::new("wrk");
    command.args(settings.args());
    if let Some(host) = &target.host {
        command.args(["-H", &format!("Host: {host}")]);
    }
    let output = command
        .arg(&target.url)
        .output()
        .context("run wrk (scripts/setup.sh installs it)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk against {} failed ({}):\n{stdout}{}",
            target.url,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_report(&stdout)
        .with_context(|| format!("read wrk's report for {}:\n{stdout}", target.url))
}

/// Runs every target `repeats` times, round-robin (a round loads each target once), so that
/// the machine's slow and fast moments fall on all targets alike. Before the rounds each target
/// gets one unrecorded run of `warmup`. Returns the runs per target, in the targets' order.
pub fn run_interleaved(
    settings: &WrkSettings,
    targets: &[Target],
    repeats: usize,
    warmup: Duration,
) -> Result<Vec<Vec<WrkRun>>> {
    let warmup_settings = WrkSettings {
        duration: warmup,
        ..settings.clone()
    };
    for target in targets {
        eprintln!("bench: warm-up {}", target.label);
        run(&warmup_settings, target)?;
    }
    let mut runs = vec![Vec::with_capacity(repeats); targets.len()];
    for round in 1..=repeats {
        for (target, target_runs) in targets.iter().zip(&mut runs) {
            let cpu_before = target.server_pid.map(cpu_time).transpose()?;
            let mut run = run(settings, target)?;
            if let (Some(pid), Some(before)) = (target.server_pid, cpu_before) {
                run.server_cpu = Some(cpu_time(pid)?.saturating_sub(before));
            }
            eprintln!(
                "bench: round {round}/{repeats} {:<46} {:>8.0} req/s  p50 {:>9}  p99 {:>9}",
                target.label,
                run.requests_per_sec,
                format_latency(run.p50),
                format_latency(run.p99)
            );
            target_runs.push(run);
        }
    }
    Ok(runs)
}

/// A latency for tables: microseconds below 1 ms, else milliseconds with two decimals.
pub fn format_latency(latency: Duration) -> String {
    let micros = latency.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0} µs")
    } else {
        format!("{:.2} ms", micros / 1000.0)
    }
}

/// Reads the parts of wrk's `--latency` report that the benchmarks use.
pub fn parse_report(report: &str) -> Result<WrkRun> {
    let mut requests_per_sec = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut error_responses = 0;
    let mut socket_errors = 0;
    for line in report.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = Some(value.trim().parse::<f64>().context("Requests/sec")?);
        } else if let Some(value) = line.strip_prefix("50%") {
            p50 = Some(parse_latency(value.trim())?);
        } else if let Some(value) = line.strip_prefix("99%") {
            p99 = Some(parse_latency(value.trim())?);
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            error_responses = value.trim().parse().context("Non-2xx or 3xx responses")?;
        } else if let Some(counts) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for count in counts.split(',') {
                let number = count.split_whitespace().last().unwrap_or_default();
                socket_errors += number.parse::<u64>().context("Socket errors")?;
            }
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            requests = Some(count.trim().parse().context("requests in")?);
        }
    }
    Ok(WrkRun {
        requests_per_sec: requests_per_sec.context("no `Requests/sec:` line")?,
        p50: p50.context("no `50%` latency line (was --latency passed?)")?,
        p99: p99.context("no `99%` latency line (was --latency passed?)")?,
        requests: requests.context("no `... requests in ...` line")?,
        error_responses,
        socket_errors,
        server_cpu: None,
    })
}

/// A wrk time such as `812.00us`, `1.25ms`, `2.01s` or `1.00m`.
fn parse_latency(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("latency `{text}` has no unit"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("latency `{text}`"))?;
    let seconds_per_unit = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => bail!("latency `{text}` has an unknown unit `{other}`"),
    };
    Ok(Duration::from_secs_f64(number * seconds_per_unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verbatim from wrk 4.1.0 (Debian 12) against a shoal node on loopback.
    const REPORT: &str = "\
Running 12s test @ http://127.0.0.1:18080/assets/style.css
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.71ms    2.40ms  38.14ms   84.48%
    Req/Sec     9.07k     2.39k   15.19k    70.00%
  Latency Distribution
     50%    3.25ms
     75%    4.51ms
     90%    6.05ms
     99%   12.78ms
  108392 requests in 12.02s, 80.32MB read
Requests/sec:   9020.96
Transfer/sec:      6.68MB
";

    #[test]
    fn report_gives_rate_percentiles_and_counts() {
        let run = parse_report(REPORT).unwrap();
        assert_eq!(
            run,
            WrkRun {
                requests_per_sec: 9020.96,
                p50: Duration::from_micros(3250),
                p99: Duration::from_micros(12780),
                requests: 108392,
                error_responses: 0,
                socket_errors: 0,
                server_cpu: None,
            }
        );
    }

    #[test]
    fn error_responses_and_socket_errors_are_counted() {
        let report = REPORT.replace(
            "Requests/sec:",
            "  Socket errors: connect 0, read 3, write 0, timeout 2\n  Non-2xx or 3xx responses: 17\nRequests/sec:",
        );
        let run = parse_report(&report).unwrap();
        assert_eq!((run.error_responses, run.socket_errors), (17, 5));
    }

    #[test]
    fn latency_units_are_normalised() {
        assert_eq!(
            parse_latency("812.00us").unwrap(),
            Duration::from_micros(812)
        );
        assert_eq!(
            parse_latency("1.25ms").unwrap(),
            Duration::from_micros(1250)
        );
        assert_eq!(parse_latency("2.00s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_latency("1.50m").unwrap(), Duration::from_secs(90));
        assert!(parse_latency("3.0parsecs").is_err());
        assert!(parse_latency("17").is_err());
    }

    #[test]
    fn a_report_without_latency_lines_is_refused() {
        let report: String = REPORT
            .lines()
            .filter(|line| !line.trim_start().starts_with("99%"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(parse_report(&report).is_err());
    }

    #[test]
    fn server_cpu_is_divided_over_the_requests() {
        let mut run = parse_report(REPORT).unwrap();
        assert_eq!(run.server_cpu_per_request(), None);
        run.server_cpu = Some(Duration::from_millis(10_839));
        assert_eq!(
            run.server_cpu_per_request(),
            Some(Duration::from_nanos(99_998))
        );
    }

    #[test]
    fn settings_become_wrk_flags() {
        let settings = WrkSettings {
            threads: 1,
            connections: 32,
            duration: Duration::from_secs(10),
        };
        assert_eq!(settings.command_line(), "wrk -t1 -c32 -d10s --latency");
    }

    #[test]
    fn latencies_print_in_readable_units() {
        assert_eq!(format_latency(Duration::from_micros(598)), "598 µs");
        assert_eq!(format_latency(Duration::from_micros(1910)), "1.91 ms");
    }
}
