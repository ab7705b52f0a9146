//! Each checker against hand-built traces: clean ones give nothing, broken ones give exactly the
//! expected violation.

use std::collections::BTreeSet;

use super::*;
use crate::trace::FireRecord;

/// A step: its time and its events.
type Step = (u64, Vec<Event>);

/// Feeds `steps` then finishes at `end_ms`; returns every violation in order.
fn run(checker: &mut dyn Checker, steps: &[Step], end_ms: u64, end: &End) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (at_ms, events) in steps {
        violations.extend(checker.step(*at_ms, events));
    }
    violations.extend(checker.finish(end_ms, end));
    violations
}

/// Asserts exactly one violation, from `name`, at `at_ms`, whose message holds every part.
fn assert_one(violations: &[Violation], name: &str, at_ms: u64, parts: &[&str]) {
    assert_eq!(
        violations.len(),
        1,
        "expected one violation: {violations:#?}"
    );
    let found = &violations[0];
    assert_eq!(found.checker, name);
    assert_eq!(found.at_ms, at_ms, "{found}");
    for part in parts {
        assert!(found.message.contains(part), "{part:?} not in {found}");
    }
}

fn raft(node: NodeId, term: u64, is_leader: bool, committed: u64) -> Event {
    Event::Raft {
        node,
        term,
        leader: None,
        is_leader,
        last_log: committed,
        committed,
        applied: committed,
    }
}

fn table(node: NodeId, applied: u64, apps: &[(&str, u64)], fires: &[FireRecord]) -> Event {
    Event::Table {
        node,
        applied,
        apps: apps.iter().map(|(app, v)| (app.to_string(), *v)).collect(),
        fires: fires.iter().cloned().collect(),
    }
}

fn fire(job: &str, run_id: &str, tick: i64, attempt: u32, manual: bool) -> FireRecord {
    FireRecord {
        job: job.to_string(),
        run_id: run_id.to_string(),
        tick,
        attempt,
        manual,
        fence_term: 1,
        failed: false,
    }
}

fn members(node: NodeId, live: &[NodeId]) -> Event {
    Event::Members {
        node,
        live: live.iter().copied().collect(),
    }
}

fn deployed(app: &str, version: u64, index: u64) -> Event {
    Event::DeployAcked {
        app: app.to_string(),
        version,
        index,
    }
}

fn deleted(app: &str, index: u64) -> Event {
    Event::DeleteAcked {
        app: app.to_string(),
        index,
    }
}

fn accepted(from: NodeId, job: &str, run_id: &str, fence_term: u64) -> Event {
    Event::JobAccepted {
        worker: 9,
        from,
        job: job.to_string(),
        run_id: run_id.to_string(),
        fence_term,
        fence_index: 4,
    }
}

fn params() -> Params {
    Params {
        gossip_interval_ms: 200,
        dead_after_ms: 2_000,
        converge_ms: 1_000,
    }
}

#[test]
fn all_has_seven_checkers_with_distinct_names() {
    let checkers = all(&params());
    let names: BTreeSet<&str> = checkers.iter().map(|checker| checker.name()).collect();
    assert_eq!(checkers.len(), 7);
    assert_eq!(names.len(), 7);
    for name in [
        "no-route-to-dead",
        "one-leader-per-term",
        "acked-deploy-kept",
        "cron-once",
        "members-converge",
        "never-backwards",
        "one-cold-start",
    ] {
        assert!(names.contains(name), "{name} missing");
    }
}

mod leader {
    use super::*;

    const NAME: &str = "one-leader-per-term";

    #[test]
    fn clean_trace_with_same_step_and_late_fences() {
        let steps = vec![
            (10, vec![raft(1, 1, false, 0), raft(2, 1, false, 0)]),
            // The fence comes before the observation that shows its sender leading.
            (20, vec![accepted(1, "job", "r1", 1), raft(1, 1, true, 1)]),
            (30, vec![raft(1, 1, true, 2), accepted(1, "job", "r2", 1)]),
            // Node 2 leads term 2 (one past any term seen) but is only seen doing so a step
            // later.
            (40, vec![accepted(2, "job", "r3", 2)]),
            (50, vec![raft(2, 2, true, 3), raft(1, 2, false, 3)]),
            // Term 4 is two past any term seen before this step, but this step shows it.
            (60, vec![accepted(1, "job", "r4", 4), raft(1, 4, true, 4)]),
        ];
        let found = run(&mut LeaderChecker::default(), &steps, 70, &End::default());
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn two_leaders_in_one_term() {
        let steps = vec![
            (10, vec![raft(1, 2, true, 1)]),
            (20, vec![raft(2, 2, true, 1)]),
            (30, vec![raft(2, 2, true, 2)]),
        ];
        let found = run(&mut LeaderChecker::default(), &steps, 40, &End::default());
        assert_one(&found, NAME, 20, &["term 2", "node 2", "{1}"]);
    }

    #[test]
    fn fence_from_a_node_that_did_not_lead_its_term() {
        let steps = vec![
            (10, vec![raft(1, 1, true, 1), raft(2, 1, false, 1)]),
            (20, vec![accepted(2, "backup", "r7", 1)]),
        ];
        let found = run(&mut LeaderChecker::default(), &steps, 30, &End::default());
        assert_one(
            &found,
            NAME,
            30,
            &["run r7", "from node 2", "fence term 1", "led by {1}"],
        );
    }

    #[test]
    fn fence_in_a_term_nobody_was_seen_leading() {
        let steps = vec![
            (10, vec![raft(1, 1, true, 1)]),
            (20, vec![accepted(1, "backup", "r7", 2)]),
        ];
        let found = run(&mut LeaderChecker::default(), &steps, 30, &End::default());
        assert_one(
            &found,
            NAME,
            30,
            &["run r7", "no node was seen leading term 2"],
        );
    }

    #[test]
    fn impossible_fence_term_is_flagged_at_once_and_only_once() {
        let steps = vec![
            (10, vec![raft(1, 1, true, 1)]),
            (20, vec![accepted(1, "backup", "r7", 3)]),
            // Term 3 does get a leader later: the fence is still reported once.
            (30, vec![raft(1, 3, true, 2)]),
        ];
        let found = run(&mut LeaderChecker::default(), &steps, 40, &End::default());
        assert_one(
            &found,
            NAME,
            20,
            &["fence term 3", "highest term any node has reported is 1"],
        );
    }
}

mod deploys {
    use super::*;

    const NAME: &str = "acked-deploy-kept";

    #[test]
    fn clean_trace_with_lagging_follower() {
        let steps = vec![
            (10, vec![table(1, 3, &[], &[]), table(2, 3, &[], &[])]),
            (
                20,
                vec![deployed("web", 1, 5), table(1, 5, &[("web", 1)], &[])],
            ),
            (
                30,
                vec![deployed("web", 2, 7), table(1, 7, &[("web", 2)], &[])],
            ),
            // Node 2 has applied only the first deploy.
            (40, vec![table(2, 5, &[("web", 1)], &[])]),
            (50, vec![table(2, 8, &[("web", 3)], &[])]),
        ];
        let found = run(&mut DeployChecker::default(), &steps, 60, &End::default());
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn older_version_after_the_ack_is_reported_once() {
        let steps = vec![
            (
                10,
                vec![deployed("web", 2, 6), table(1, 6, &[("web", 2)], &[])],
            ),
            (20, vec![table(2, 6, &[("web", 1)], &[])]),
            (30, vec![table(2, 9, &[("web", 1)], &[])]),
        ];
        let found = run(&mut DeployChecker::default(), &steps, 40, &End::default());
        assert_one(
            &found,
            NAME,
            20,
            &[
                "node 2",
                "applied index 6",
                "version 1",
                "version 2 was acknowledged at index 6",
            ],
        );
    }

    #[test]
    fn table_seen_before_the_ack_is_judged_at_the_ack() {
        let steps = vec![
            (10, vec![table(1, 6, &[], &[])]),
            (20, vec![deployed("web", 1, 6)]),
        ];
        let found = run(&mut DeployChecker::default(), &steps, 30, &End::default());
        assert_one(&found, NAME, 20, &["node 1", "no such app", "app web"]);
    }

    #[test]
    fn delete_then_redeploy_restarts_versions() {
        let steps = vec![
            (
                10,
                vec![deployed("web", 3, 5), table(1, 5, &[("web", 3)], &[])],
            ),
            (20, vec![deleted("web", 8), table(1, 8, &[], &[])]),
            (
                30,
                vec![deployed("web", 1, 10), table(1, 10, &[("web", 1)], &[])],
            ),
            // A follower between the delete and the redeploy.
            (40, vec![table(2, 9, &[], &[])]),
            (50, vec![table(2, 10, &[("web", 1)], &[])]),
        ];
        let found = run(&mut DeployChecker::default(), &steps, 60, &End::default());
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn missing_before_the_delete_is_applied() {
        let steps = vec![
            (10, vec![deployed("web", 3, 5), deleted("web", 8)]),
            (20, vec![table(2, 7, &[], &[])]),
        ];
        let found = run(&mut DeployChecker::default(), &steps, 30, &End::default());
        assert_one(
            &found,
            NAME,
            20,
            &["node 2", "applied index 7", "no such app"],
        );
    }

    #[test]
    fn ack_no_table_ever_reached() {
        let steps = vec![
            (10, vec![deployed("web", 1, 12)]),
            (20, vec![table(1, 11, &[], &[])]),
        ];
        let found = run(&mut DeployChecker::default(), &steps, 30, &End::default());
        assert_one(
            &found,
            NAME,
            30,
            &[
                "never applied anywhere",
                "index 12",
                "highest applied index any table reported is 11",
            ],
        );
    }

    #[test]
    fn ack_with_no_table_after_it_is_not_judged_at_the_end() {
        let steps = vec![
            (10, vec![table(1, 11, &[], &[])]),
            (20, vec![deployed("web", 1, 12)]),
        ];
        let found = run(&mut DeployChecker::default(), &steps, 30, &End::default());
        assert!(found.is_empty(), "{found:#?}");
    }
}

mod cron {
    use super::*;

    const NAME: &str = "cron-once";

    fn end(ticks: &[(&str, i64)]) -> End {
        End {
            expected_ticks: ticks
                .iter()
                .map(|(job, tick)| (job.to_string(), *tick))
                .collect(),
            ..End::default()
        }
    }

    fn failed(mut record: FireRecord) -> FireRecord {
        record.failed = true;
        record
    }

    /// A retry is a second attempt of the tick, allowed once the first failed, and reported
    /// (once) when the first did not fail.
    #[test]
    fn a_retry_of_a_run_that_did_not_fail_is_reported() {
        let fires = [
            fire("backup", "r1", 60, 0, false),
            fire("backup", "r2", 60, 1, false),
        ];
        let steps = vec![
            (10, vec![table(1, 5, &[], &fires)]),
            (20, vec![table(2, 5, &[], &fires)]),
        ];
        let found = run(&mut CronChecker::default(), &steps, 30, &End::default());
        assert_one(
            &found,
            NAME,
            10,
            &[
                "run r2 of job backup tick 60, attempt 1",
                "attempt 0 did not fail",
            ],
        );
    }

    #[test]
    fn clean_trace() {
        let fires = [
            failed(fire("backup", "r1", 60, 0, false)),
            fire("backup", "r2", 60, 1, false),
            fire("backup", "m1", 60, 0, true),
            fire("backup", "m2", 60, 0, true),
        ];
        let steps = vec![
            (
                10,
                vec![accepted(1, "backup", "r1", 1), table(1, 5, &[], &fires)],
            ),
            (20, vec![table(2, 5, &[], &fires[..1])]),
            (
                30,
                vec![accepted(1, "backup", "m2", 1), table(2, 6, &[], &fires)],
            ),
        ];
        let found = run(
            &mut CronChecker::default(),
            &steps,
            40,
            &end(&[("backup", 60)]),
        );
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn two_runs_of_one_fire_in_one_table() {
        let fires = [
            fire("backup", "r1", 60, 0, false),
            fire("backup", "r2", 60, 0, false),
        ];
        let steps = vec![
            (10, vec![table(1, 5, &[], &fires)]),
            (20, vec![table(1, 6, &[], &fires)]),
        ];
        let found = run(&mut CronChecker::default(), &steps, 30, &End::default());
        assert_one(&found, NAME, 10, &["node 1", "tick 60 attempt 0", "r1, r2"]);
    }

    #[test]
    fn two_nodes_commit_different_runs_of_one_fire() {
        let steps = vec![
            (
                10,
                vec![table(1, 5, &[], &[fire("backup", "r1", 60, 0, false)])],
            ),
            (
                20,
                vec![table(2, 5, &[], &[fire("backup", "r2", 60, 0, false)])],
            ),
        ];
        let found = run(&mut CronChecker::default(), &steps, 30, &End::default());
        assert_one(
            &found,
            NAME,
            20,
            &[
                "committed twice",
                "node 2's table holds run r2",
                "node 1's held run r1",
            ],
        );
    }

    #[test]
    fn worker_ran_an_uncommitted_fire() {
        let steps = vec![
            (
                10,
                vec![table(1, 5, &[], &[fire("backup", "r1", 60, 0, false)])],
            ),
            (
                20,
                vec![
                    accepted(1, "backup", "r9", 1),
                    accepted(1, "backup", "r9", 1),
                ],
            ),
        ];
        let found = run(&mut CronChecker::default(), &steps, 30, &End::default());
        assert_one(
            &found,
            NAME,
            30,
            &["never committed", "run r9", "job backup"],
        );
    }

    #[test]
    fn due_tick_only_in_a_crashed_node_or_as_a_retry_is_missed() {
        let steps = vec![
            (
                10,
                vec![table(1, 5, &[], &[fire("backup", "r1", 60, 0, false)])],
            ),
            (
                20,
                vec![table(2, 5, &[], &[fire("backup", "r2", 60, 1, false)])],
            ),
            (30, vec![Event::Crash { node: 1 }]),
        ];
        let found = run(
            &mut CronChecker::default(),
            &steps,
            40,
            &end(&[("backup", 60)]),
        );
        assert_one(&found, NAME, 40, &["job backup tick 60 was due", "{2}"]);
    }

    #[test]
    fn due_tick_in_a_restarted_node_counts() {
        let steps = vec![
            (
                10,
                vec![table(1, 5, &[], &[fire("backup", "r1", 60, 0, false)])],
            ),
            (20, vec![Event::Crash { node: 1 }]),
            (30, vec![Event::Restart { node: 1 }]),
        ];
        let found = run(
            &mut CronChecker::default(),
            &steps,
            40,
            &end(&[("backup", 60)]),
        );
        assert!(found.is_empty(), "{found:#?}");
    }
}

mod members {
    use super::*;

    const NAME: &str = "members-converge";

    fn checker() -> MembersChecker {
        MembersChecker::new(&params())
    }

    #[test]
    fn clean_trace_through_a_crash() {
        let steps = vec![
            (
                0,
                vec![
                    members(1, &[1, 2, 3]),
                    members(2, &[1, 2, 3]),
                    members(3, &[1, 2, 3]),
                ],
            ),
            (2_000, vec![Event::Crash { node: 3 }]),
            (2_600, vec![members(1, &[1, 2])]),
            (2_900, vec![members(2, &[1, 2])]),
            (3_000, vec![]),
            (9_000, vec![]),
        ];
        let found = run(&mut checker(), &steps, 10_000, &End::default());
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn judged_only_after_converge_ms_and_once_per_epoch() {
        let steps = vec![
            (0, vec![members(1, &[1, 2]), members(2, &[1, 2])]),
            (2_000, vec![Event::Restart { node: 2 }]),
            (2_100, vec![members(1, &[1])]),
            (2_999, vec![]),
            (3_000, vec![]),
            (3_500, vec![]),
        ];
        let found = run(&mut checker(), &steps, 4_000, &End::default());
        assert_one(
            &found,
            NAME,
            3_000,
            &[
                "node 1 sees live {1}",
                "live nodes are {1, 2}",
                "missing {2}",
                "at 2000 ms",
            ],
        );
    }

    #[test]
    fn not_judged_while_a_partition_is_in_force() {
        let steps = vec![
            (0, vec![members(1, &[1, 2]), members(2, &[1, 2])]),
            (100, vec![Event::Partition { from: 1, to: 2 }]),
            (2_500, vec![members(2, &[2])]),
            (9_000, vec![Event::Heal]),
            (9_999, vec![]),
            (10_000, vec![]),
        ];
        let found = run(&mut checker(), &steps, 10_500, &End::default());
        assert_one(
            &found,
            NAME,
            10_000,
            &["node 2 sees live {2}", "missing {1}"],
        );
    }

    #[test]
    fn silent_node_judged_as_seeing_no_one() {
        let steps = vec![
            (0, vec![members(1, &[1, 2]), raft(2, 1, false, 0)]),
            (500, vec![]),
        ];
        let found = run(&mut checker(), &steps, 1_000, &End::default());
        assert_one(
            &found,
            NAME,
            1_000,
            &["node 2 sees live {}", "missing {1, 2}"],
        );
    }

    #[test]
    fn late_join_gets_converge_ms() {
        let steps = vec![
            (0, vec![members(1, &[1]), members(3, &[3])]),
            (1_000, vec![]),
            // Node 3 was already named; node 4 is new.
            (5_000, vec![members(3, &[3, 4])]),
            (5_500, vec![]),
        ];
        let found = run(&mut checker(), &steps, 6_000, &End::default());
        let nodes: Vec<&str> = found.iter().map(|found| &found.message[..6]).collect();
        assert_eq!(
            nodes,
            ["node 1", "node 3", "node 1", "node 3", "node 4"],
            "{found:#?}"
        );
        assert_eq!(
            found.iter().map(|found| found.at_ms).collect::<Vec<_>>(),
            [1_000, 1_000, 6_000, 6_000, 6_000]
        );
    }
}

mod monotonic {
    use super::*;

    const NAME: &str = "never-backwards";

    #[test]
    fn clean_trace_with_restart_and_delete() {
        let steps = vec![
            (
                10,
                vec![raft(1, 2, true, 8), table(1, 8, &[("web", 3)], &[])],
            ),
            (20, vec![Event::Crash { node: 1 }]),
            // The committed floor resets; the term and the table do not go back.
            (
                30,
                vec![
                    Event::Restart { node: 1 },
                    raft(1, 2, false, 0),
                    table(1, 8, &[("web", 3)], &[]),
                ],
            ),
            // Deleted, then redeployed from version 1.
            (40, vec![table(1, 9, &[], &[])]),
            (50, vec![table(1, 10, &[("web", 1)], &[])]),
            (55, vec![table(1, 10, &[("web", 4)], &[])]),
            // A delete and a redeploy both applied between two observations.
            (
                60,
                vec![deleted("web", 11), table(1, 12, &[("web", 1)], &[])],
            ),
        ];
        let found = run(
            &mut MonotonicChecker::default(),
            &steps,
            70,
            &End::default(),
        );
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn term_goes_back_across_restart() {
        let steps = vec![
            (10, vec![raft(1, 3, true, 5)]),
            (20, vec![Event::Crash { node: 1 }]),
            (30, vec![Event::Restart { node: 1 }, raft(1, 2, false, 0)]),
        ];
        let found = run(
            &mut MonotonicChecker::default(),
            &steps,
            40,
            &End::default(),
        );
        assert_one(
            &found,
            NAME,
            30,
            &["node 1 raft term went backwards: 3 -> 2"],
        );
    }

    #[test]
    fn committed_goes_back_without_restart() {
        let steps = vec![
            (10, vec![raft(1, 3, true, 5)]),
            (20, vec![raft(1, 3, true, 4)]),
        ];
        let found = run(
            &mut MonotonicChecker::default(),
            &steps,
            30,
            &End::default(),
        );
        assert_one(
            &found,
            NAME,
            20,
            &["node 1 raft committed index went backwards: 5 -> 4"],
        );
    }

    #[test]
    fn applied_goes_back_across_restart() {
        let steps = vec![
            (10, vec![table(2, 7, &[], &[])]),
            (20, vec![Event::Crash { node: 2 }]),
            (30, vec![Event::Restart { node: 2 }, table(2, 6, &[], &[])]),
        ];
        let found = run(
            &mut MonotonicChecker::default(),
            &steps,
            40,
            &End::default(),
        );
        assert_one(
            &found,
            NAME,
            30,
            &["node 2 table applied index went backwards: 7 -> 6"],
        );
    }

    #[test]
    fn version_goes_back_without_delete() {
        let steps = vec![
            (10, vec![table(2, 7, &[("web", 3), ("api", 1)], &[])]),
            // A delete acknowledged outside (7, 9] does not excuse it.
            (
                20,
                vec![
                    deleted("web", 12),
                    table(2, 9, &[("web", 2), ("api", 1)], &[]),
                ],
            ),
        ];
        let found = run(
            &mut MonotonicChecker::default(),
            &steps,
            30,
            &End::default(),
        );
        assert_one(
            &found,
            NAME,
            20,
            &["node 2 app web version went backwards: 3 -> 2"],
        );
    }

    #[test]
    fn a_drop_is_reported_once() {
        let steps = vec![
            (10, vec![raft(1, 3, true, 5)]),
            (20, vec![raft(1, 2, true, 5)]),
            (30, vec![raft(1, 2, true, 6)]),
        ];
        let found = run(
            &mut MonotonicChecker::default(),
            &steps,
            40,
            &End::default(),
        );
        assert_one(&found, NAME, 20, &["raft term went backwards: 3 -> 2"]);
    }
}

#[test]
fn violations_do_not_depend_on_map_order() {
    // The same broken trace twice gives the same violations, in the same order.
    let steps: Vec<Step> = vec![
        (
            0,
            vec![members(3, &[3]), members(1, &[1]), members(2, &[2])],
        ),
        (
            10,
            vec![table(
                2,
                5,
                &[("b", 1), ("a", 1)],
                &[fire("j", "x", 1, 0, false)],
            )],
        ),
        (20, vec![deployed("a", 2, 5), deployed("b", 2, 5)]),
        (30, vec![table(1, 5, &[], &[fire("j", "y", 1, 0, false)])]),
    ];
    let verdicts = || -> Vec<Violation> {
        let mut found = Vec::new();
        for mut checker in all(&params()) {
            found.extend(run(checker.as_mut(), &steps, 2_000, &End::default()));
        }
        found
    };
    let first = verdicts();
    assert_eq!(first, verdicts());
    let checkers: BTreeSet<&str> = first.iter().map(|found| found.checker).collect();
    let expected = BTreeSet::from(["acked-deploy-kept", "cron-once", "members-converge"]);
    assert_eq!(checkers, expected, "{first:#?}");
}

// ---- no-route-to-dead ----

fn routed(from: NodeId, to: NodeId) -> Event {
    Event::Routed {
        from,
        to,
        what: "job run".into(),
    }
}

fn partition(from: NodeId, to: NodeId) -> Event {
    Event::Partition { from, to }
}

/// Work may go to a crashed node until the detection bound (2 s + 1 s) has passed, to a
/// restarted node at once, and to a node that is cut off from some peers but still heard
/// through another.
#[test]
fn routes_within_the_bound_or_to_reachable_nodes_pass() {
    let mut checker = RouteChecker::new(&params());
    let steps = vec![
        (
            1,
            vec![
                raft(1, 1, true, 1),
                raft(2, 1, false, 1),
                raft(3, 1, false, 1),
            ],
        ),
        (100, vec![Event::Crash { node: 2 }]),
        (3_000, vec![routed(1, 2)]),
        (3_100, vec![routed(1, 2)]),
        (3_500, vec![Event::Restart { node: 2 }]),
        (3_600, vec![routed(1, 2)]),
        // 3 cannot reach 1 directly, but 2 still hears it and relays its heartbeat.
        (4_000, vec![partition(3, 1)]),
        (9_000, vec![routed(1, 3)]),
        // A cut-off node still reaches itself.
        (9_100, vec![partition(1, 2), partition(1, 3)]),
        (13_000, vec![routed(1, 1)]),
    ];
    let violations = run(&mut checker, &steps, 14_000, &End::default());
    assert!(violations.is_empty(), "{violations:#?}");
}

/// A route to a node crashed longer than the bound is reported, with how long it was dead.
#[test]
fn a_route_to_a_long_crashed_node_is_reported() {
    let mut checker = RouteChecker::new(&params());
    let steps = vec![
        (1, vec![raft(1, 1, true, 1), raft(2, 1, false, 1)]),
        (100, vec![Event::Crash { node: 2 }]),
        (3_200, vec![routed(1, 2)]),
    ];
    let violations = run(&mut checker, &steps, 4_000, &End::default());
    assert_one(
        &violations,
        "no-route-to-dead",
        3_200,
        &["node 1 sent a job run to node 2", "dead for 3100 ms"],
    );
}

/// A node whose every outgoing path is blocked is dead to the others from the last block
/// on; a heal ends it.
#[test]
fn a_route_to_an_isolated_node_is_reported_until_the_heal() {
    let mut checker = RouteChecker::new(&params());
    let steps = vec![
        (
            1,
            vec![
                raft(1, 1, true, 1),
                raft(2, 1, false, 1),
                raft(3, 1, false, 1),
            ],
        ),
        (1_000, vec![partition(3, 1)]),
        (2_000, vec![partition(3, 2)]),
        (4_500, vec![routed(1, 3)]),
        (5_500, vec![routed(1, 3)]),
        (6_000, vec![Event::Heal]),
        (9_000, vec![routed(1, 3)]),
    ];
    let violations = run(&mut checker, &steps, 10_000, &End::default());
    assert_one(
        &violations,
        "no-route-to-dead",
        5_500,
        &["node 1 sent a job run to node 3", "since 2000 ms"],
    );
}

/// A sender that restarted learns the cluster afresh: its bound runs from its restart.
#[test]
fn a_restarted_sender_gets_the_bound_again() {
    let mut checker = RouteChecker::new(&params());
    let steps = vec![
        (
            1,
            vec![
                raft(1, 1, true, 1),
                raft(2, 1, false, 1),
                raft(3, 1, false, 1),
            ],
        ),
        (100, vec![Event::Crash { node: 2 }]),
        (4_000, vec![Event::Crash { node: 1 }]),
        (5_000, vec![Event::Restart { node: 1 }]),
        (7_000, vec![routed(1, 2)]),
        (8_500, vec![routed(1, 2)]),
    ];
    let violations = run(&mut checker, &steps, 9_000, &End::default());
    assert_one(&violations, "no-route-to-dead", 8_500, &["since 5000 ms"]);
}

// ---- fences per worker ----

fn accepted_with(worker: NodeId, from: NodeId, run_id: &str, term: u64, index: u64) -> Event {
    Event::JobAccepted {
        worker,
        from,
        job: "tick".into(),
        run_id: run_id.into(),
        fence_term: term,
        fence_index: index,
    }
}

/// A worker never accepts a job's run with an older fence than one it accepted, until it
/// restarts (its book of fences is in memory, like the real worker's).
#[test]
fn a_worker_accepting_an_older_fence_is_reported_until_it_restarts() {
    let mut checker = LeaderChecker::default();
    let steps = vec![
        (1, vec![raft(1, 2, true, 5)]),
        (2, vec![raft(2, 3, true, 9)]),
        (10, vec![accepted_with(7, 2, "b", 3, 9)]),
        (20, vec![accepted_with(7, 1, "a", 2, 5)]),
        (30, vec![Event::Restart { node: 7 }]),
        (40, vec![accepted_with(7, 1, "a", 2, 5)]),
    ];
    let violations = run(&mut checker, &steps, 50, &End::default());
    assert_one(
        &violations,
        "one-leader-per-term",
        20,
        &["worker 7 accepted run a", "fence 2.5, older than 3.9"],
    );
}

/// A delete whose ack never came (it committed as the leader changed) excuses a table that
/// lacks the app from the request on; an acknowledged delete is judged by its index instead.
#[test]
fn an_unacknowledged_delete_excuses_a_missing_app_from_its_request_on() {
    let requested = Event::DeleteRequested { app: "web".into() };
    let lost_ack = vec![
        (
            10,
            vec![deployed("web", 2, 5), table(1, 5, &[("web", 2)], &[])],
        ),
        (20, vec![requested.clone()]),
        (30, vec![table(1, 7, &[], &[])]),
    ];
    let found = run(
        &mut DeployChecker::default(),
        &lost_ack,
        40,
        &End::default(),
    );
    assert!(found.is_empty(), "{found:#?}");

    // Missing before any delete was asked for: lost.
    let too_early = vec![
        (10, vec![deployed("web", 2, 5), table(1, 6, &[], &[])]),
        (20, vec![requested.clone()]),
    ];
    let found = run(
        &mut DeployChecker::default(),
        &too_early,
        40,
        &End::default(),
    );
    assert_one(
        &found,
        "acked-deploy-kept",
        10,
        &["no such app for app web"],
    );

    // Acknowledged at index 9: a table at 7 that lacks the app lost it.
    let acked = vec![
        (10, vec![deployed("web", 2, 5)]),
        (20, vec![requested, deleted("web", 9)]),
        (30, vec![table(1, 7, &[], &[])]),
    ];
    let found = run(&mut DeployChecker::default(), &acked, 40, &End::default());
    assert_one(&found, "acked-deploy-kept", 30, &["applied index 7"]);
}

mod coldstart {
    use super::*;

    fn sent(id: u64, app: &str) -> Event {
        Event::RequestSent {
            id,
            ingress: 1,
            app: app.into(),
        }
    }

    fn answered(id: u64, status: u16) -> Event {
        Event::Answered {
            id,
            ingress: 1,
            status,
            instance: (status == 200).then(|| "i-1".to_owned()),
        }
    }

    fn started(node: NodeId, app: &str, instance: &str) -> Event {
        Event::InstanceStarted {
            node,
            app: app.into(),
            instance: instance.into(),
        }
    }

    fn judge(events: &[(u64, Event)], cold: &[&str]) -> Vec<Violation> {
        let mut checker = ColdStartChecker::default();
        for (at, event) in events {
            assert!(checker.step(*at, std::slice::from_ref(event)).is_empty());
        }
        let end = End {
            cold_bursts: cold.iter().map(|app| app.to_string()).collect(),
            ..End::default()
        };
        checker.finish(40_000, &end)
    }

    #[test]
    fn one_start_for_a_burst_answered_in_full_passes() {
        let events = [
            (100, sent(1, "cold")),
            (100, sent(2, "cold")),
            (100, sent(3, "cold")),
            (102, started(7, "cold", "i-1")),
            (510, answered(1, 200)),
            (511, answered(2, 200)),
            (512, answered(3, 200)),
        ];
        assert_eq!(judge(&events, &["cold"]), Vec::new());
    }

    #[test]
    fn a_second_start_is_reported() {
        let events = [
            (100, sent(1, "cold")),
            (100, sent(2, "cold")),
            (102, started(7, "cold", "i-1")),
            (103, started(8, "cold", "i-2")),
            (510, answered(1, 200)),
            (511, answered(2, 200)),
        ];
        let violations = judge(&events, &["cold"]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].checker, "one-cold-start");
        assert!(violations[0].message.contains("started 2 instances"));
    }

    #[test]
    fn unanswered_or_failed_requests_are_reported() {
        let events = [
            (100, sent(1, "cold")),
            (100, sent(2, "cold")),
            (102, started(7, "cold", "i-1")),
            (510, answered(1, 503)),
        ];
        let messages: Vec<String> = judge(&events, &["cold"])
            .into_iter()
            .map(|v| v.message)
            .collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("request 1") && messages[0].contains("503"));
        assert!(messages[1].contains("request 2") && messages[1].contains("never answered"));
    }

    #[test]
    fn apps_outside_the_quiet_burst_are_not_judged() {
        // Requests during faults may start several instances and fail; only the named
        // burst is held to the invariant.
        let events = [
            (100, sent(1, "web-0")),
            (102, started(7, "web-0", "i-1")),
            (103, started(8, "web-0", "i-2")),
        ];
        assert_eq!(judge(&events, &[]), Vec::new());
    }
}
