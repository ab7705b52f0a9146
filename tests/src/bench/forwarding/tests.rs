//! Tests of the `forwarding` scenario's pure parts: options, the app, the nginx config, the
//! round order, the verdicts and the report.

use std::net::SocketAddr;
use std::path::Path;

use clap::Parser;

use super::results::{pass_json, pass_table, report, Facts, Setup, Verdicts};
use super::setup::{displayed_args, parse_cpu_stat, proxy_config};
use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    options: Options,
}

fn run(requests_per_sec: f64, p50_us: u64, p99_us: u64) -> WrkRun {
    WrkRun {
        requests_per_sec,
        p50: Duration::from_micros(p50_us),
        p99: Duration::from_micros(p99_us),
        requests: 10_000,
        error_responses: 0,
        socket_errors: 0,
        server_cpu: None,
    }
}

fn measured(key: &'static str, runs: Vec<WrkRun>) -> Measured {
    let cpu = runs
        .iter()
        .map(|_| [Some(Duration::from_millis(250)), None, None, None])
        .collect();
    Measured {
        variant: Variant {
            key,
            target: Target {
                label: key.to_owned(),
                url: "http://127.0.0.1:1/".to_owned(),
                host: None,
                server_pid: None,
            },
            shoal_headers: None,
        },
        ports: vec![
            Ports {
                drain_waited: Duration::from_secs(2),
                at_start: Some(10),
                at_end: Some(120),
            };
            runs.len()
        ],
        throttled: vec![
            Some(Throttling {
                periods: 2,
                time: Duration::from_millis(30),
            });
            runs.len()
        ],
        runs,
        cpu,
    }
}

fn pass() -> Pass {
    Pass {
        settings: WrkSettings {
            threads: 1,
            connections: 8,
            duration: Duration::from_secs(10),
        },
        rows: vec![
            measured("direct", vec![run(10_000.0, 700, 1500)]),
            measured(
                "local_ingress",
                vec![
                    run(9_000.0, 800, 1800),
                    run(8_000.0, 900, 2000),
                    run(9_500.0, 850, 1900),
                ],
            ),
            measured("remote_ingress", vec![run(7_000.0, 1100, 2600)]),
            measured("nginx", vec![run(8_000.0, 950, 2100)]),
            measured("nginx_keepalive", vec![run(10_000.0, 700, 1600)]),
        ],
    }
}

#[test]
fn options_default_to_two_passes_and_name_the_command() {
    let options = Cli::try_parse_from(["forwarding"]).unwrap().options;
    assert_eq!(options.connections, vec![8, 1]);
    assert_eq!(options.duration, Duration::from_secs(10));
    assert_eq!(
        options.arguments(),
        "forwarding --duration 10s --connections 8,1 --repeats 3"
    );
    let options = Cli::try_parse_from(["f", "--connections", "16", "--duration", "5"])
        .unwrap()
        .options;
    assert_eq!(
        (options.connections, options.duration.as_secs()),
        (vec![16], 5)
    );
    assert!(Cli::try_parse_from(["f", "--duration", "1.5s"]).is_err());
    assert!(Cli::try_parse_from(["f", "--repeats", "0"]).is_err());
}

#[test]
fn the_app_is_one_instance_that_does_not_pause_during_a_run() {
    for line in [
        "name = \"forwarding-hello\"",
        "kind = \"service\"",
        "port = 3000",
        "max = 1",
        "pause_after = \"10m\"",
        "cpus = 1.0",
    ] {
        assert!(MANIFEST.contains(line), "missing `{line}` in:\n{MANIFEST}");
    }
    assert_eq!(BODY.len(), 17);
    assert!(SERVER_JS.contains("hello from shoal\\n"));
}

#[test]
fn nginx_proxies_plainly_and_through_a_keepalive_pool() {
    let text = proxy_config(
        Path::new("/tmp/work"),
        "172.18.0.2:3000".parse().unwrap(),
        "127.0.0.1:4001".parse().unwrap(),
        "127.0.0.1:4002".parse().unwrap(),
    );
    for line in [
        "master_process off;",
        "worker_processes 1;",
        "access_log off;",
        "listen 127.0.0.1:4001;",
        "proxy_pass http://172.18.0.2:3000;",
        "listen 127.0.0.1:4002;",
        "server 172.18.0.2:3000;",
        "keepalive 16;",
        "proxy_pass http://app_keepalive;",
        "proxy_http_version 1.1;",
        "proxy_set_header Connection \"\";",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}

#[test]
fn each_round_starts_with_the_next_variant() {
    let order = |round| round_order(round, 5).collect::<Vec<_>>();
    assert_eq!(order(0), vec![0, 1, 2, 3, 4]);
    assert_eq!(order(1), vec![1, 2, 3, 4, 0]);
    assert_eq!(order(7), vec![2, 3, 4, 0, 1]);
}

#[test]
fn verdicts_compare_medians() {
    let verdicts = Verdicts::of(&pass());
    assert_eq!(verdicts.local_over_direct, 0.9);
    assert_eq!(verdicts.local_over_nginx, 9_000.0 / 8_000.0);
    assert_eq!(verdicts.local_over_nginx_keepalive, 0.9);
    assert!((verdicts.hop_p50_ms - 0.25).abs() < 1e-9);
    assert!((verdicts.hop_p99_ms - 0.7).abs() < 1e-9);
    assert!(verdicts.local_throughput_met() && verdicts.beats_nginx() && verdicts.hop_met());
    let mut slow = pass();
    slow.rows[REMOTE].runs[0].p99 = Duration::from_micros(3000);
    assert!(!Verdicts::of(&slow).hop_met());
    let mut failing = pass();
    failing.rows[LOCAL].runs[1].error_responses = 3;
    let verdicts = Verdicts::of(&failing);
    assert!(!verdicts.local_throughput_met() && !verdicts.beats_nginx() && !verdicts.hop_met());
}

#[test]
fn time_wait_sockets_towards_the_container_are_counted() {
    // Rows of /proc/net/tcp on a little-endian host (trailing fields cut): two in TIME_WAIT
    // towards 172.18.0.2:3000, one established to it, one in TIME_WAIT elsewhere.
    let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n\
        0: 010012AC:8F3A 020012AC:0BB8 06 00000000:00000000 03:00000F1B 00000000\n\
        1: 010012AC:8F3C 020012AC:0BB8 06 00000000:00000000 03:00000F1B 00000000\n\
        2: 010012AC:8F3E 020012AC:0BB8 01 00000000:00000000 00:00000000 00000000\n\
        3: 0100007F:8F40 0100007F:1F90 06 00000000:00000000 03:00000F1B 00000000\n";
    let container: SocketAddr = "172.18.0.2:3000".parse().unwrap();
    let expected = if cfg!(target_endian = "little") { 2 } else { 0 };
    assert_eq!(count_time_wait(table, container), Some(expected));
    assert_eq!(count_time_wait(table, "[::1]:3000".parse().unwrap()), None);
    assert!(time_wait_towards(container).is_some());
}

#[test]
fn the_table_shows_medians_ratios_cpu_and_the_hop() {
    let table = pass_table(&pass());
    assert!(
        table.contains("| `wrk -t1 -c8 -d10s --latency` |"),
        "{table}"
    );
    assert!(
        table.contains("| local_ingress | 9000 | 850 µs | 1.90 ms | 0.90x | 25.0 · - · - · - µs |"),
        "{table}"
    );
    assert!(table.contains("p50 +0.25 ms, p99 +0.70 ms"), "{table}");
    assert!(
        table.contains("all runs: direct 0, local_ingress 0,"),
        "{table}"
    );
    assert!(
        table.contains("most seen: direct 110, local_ingress 110,"),
        "{table}"
    );
    assert!(table.contains("waited 14 s in all"), "{table}");
    assert!(
        table.contains("direct 2 (30 ms), local_ingress 6 (90 ms),"),
        "{table}"
    );
    let json = pass_json(&pass());
    assert_eq!(json["rows"][1]["requests_per_sec"], 9000.0);
    assert_eq!(json["rows"][1]["cpu_us_per_request"]["app"], 25.0);
    assert_eq!(json["hop_added_ms"]["p99"], 0.7);
}

#[test]
fn throttling_is_read_from_cgroup_v1_and_v2() {
    let v1 = "nr_periods 5046\nnr_throttled 17\nthrottled_time 412345678\nnr_bursts 0\n";
    let v2 = "usage_usec 1\nnr_periods 9\nnr_throttled 3\nthrottled_usec 1500\n";
    let v1 = parse_cpu_stat(v1).unwrap();
    assert_eq!(
        (v1.periods, v1.time),
        (17, Duration::from_nanos(412_345_678))
    );
    let v2 = parse_cpu_stat(v2).unwrap();
    assert_eq!((v2.periods, v2.time), (3, Duration::from_micros(1500)));
    assert_eq!(parse_cpu_stat("usage_usec 1\n"), None);
    let later = Throttling {
        periods: 20,
        time: Duration::from_millis(500),
    };
    assert_eq!(later.since(v1).periods, 3);
}

#[test]
fn the_join_token_is_left_out_of_recorded_commands() {
    let args: Vec<String> = [
        "join",
        "--seed",
        "127.0.0.1:1",
        "--token",
        "secret",
        "--name",
        "b",
    ]
    .map(str::to_owned)
    .to_vec();
    let shown = displayed_args(&args).join(" ");
    assert_eq!(
        shown,
        "join --seed 127.0.0.1:1 --token <A's tokens/join> --name b"
    );
}

#[test]
fn the_report_gives_every_target_a_verdict_and_the_conditions() {
    let facts = Facts {
        shoal_bin: "target/release/shoal".into(),
        conditions: Conditions {
            date_utc: "2026-11-24T00:00:00Z".into(),
            nproc: "2".into(),
            cpu_model: "test cpu".into(),
            kernel: "6.1".into(),
            os: "Debian".into(),
            build_profile: "release".into(),
            commit: "abc".into(),
            load_average: "0.1 0.2 0.3".into(),
        },
        docker_version: "20.10".into(),
        nginx_version: "nginx/1.22.1".into(),
        node_version: "v20".into(),
        command: "cargo run ...".into(),
        options: Cli::try_parse_from(["forwarding"]).unwrap().options,
    };
    let setup = Setup {
        commands: ["shoal seed ...".into(), "shoal join ...".into()],
        instance: Instance {
            container: "c0ffee".into(),
            addr: "172.18.0.2:3000".parse().unwrap(),
            image: "shoal-runtime:1".into(),
            app_pid: None,
            cpu_stat: None,
        },
    };
    let mut single = pass();
    single.settings.connections = 1;
    single.rows[REMOTE].runs[0].p99 = Duration::from_micros(3500);
    let report = report(&facts, &setup, &[pass(), single], "0.4 0.5 0.6");
    let markdown = &report.markdown;
    for needle in [
        "≥ 85% of direct requests/s**: 90%: **met**",
        "beats nginx `proxy_pass`**: 1.12x nginx's requests/s: **met** (0.90x nginx with",
        "adds < 1 ms at p99**: +0.70 ms: **met** (p50 +0.25 ms). With `-c1`: +1.60 ms: **missed**",
        "Node.js v20 in `shoal-runtime:1`",
        "Command: `cargo run ...`",
    ] {
        assert!(
            markdown.contains(needle),
            "missing `{needle}` in:\n{markdown}"
        );
    }
    assert_eq!(report.json["targets"]["local_over_direct_met"], true);
    assert_eq!(report.json["passes"][1]["connections"], 1);
    assert_eq!(report.json["passes"][1]["hop_added_ms"]["p99"], 1.6);
}
