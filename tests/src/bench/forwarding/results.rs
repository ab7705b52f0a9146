//! The `forwarding` scenario's results: the verdicts on DESIGN §10's targets, the markdown
//! section pasted into BENCHMARKS.md and the same data as JSON.

use std::time::Duration;

use serde_json::{json, Value};

use super::setup::{Instance, Throttling};
use super::{
    ForwardingReport, Measured, Options, Pass, Ports, DIRECT, HOP_P99_TARGET_MS, LOCAL,
    LOCAL_OVER_DIRECT_TARGET, MANIFEST, NGINX, NGINX_KEEPALIVE, PROCESSES, REMOTE,
    TIME_WAIT_DRAINED, WARMUP,
};
use crate::bench::report::{round3, Summary};
use crate::bench::wrk::format_latency;
use crate::bench::Conditions;

/// What the report needs besides the passes.
pub(super) struct Facts {
    /// The `shoal` binary the nodes ran.
    pub(super) shoal_bin: String,
    pub(super) conditions: Conditions,
    pub(super) docker_version: String,
    pub(super) nginx_version: String,
    pub(super) node_version: String,
    pub(super) command: String,
    pub(super) options: Options,
}

/// How the cluster and the app were set up.
pub(super) struct Setup {
    pub(super) commands: [String; 2],
    pub(super) instance: Instance,
}

/// The figures the targets are checked against, from one pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Verdicts {
    pub(super) local_over_direct: f64,
    pub(super) local_over_nginx: f64,
    pub(super) local_over_nginx_keepalive: f64,
    /// Remote minus local, medians, in milliseconds.
    pub(super) hop_p50_ms: f64,
    pub(super) hop_p99_ms: f64,
    /// Error responses and socket errors through the local and the remote ingress.
    pub(super) local_errors: u64,
    pub(super) remote_errors: u64,
}

impl Verdicts {
    pub(super) fn of(pass: &Pass) -> Self {
        let summary: Vec<Summary> = pass.rows.iter().map(Measured::summary).collect();
        let rps = |index: usize| summary[index].requests_per_sec;
        let ms = |latency: Duration| latency.as_secs_f64() * 1000.0;
        Self {
            local_over_direct: rps(LOCAL) / rps(DIRECT),
            local_over_nginx: rps(LOCAL) / rps(NGINX),
            local_over_nginx_keepalive: rps(LOCAL) / rps(NGINX_KEEPALIVE),
            hop_p50_ms: ms(summary[REMOTE].p50) - ms(summary[LOCAL].p50),
            hop_p99_ms: ms(summary[REMOTE].p99) - ms(summary[LOCAL].p99),
            local_errors: pass.rows[LOCAL].errors(),
            remote_errors: pass.rows[REMOTE].errors(),
        }
    }

    pub(super) fn local_throughput_met(&self) -> bool {
        self.local_over_direct >= LOCAL_OVER_DIRECT_TARGET && self.local_errors == 0
    }

    pub(super) fn beats_nginx(&self) -> bool {
        self.local_over_nginx >= 1.0 && self.local_errors == 0
    }

    pub(super) fn hop_met(&self) -> bool {
        self.hop_p99_ms < HOP_P99_TARGET_MS && self.local_errors == 0 && self.remote_errors == 0
    }
}

pub(super) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

/// Milliseconds as `+0.31 ms` or `-0.05 ms`.
pub(super) fn signed_ms(ms: f64) -> String {
    format!("{ms:+.2} ms")
}

pub(super) fn pass_table(pass: &Pass) -> String {
    let mut table = format!(
        "| `{}` | requests/s | p50 | p99 | req/s vs direct | CPU per request: app · node B · \
         node A · nginx |\n|---|---:|---:|---:|---:|---:|\n",
        pass.settings.command_line()
    );
    let direct = pass.rows[DIRECT].summary().requests_per_sec;
    for row in &pass.rows {
        let summary = row.summary();
        let cpu: Vec<String> = (0..PROCESSES.len())
            .map(|index| match row.cpu_per_request_us(index) {
                Some(us) => format!("{us:.1}"),
                None => "-".to_owned(),
            })
            .collect();
        table.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.2}x | {} µs |\n",
            row.variant.target.label,
            summary.requests_per_sec,
            format_latency(summary.p50),
            format_latency(summary.p99),
            summary.requests_per_sec / direct,
            cpu.join(" · ")
        ));
    }
    let verdicts = Verdicts::of(pass);
    let most_time_wait = |row: &Measured| {
        let left = |ports: &Ports| Some(ports.at_end?.saturating_sub(ports.at_start?));
        let most = row.ports.iter().filter_map(left).max();
        most.map_or("?".to_owned(), |count| count.to_string())
    };
    let throttled = |row: &Measured| {
        let runs: Vec<Throttling> = row.throttled.iter().flatten().copied().collect();
        if runs.is_empty() {
            return "?".to_owned();
        }
        let periods: u64 = runs.iter().map(|run| run.periods).sum();
        let time: Duration = runs.iter().map(|run| run.time).sum();
        format!("{periods} ({:.0} ms)", time.as_secs_f64() * 1000.0)
    };
    let drain_waits: Duration = pass
        .rows
        .iter()
        .flat_map(|row| &row.ports)
        .map(|ports| ports.drain_waited)
        .sum();
    let notes = |describe: &dyn Fn(&Measured) -> String| {
        let notes: Vec<String> = pass.rows.iter().map(describe).collect();
        notes.join(", ")
    };
    table.push_str(&format!(
        "\nHop (remote minus local ingress, medians): p50 {}, p99 {}. \
         Error statuses and socket errors over all runs: {}. \
         Sockets in TIME_WAIT towards the container that one run left, most seen: {} (runs \
         waited {:.0} s in all for earlier ones to drain to {TIME_WAIT_DRAINED} first). The \
         app's 100 ms quota periods in which its 1-CPU quota stopped it, and for how long, \
         over all runs: {}.\n",
        signed_ms(verdicts.hop_p50_ms),
        signed_ms(verdicts.hop_p99_ms),
        notes(&|row| format!("{} {}", row.variant.key, row.errors())),
        notes(&|row| format!("{} {}", row.variant.key, most_time_wait(row))),
        drain_waits.as_secs_f64(),
        notes(&|row| format!("{} {}", row.variant.key, throttled(row))),
    ));
    table
}

pub(super) fn report(
    facts: &Facts,
    setup: &Setup,
    passes: &[Pass],
    load_at_end: &str,
) -> ForwardingReport {
    let main = Verdicts::of(&passes[0]);
    let connections = passes[0].settings.connections;
    let tables: Vec<String> = passes.iter().map(pass_table).collect();
    let other_hops: String = passes[1..]
        .iter()
        .map(|pass| {
            let verdicts = Verdicts::of(pass);
            format!(
                " With `-c{}`: {}: **{}** (p50 {}).",
                pass.settings.connections,
                signed_ms(verdicts.hop_p99_ms),
                verdict(verdicts.hop_met()),
                signed_ms(verdicts.hop_p50_ms)
            )
        })
        .collect();
    let errors = if main.local_errors + main.remote_errors > 0 {
        format!(
            " Error answers or socket errors through the local ingress: {}, the remote one: {}; \
             a target a path answered errors on is missed.",
            main.local_errors, main.remote_errors
        )
    } else {
        String::new()
    };
    let markdown = format!(
        "### Service apps: forwarding\n\n{}\n\
         Targets (DESIGN §10), on the {connections}-connection pass:\n\n\
         - **Local ingress keeps ≥ {:.0}% of direct requests/s**: {:.0}%: **{}**.\n\
         - **Local ingress beats nginx `proxy_pass`**: {:.2}x nginx's requests/s: **{}** \
         ({:.2}x nginx with an upstream keepalive pool).\n\
         - **The QUIC hop adds < {HOP_P99_TARGET_MS:.0} ms at p99**: {}: **{}** (p50 {}).\
         {other_hops}\n{errors}\n\
         Conditions: {}; Docker {}; Node.js {} in `{}` (1 CPU, 256 MiB); {}; wrk 1 thread, \
         {}s runs, median of {} rounds per pass (first variant rotating) after a {}s warm-up \
         per variant; load average {} at start, {load_at_end} at the end.\n\n\
         Command: `{}`\n",
        tables.join("\n"),
        LOCAL_OVER_DIRECT_TARGET * 100.0,
        main.local_over_direct * 100.0,
        verdict(main.local_throughput_met()),
        main.local_over_nginx,
        verdict(main.beats_nginx()),
        main.local_over_nginx_keepalive,
        signed_ms(main.hop_p99_ms),
        verdict(main.hop_met()),
        signed_ms(main.hop_p50_ms),
        facts.conditions.summary_line(),
        facts.docker_version,
        facts.node_version,
        setup.instance.image,
        facts.nginx_version,
        facts.options.duration.as_secs(),
        facts.options.repeats,
        WARMUP.as_secs(),
        facts.conditions.load_average,
        facts.command,
    );
    ForwardingReport {
        markdown,
        json: report_json(facts, setup, passes, load_at_end),
    }
}

pub(super) fn report_json(
    facts: &Facts,
    setup: &Setup,
    passes: &[Pass],
    load_at_end: &str,
) -> Value {
    let mut conditions = facts.conditions.to_json();
    for (key, value) in [
        ("shoal_bin", json!(facts.shoal_bin)),
        ("docker_version", json!(facts.docker_version)),
        ("nginx_version", json!(facts.nginx_version)),
        ("node_version", json!(facts.node_version)),
        ("runtime_image", json!(setup.instance.image)),
        ("container", json!(setup.instance.container)),
        ("container_addr", json!(setup.instance.addr.to_string())),
        ("node_commands", json!(setup.commands)),
        ("manifest", json!(MANIFEST)),
        ("repeats", json!(facts.options.repeats)),
        ("warmup_secs_per_variant", json!(WARMUP.as_secs())),
        ("load_average_at_end", json!(load_at_end)),
    ] {
        conditions.insert(key.to_owned(), value);
    }
    let main = Verdicts::of(&passes[0]);
    json!({
        "scenario": "forwarding",
        "command": facts.command,
        "conditions": conditions,
        "passes": passes.iter().map(pass_json).collect::<Vec<_>>(),
        "targets": {
            "connections": passes[0].settings.connections,
            "local_over_direct_at_least": LOCAL_OVER_DIRECT_TARGET,
            "local_over_direct": round3(main.local_over_direct),
            "local_over_direct_met": main.local_throughput_met(),
            "local_over_nginx": round3(main.local_over_nginx),
            "local_beats_nginx": main.beats_nginx(),
            "local_over_nginx_keepalive": round3(main.local_over_nginx_keepalive),
            "hop_p99_added_under_ms": HOP_P99_TARGET_MS,
            "hop_p99_added_ms": round3(main.hop_p99_ms),
            "hop_met": main.hop_met(),
        },
    })
}

pub(super) fn pass_json(pass: &Pass) -> Value {
    let verdicts = Verdicts::of(pass);
    let millis = |latency: Duration| round3(latency.as_secs_f64() * 1000.0);
    let rows: Vec<Value> = pass
        .rows
        .iter()
        .map(|row| {
            let summary = row.summary();
            let cpu: serde_json::Map<String, Value> = PROCESSES
                .iter()
                .enumerate()
                .map(|(index, name)| {
                    let us = row.cpu_per_request_us(index).map(round3);
                    (name.to_string(), json!(us))
                })
                .collect();
            let runs: Vec<Value> = (row.runs.iter().zip(&row.cpu))
                .zip(row.ports.iter().zip(&row.throttled))
                .map(|((run, cpu), (ports, throttled))| {
                    let cpu_ms: Vec<Option<f64>> = cpu.iter().map(|cpu| cpu.map(millis)).collect();
                    json!({
                        "requests_per_sec": run.requests_per_sec,
                        "p50_ms": millis(run.p50),
                        "p99_ms": millis(run.p99),
                        "requests": run.requests,
                        "error_responses": run.error_responses,
                        "socket_errors": run.socket_errors,
                        "cpu_ms_app_node_b_node_a_nginx": cpu_ms,
                        "time_wait_towards_container_at_start": ports.at_start,
                        "time_wait_towards_container_at_end": ports.at_end,
                        "drain_wait_ms": millis(ports.drain_waited),
                        "app_throttled_periods": throttled.map(|t| t.periods),
                        "app_throttled_ms": throttled.map(|t| millis(t.time)),
                    })
                })
                .collect();
            json!({
                "variant": row.variant.key,
                "label": row.variant.target.label,
                "url": row.variant.target.url,
                "host": row.variant.target.host,
                "requests_per_sec": round3(summary.requests_per_sec),
                "p50_ms": millis(summary.p50),
                "p99_ms": millis(summary.p99),
                "cpu_us_per_request": cpu,
                "errors": row.errors(),
                "runs": runs,
            })
        })
        .collect();
    json!({
        "wrk": pass.settings.command_line(),
        "connections": pass.settings.connections,
        "rows": rows,
        "hop_added_ms": { "p50": round3(verdicts.hop_p50_ms), "p99": round3(verdicts.hop_p99_ms) },
    })
}
