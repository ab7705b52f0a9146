use std::collections::{BTreeMap, BTreeSet};

use super::{plan, Action};
use crate::cluster::orchestrator::Fence;
use crate::cron::Schedule;
use crate::runs::{Fire, RunEnd, RunState};
use crate::state::{deploy_cron_for_test, AppTable, Command};

const FENCE: Fence = Fence { term: 3, index: 40 };
/// 2026-11-24T19:00:00Z, a whole minute.
const T0: u64 = 1_795_287_600_000;

/// A table holding one cron job created at [`T0`] with `settings` added to its manifest.
fn job(settings: &str) -> (AppTable, Schedule) {
    job_on("* * * * *", settings)
}

/// [`job`] with another schedule.
fn job_on(schedule: &str, settings: &str) -> (AppTable, Schedule) {
    let mut table = AppTable::default();
    table.apply(1, &deploy_cron_for_test("job", schedule, settings, T0));
    (table, Schedule::parse(schedule, None).unwrap())
}

fn fire_of(actions: &[Action]) -> Vec<&Fire> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Fire(fire) => Some(fire),
            _ => None,
        })
        .collect()
}

fn apply_fires(table: &mut AppTable, actions: &[Action], index: &mut u64) {
    for fire in fire_of(actions) {
        *index += 1;
        table.apply(
            *index,
            &Command::Fire {
                job: "job".into(),
                fire: fire.clone(),
            },
        );
    }
}

#[test]
fn a_due_tick_fires_then_is_dispatched_and_never_fires_again() {
    let (mut table, schedule) = job("");
    let dead = BTreeSet::new();
    let none = BTreeMap::new();
    let app = table.get("job").unwrap().clone();
    let first = plan(&app, &schedule, FENCE, T0 + 30_000, &dead, &none);
    assert_eq!(
        fire_of(&first)[0].tick,
        (T0 / 1000) as i64,
        "the job was created on a tick: that tick is due"
    );
    let actions = plan(&app, &schedule, FENCE, T0 + 60_500, &dead, &none);
    let fires = fire_of(&actions);
    assert_eq!(fires.len(), 1);
    assert_eq!(fires[0].tick, (T0 / 1000 + 60) as i64);
    assert_eq!(fires[0].fence, FENCE);
    assert!(fires[0].skip.is_none());
    let mut index = 1;
    apply_fires(&mut table, &actions, &mut index);
    let app = table.get("job").unwrap().clone();
    let again = plan(&app, &schedule, FENCE, T0 + 61_000, &dead, &none);
    assert!(fire_of(&again).is_empty(), "the tick is settled: {again:?}");
    assert_eq!(
        again,
        vec![Action::Dispatch {
            run_id: (T0 / 1000 + 60).to_string(),
            release: 1
        }],
        "a pending run this duty never sent goes out (a new leader sends the old one's)"
    );
    let sent = BTreeMap::from([((T0 / 1000 + 60).to_string(), T0 + 61_000)]);
    assert!(plan(&app, &schedule, FENCE, T0 + 62_000, &dead, &sent).is_empty());
    assert_eq!(
        plan(&app, &schedule, FENCE, T0 + 72_000, &dead, &sent).len(),
        1,
        "sent again once it has waited too long"
    );
}

#[test]
fn after_an_outage_only_the_latest_tick_fires() {
    let (table, schedule) = job("");
    let app = table.get("job").unwrap().clone();
    let actions = plan(
        &app,
        &schedule,
        FENCE,
        T0 + 600_000,
        &BTreeSet::new(),
        &BTreeMap::new(),
    );
    let fires = fire_of(&actions);
    assert_eq!(fires.len(), 1);
    assert_eq!(fires[0].tick, (T0 / 1000 + 600) as i64);
    let (table, schedule) = job_on("0 * * * *", "catch_up = \"none\"\n");
    let app = table.get("job").unwrap().clone();
    let actions = plan(
        &app,
        &schedule,
        FENCE,
        T0 + 3_600_000 + 90_000,
        &BTreeSet::new(),
        &BTreeMap::new(),
    );
    let fires = fire_of(&actions);
    assert_eq!(fires.len(), 1, "{actions:?}");
    assert!(
        fires[0].skip.is_some(),
        "late under catch_up = none: recorded as skipped"
    );
}

fn running(table: &mut AppTable, worker: u64, index: &mut u64) -> String {
    let app = table.get("job").unwrap().clone();
    let (_, schedule) = job("");
    let actions = plan(
        &app,
        &schedule,
        FENCE,
        T0 + 60_500,
        &BTreeSet::new(),
        &BTreeMap::new(),
    );
    apply_fires(table, &actions, index);
    let run_id = (T0 / 1000 + 60).to_string();
    *index += 1;
    table.apply(
        *index,
        &Command::RunStarted {
            job: "job".into(),
            run_id: run_id.clone(),
            worker,
            at_ms: T0 + 61_000,
        },
    );
    run_id
}

#[test]
fn overlap_policies_decide_what_a_tick_does_while_a_run_goes_on() {
    for (setting, expect) in [("forbid", "skip"), ("allow", "run"), ("replace", "replace")] {
        let (mut table, schedule) = job(&format!("overlap = \"{setting}\"\n"));
        let mut index = 1;
        let run_id = running(&mut table, 7, &mut index);
        let app = table.get("job").unwrap().clone();
        let actions = plan(
            &app,
            &schedule,
            FENCE,
            T0 + 120_500,
            &BTreeSet::new(),
            &BTreeMap::new(),
        );
        let fires = fire_of(&actions);
        assert_eq!(fires.len(), 1, "{setting}: {actions:?}");
        assert_eq!(fires[0].skip.is_some(), expect == "skip", "{setting}");
        let replaced = actions.iter().any(|action| {
            matches!(action, Action::End { run_id: id, state: RunState::Replaced, cancel_on: Some(7), .. } if *id == run_id)
        });
        assert_eq!(replaced, expect == "replace", "{setting}: {actions:?}");
    }
}

#[test]
fn a_run_on_a_dead_worker_is_lost_and_retried_when_allowed() {
    let (mut table, schedule) = job("retries = 2\nretry_backoff = \"5s\"\n");
    let mut index = 1;
    let run_id = running(&mut table, 7, &mut index);
    let app = table.get("job").unwrap().clone();
    let at = T0 + 70_000;
    let actions = plan(
        &app,
        &schedule,
        FENCE,
        at,
        &BTreeSet::from([7]),
        &BTreeMap::new(),
    );
    assert!(actions.iter().any(|action| matches!(
        action,
        Action::End { run_id: id, state: RunState::Lost, .. } if *id == run_id
    )));
    // Ended now: the retry waits for the backoff.
    index += 1;
    table.apply(
        index,
        &Command::RunEnded {
            job: "job".into(),
            run_id: run_id.clone(),
            end: RunEnd {
                state: RunState::Lost,
                exit_code: None,
                log_tail: String::new(),
                reason: None,
                at_ms: at,
            },
        },
    );
    let app = table.get("job").unwrap().clone();
    let early = plan(
        &app,
        &schedule,
        FENCE,
        at + 1_000,
        &BTreeSet::from([7]),
        &BTreeMap::new(),
    );
    assert!(fire_of(&early).is_empty(), "{early:?}");
    let later = plan(
        &app,
        &schedule,
        FENCE,
        at + 5_000,
        &BTreeSet::from([7]),
        &BTreeMap::new(),
    );
    let fires = fire_of(&later);
    assert_eq!(fires.len(), 1, "{later:?}");
    assert_eq!(
        (fires[0].tick, fires[0].attempt),
        ((T0 / 1000 + 60) as i64, 1)
    );
    // Without retries a lost run stays lost.
    let (mut table, schedule) = job("");
    let mut index = 1;
    running(&mut table, 7, &mut index);
    let app = table.get("job").unwrap().clone();
    let actions = plan(
        &app,
        &schedule,
        FENCE,
        T0 + 70_000,
        &BTreeSet::from([7]),
        &BTreeMap::new(),
    );
    assert!(fire_of(&actions).is_empty(), "{actions:?}");
}

#[test]
fn a_seconds_schedule_fires_every_two_seconds() {
    let (table, schedule) = job_on("*/2 * * * * *", "");
    let app = table.get("job").unwrap().clone();
    let actions = plan(
        &app,
        &schedule,
        FENCE,
        T0 + 3_100,
        &BTreeSet::new(),
        &BTreeMap::new(),
    );
    let fires = fire_of(&actions);
    assert_eq!(fires.len(), 1, "{actions:?}");
    assert_eq!(fires[0].tick, (T0 / 1000 + 2) as i64);
}

#[test]
fn a_worker_gossip_has_not_declared_dead_keeps_its_run() {
    let (mut table, schedule) = job("retries = 1\n");
    let mut index = 1;
    running(&mut table, 7, &mut index);
    let app = table.get("job").unwrap().clone();
    // A new leader whose view does not list node 7 yet: not dead, so not lost.
    let actions = plan(
        &app,
        &schedule,
        FENCE,
        T0 + 70_000,
        &BTreeSet::from([9]),
        &BTreeMap::new(),
    );
    assert!(
        !actions
            .iter()
            .any(|action| matches!(action, Action::End { .. })),
        "{actions:?}"
    );
}
