//! Feed events, assert the actions that come out.

use super::*;
use crate::fleet::clock::{MILLISECOND, SECOND};

fn config() -> PoolConfig {
    PoolConfig {
        max: 3,
        concurrency_target: 2,
        pause_after: 30 * SECOND,
        idle_timeout: 600 * SECOND,
        queue_limit: 100,
        queue_deadline: 30 * SECOND,
    }
}

fn run(pool: &mut Pool, now: Micros, event: Event) -> Vec<Action> {
    let mut actions = Vec::new();
    pool.handle(now, event, &mut actions);
    actions
}

fn starts(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::ColdStart { .. }))
        .count()
}

#[test]
fn k_simultaneous_requests_to_a_cold_app_start_one_instance() {
    let mut pool = Pool::pre_created(config(), 0);
    let mut actions = Vec::new();
    for request in 0..50 {
        pool.handle(0, Event::Request { request }, &mut actions);
    }
    assert_eq!(actions, [Action::ColdStart { instance: 0 }]);
    assert_eq!(pool.waiting(), 50);
    assert_eq!(
        pool.warm_in_flight(),
        Some(0),
        "starting is warm; waiters are not counted"
    );
    assert_eq!(pool.ready_instances(), 0);

    let up = run(&mut pool, 500 * MILLISECOND, Event::Ready { instance: 0 });
    let forwarded: Vec<RequestId> = up
        .iter()
        .filter_map(|a| match a {
            Action::Forward {
                request,
                instance: 0,
                waited: Some(waited),
            } => {
                assert_eq!(*waited, 500 * MILLISECOND);
                Some(*request)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        forwarded,
        (0..50).collect::<Vec<_>>(),
        "all, in arrival order"
    );
    // 50 in flight on one instance with a target of 2: one more instance, not 49.
    assert_eq!(starts(&up), 1, "{up:?}");
    assert_eq!(
        pool.ready_instances(),
        1,
        "the one starting does not count yet"
    );
}

#[test]
fn a_new_pool_creates_its_first_instance_and_max_caps_the_count() {
    let mut pool = Pool::new(PoolConfig { max: 1, ..config() });
    assert_eq!(
        run(&mut pool, 0, Event::Request { request: 1 }),
        [Action::ColdStart { instance: 0 }]
    );
    let up = run(&mut pool, SECOND, Event::Ready { instance: 0 });
    assert_eq!(up.len(), 1, "forward only: max is 1");
    for request in 2..10 {
        let actions = run(&mut pool, SECOND, Event::Request { request });
        assert_eq!(
            actions,
            [Action::Forward {
                request,
                instance: 0,
                waited: None
            }]
        );
    }
}

#[test]
fn scale_out_waits_for_every_ready_instance_to_reach_the_target() {
    let mut pool = Pool::new(config());
    run(&mut pool, 0, Event::Request { request: 0 });
    run(&mut pool, SECOND, Event::Ready { instance: 0 });
    // One in flight, target two: no scale-out yet.
    assert_eq!(pool.instances().len(), 1);
    let second = run(&mut pool, SECOND, Event::Request { request: 1 });
    assert_eq!(starts(&second), 1, "two in flight reach the target");
    // While that one comes up, no third start however busy the first gets.
    let third = run(&mut pool, SECOND, Event::Request { request: 2 });
    assert_eq!(starts(&third), 0);
    let up = run(&mut pool, 2 * SECOND, Event::Ready { instance: 1 });
    assert_eq!(starts(&up), 0, "instance 1 is idle");
    // Least loaded first: the new instance takes the next two.
    for request in 3..5 {
        let actions = run(&mut pool, 2 * SECOND, Event::Request { request });
        assert!(matches!(actions[0], Action::Forward { instance: 1, .. }));
    }
}

#[test]
fn a_full_queue_and_a_missed_deadline_reject() {
    let mut pool = Pool::new(PoolConfig {
        queue_limit: 2,
        ..config()
    });
    run(&mut pool, 0, Event::Request { request: 0 });
    run(&mut pool, 0, Event::Request { request: 1 });
    assert_eq!(
        run(&mut pool, 0, Event::Request { request: 2 }),
        [Action::Reject {
            request: 2,
            reason: Rejection::QueueFull
        }]
    );
    assert_eq!(pool.next_deadline(), Some(30 * SECOND));
    let late = run(&mut pool, 30 * SECOND, Event::Tick);
    assert_eq!(
        late,
        [
            Action::Reject {
                request: 0,
                reason: Rejection::Deadline
            },
            Action::Reject {
                request: 1,
                reason: Rejection::Deadline
            }
        ]
    );
}

#[test]
fn idle_instances_pause_then_stop_and_wake_cheaply() {
    let mut pool = Pool::new(config());
    run(&mut pool, 0, Event::Request { request: 0 });
    run(&mut pool, SECOND, Event::Ready { instance: 0 });
    run(&mut pool, 2 * SECOND, Event::Done { instance: 0 });
    assert_eq!(pool.next_deadline(), Some(32 * SECOND));
    assert_eq!(run(&mut pool, 31 * SECOND, Event::Tick), []);
    assert_eq!(
        run(&mut pool, 32 * SECOND, Event::Tick),
        [Action::Paused { instance: 0 }]
    );
    assert_eq!(pool.warm_in_flight(), Some(0), "paused is still warm");
    assert_eq!(pool.ready_instances(), 0, "but serves nothing until thawed");
    // A request thaws it: a wake, not a cold start.
    assert_eq!(
        run(&mut pool, 40 * SECOND, Event::Request { request: 1 }),
        [Action::Wake { instance: 0 }]
    );
    run(&mut pool, 40 * SECOND, Event::Ready { instance: 0 });
    run(&mut pool, 41 * SECOND, Event::Done { instance: 0 });
    run(&mut pool, 71 * SECOND, Event::Tick);
    assert_eq!(pool.next_deadline(), Some(641 * SECOND));
    assert_eq!(
        run(&mut pool, 641 * SECOND, Event::Tick),
        [Action::Stopped {
            instance: 0,
            was_ready: false
        }]
    );
    assert_eq!(pool.warm_in_flight(), None);
    assert_eq!(pool.instances().len(), 1, "the stopped container stays");
    assert_eq!(
        run(&mut pool, 700 * SECOND, Event::Request { request: 2 }),
        [Action::ColdStart { instance: 0 }],
        "restarting a stopped container is a cold start"
    );
}

#[test]
fn equally_loaded_instances_take_turns() {
    // Two ready instances, both idle: a request finding them equally loaded goes to the one
    // forwarded to least recently (when ties went to the lowest id, instance 0 took all four).
    let mut pool = Pool::new(config());
    run(&mut pool, 0, Event::Request { request: 0 });
    run(&mut pool, 0, Event::Request { request: 1 });
    run(&mut pool, SECOND, Event::Ready { instance: 0 });
    run(&mut pool, SECOND, Event::Ready { instance: 1 });
    run(&mut pool, 2 * SECOND, Event::Done { instance: 0 });
    run(&mut pool, 2 * SECOND, Event::Done { instance: 0 });
    let mut forwarded_to = |now: Micros, request: RequestId| match run(
        &mut pool,
        now,
        Event::Request { request },
    )[0]
    {
        Action::Forward { instance, .. } => {
            run(&mut pool, now, Event::Done { instance });
            instance
        }
        other => panic!("{other:?}"),
    };
    // Instance 0 served both waiters, instance 1 nothing yet: 1 first, then turns, even when
    // the requests come in the same microsecond.
    let picks: Vec<InstanceId> = (0..4)
        .map(|k| forwarded_to(3 * SECOND, 10 + k as RequestId))
        .collect();
    assert_eq!(picks, [1, 0, 1, 0]);
}
