//! Feed events, assert the actions that come out (openraft's engine-test style).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

const ADDR: &str = "10.9.0.2:3000";

fn addr() -> SocketAddr {
    ADDR.parse().unwrap()
}

/// A pool plus a clock that only moves when told.
struct Harness {
    pool: Pool,
    now: Instant,
}

impl Harness {
    fn new(config: PoolConfig) -> Self {
        Self {
            pool: Pool::new(config),
            now: Instant::now(),
        }
    }

    fn at(&mut self, after: Duration, event: Event) -> Vec<Action> {
        self.now += after;
        self.pool.handle(self.now, event)
    }

    fn on(&mut self, event: Event) -> Vec<Action> {
        self.at(Duration::ZERO, event)
    }

    /// Deploys `release` and lets its pre-created container exist.
    fn deployed(&mut self, release: u64, instance: InstanceId) -> Vec<Action> {
        assert_eq!(
            self.on(Event::Deployed { release }),
            [Action::Create { instance, release }]
        );
        self.on(Event::Created { instance })
    }

    fn phase(&self, id: InstanceId) -> Phase {
        self.pool
            .instances()
            .find(|i| i.id == id)
            .unwrap()
            .phase
            .clone()
    }
}

fn forward(request: RequestId, instance: InstanceId, waited: Option<Duration>) -> Action {
    Action::Forward {
        request,
        instance,
        addr: addr(),
        waited,
    }
}

#[test]
fn a_deploy_pre_creates_and_does_not_start() {
    let mut h = Harness::new(PoolConfig::for_test());
    assert_eq!(h.deployed(1, 1), []);
    assert_eq!(h.phase(1), Phase::Stopped);
    // Deploying the same release again changes nothing.
    assert_eq!(h.on(Event::Deployed { release: 1 }), []);
}

#[test]
fn many_requests_to_a_cold_app_start_one_instance_and_all_get_forwarded() {
    let mut h = Harness::new(PoolConfig::for_test());
    h.deployed(1, 1);
    let mut starts = 0;
    for request in 0..50 {
        for action in h.on(Event::Request { request }) {
            assert_eq!(action, Action::Start { instance: 1 });
            starts += 1;
        }
    }
    assert_eq!(starts, 1, "single flight: one start for fifty requests");
    assert_eq!(h.pool.waiting(), 50);
    let actions = h.at(
        Duration::from_millis(400),
        Event::Ready {
            instance: 1,
            addr: addr(),
        },
    );
    let expected: Vec<_> = (0..50)
        .map(|r| forward(r, 1, Some(Duration::from_millis(400))))
        .collect();
    assert_eq!(actions, expected);
    assert_eq!(h.pool.waiting(), 0);
    // Warm now: the next request goes straight through.
    assert_eq!(h.on(Event::Request { request: 99 }), [forward(99, 1, None)]);
}

#[test]
fn the_queue_is_bounded_and_has_a_deadline() {
    let mut h = Harness::new(PoolConfig {
        queue_limit: 2,
        queue_deadline: Duration::from_secs(5),
        ..PoolConfig::for_test()
    });
    h.deployed(1, 1);
    assert_eq!(
        h.on(Event::Request { request: 1 }),
        [Action::Start { instance: 1 }]
    );
    assert_eq!(
        h.at(Duration::from_secs(2), Event::Request { request: 2 }),
        []
    );
    let full = h.on(Event::Request { request: 3 });
    assert!(
        matches!(&full[..], [Action::Reject { request: 3, .. }]),
        "{full:?}"
    );
    // Request 1 has waited 5 s now; request 2 only 3 s.
    let expired = h.at(Duration::from_secs(3), Event::Tick);
    assert!(
        matches!(&expired[..], [Action::Reject { request: 1, .. }]),
        "{expired:?}"
    );
    let late = h.on(Event::Ready {
        instance: 1,
        addr: addr(),
    });
    assert_eq!(late, [forward(2, 1, Some(Duration::from_secs(3)))]);
}

#[test]
fn idle_instances_pause_then_stop_and_wake_on_demand() {
    let mut h = Harness::new(PoolConfig {
        pause_after: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(300),
        ..PoolConfig::for_test()
    });
    h.deployed(1, 1);
    h.on(Event::Request { request: 1 });
    h.on(Event::Ready {
        instance: 1,
        addr: addr(),
    });
    assert_eq!(
        h.at(Duration::from_secs(10), Event::RequestDone { instance: 1 }),
        []
    );
    assert_eq!(h.at(Duration::from_secs(29), Event::Tick), []);
    assert_eq!(
        h.at(Duration::from_secs(1), Event::Tick),
        [Action::Pause { instance: 1 }]
    );
    assert_eq!(h.on(Event::Paused { instance: 1 }), []);
    // A request to a paused instance thaws it; nothing is started.
    assert_eq!(
        h.on(Event::Request { request: 2 }),
        [Action::Unpause { instance: 1 }]
    );
    assert_eq!(
        h.at(
            Duration::from_millis(20),
            Event::Ready {
                instance: 1,
                addr: addr()
            }
        ),
        [forward(2, 1, Some(Duration::from_millis(20)))]
    );
    h.on(Event::RequestDone { instance: 1 });
    h.at(Duration::from_secs(30), Event::Tick);
    h.on(Event::Paused { instance: 1 });
    assert_eq!(
        h.at(Duration::from_secs(270), Event::Tick),
        [Action::Stop { instance: 1 }]
    );
    h.on(Event::Stopped { instance: 1 });
    // A stopped instance keeps its container: the wake is a start, not a create.
    assert_eq!(
        h.on(Event::Request { request: 3 }),
        [Action::Start { instance: 1 }]
    );
}

#[test]
fn a_request_during_a_pause_waits_for_it_then_thaws() {
    let mut h = Harness::new(PoolConfig::for_test());
    h.deployed(1, 1);
    h.on(Event::Request { request: 1 });
    h.on(Event::Ready {
        instance: 1,
        addr: addr(),
    });
    h.on(Event::RequestDone { instance: 1 });
    assert_eq!(
        h.at(Duration::from_secs(30), Event::Tick),
        [Action::Pause { instance: 1 }]
    );
    assert_eq!(h.on(Event::Request { request: 2 }), []);
    assert_eq!(
        h.on(Event::Paused { instance: 1 }),
        [Action::Unpause { instance: 1 }]
    );
}

#[test]
fn open_streams_keep_an_instance_awake() {
    let mut h = Harness::new(PoolConfig::for_test());
    h.deployed(1, 1);
    h.on(Event::Request { request: 1 });
    h.on(Event::Ready {
        instance: 1,
        addr: addr(),
    });
    h.on(Event::StreamOpened { instance: 1 });
    h.on(Event::RequestDone { instance: 1 });
    assert_eq!(h.at(Duration::from_secs(3600), Event::Tick), []);
    assert_eq!(h.on(Event::StreamClosed { instance: 1 }), []);
    assert_eq!(
        h.at(Duration::from_secs(30), Event::Tick),
        [Action::Pause { instance: 1 }]
    );
}

#[test]
fn min_instances_start_at_deploy_and_never_pause() {
    let mut h = Harness::new(PoolConfig {
        min: 1,
        ..PoolConfig::for_test()
    });
    assert_eq!(h.deployed(1, 1), [Action::Start { instance: 1 }]);
    h.on(Event::Ready {
        instance: 1,
        addr: addr(),
    });
    assert_eq!(h.at(Duration::from_secs(7200), Event::Tick), []);
    assert!(matches!(h.phase(1), Phase::Ready { .. }));
}

#[test]
fn busy_instances_scale_out_up_to_max() {
    let mut h = Harness::new(PoolConfig {
        max: 2,
        concurrency_target: 2,
        ..PoolConfig::for_test()
    });
    h.deployed(1, 1);
    h.on(Event::Request { request: 1 });
    h.on(Event::Ready {
        instance: 1,
        addr: addr(),
    });
    // Two in flight reach the target: a second instance is created, requests keep flowing.
    assert_eq!(
        h.on(Event::Request { request: 2 }),
        [
            forward(2, 1, None),
            Action::Create {
                instance: 2,
                release: 1
            }
        ]
    );
    assert_eq!(h.on(Event::Request { request: 3 }), [forward(3, 1, None)]);
    assert_eq!(
        h.on(Event::Created { instance: 2 }),
        [Action::Start { instance: 2 }]
    );
    h.on(Event::Ready {
        instance: 2,
        addr: addr(),
    });
    assert_eq!(h.on(Event::Request { request: 4 }), [forward(4, 2, None)]);
    // At max, no third instance however busy.
    for request in 5..20 {
        let actions = h.on(Event::Request { request });
        assert!(
            actions.iter().all(|a| matches!(a, Action::Forward { .. })),
            "{actions:?}"
        );
    }
}

#[test]
fn a_new_release_takes_over_without_failing_requests() {
    let mut h = Harness::new(PoolConfig::for_test());
    h.deployed(1, 1);
    h.on(Event::Request { request: 1 });
    h.on(Event::Ready {
        instance: 1,
        addr: addr(),
    });
    // Release 2 arrives while request 1 is in flight on instance 1.
    assert_eq!(
        h.on(Event::Deployed { release: 2 }),
        [Action::Create {
            instance: 2,
            release: 2
        }]
    );
    assert_eq!(
        h.on(Event::Created { instance: 2 }),
        [Action::Start { instance: 2 }]
    );
    // Until release 2 is ready, release 1 keeps serving.
    assert_eq!(h.on(Event::Request { request: 2 }), [forward(2, 1, None)]);
    assert_eq!(
        h.on(Event::Ready {
            instance: 2,
            addr: addr()
        }),
        []
    );
    // Now new requests go to release 2; release 1 drains.
    assert_eq!(h.on(Event::Request { request: 3 }), [forward(3, 2, None)]);
    assert_eq!(h.on(Event::RequestDone { instance: 1 }), []);
    assert_eq!(
        h.on(Event::RequestDone { instance: 1 }),
        [Action::Stop { instance: 1 }]
    );
    assert_eq!(
        h.on(Event::Stopped { instance: 1 }),
        [Action::Remove { instance: 1 }]
    );
    h.on(Event::Removed { instance: 1 });
    assert_eq!(h.pool.instances().map(|i| i.id).collect::<Vec<_>>(), [2]);
}

#[test]
fn an_idle_old_release_is_replaced_without_starting_anything() {
    let mut h = Harness::new(PoolConfig::for_test());
    h.deployed(1, 1);
    assert_eq!(
        h.on(Event::Deployed { release: 2 }),
        [
            Action::Create {
                instance: 2,
                release: 2
            },
            Action::Remove { instance: 1 },
        ]
    );
    assert_eq!(h.on(Event::Created { instance: 2 }), []);
}

#[test]
fn a_crashing_app_restarts_on_the_next_request_with_backoff() {
    let mut h = Harness::new(PoolConfig {
        backoff_base: Duration::from_secs(2),
        ..PoolConfig::for_test()
    });
    h.deployed(1, 1);
    h.on(Event::Request { request: 1 });
    let reason = "exited with code 1".to_owned();
    // The start fails: waiting requests are refused with the reason and a retry time.
    let refused = h.on(Event::Failed {
        instance: 1,
        reason: reason.clone(),
    });
    match &refused[..] {
        [Action::Reject {
            request: 1,
            reason: why,
            retry_after,
        }] => {
            assert!(
                !why.contains("code 1"),
                "clients get no failure detail: {why}"
            );
            assert_eq!(*retry_after, Duration::from_secs(2));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.pool.instances().next().unwrap().last_failure.as_deref(),
        Some("exited with code 1"),
        "the failure is kept for operators"
    );
    // Within the backoff: refused without a start.
    let early = h.at(Duration::from_secs(1), Event::Request { request: 2 });
    assert!(
        matches!(&early[..], [Action::Reject { request: 2, .. }]),
        "{early:?}"
    );
    // After it: started again.
    assert_eq!(
        h.at(Duration::from_secs(1), Event::Request { request: 3 }),
        [Action::Start { instance: 1 }]
    );
    // A second failure in a row doubles the delay.
    let refused = h.on(Event::Failed {
        instance: 1,
        reason,
    });
    assert!(
        matches!(&refused[..], [Action::Reject { retry_after, .. }] if *retry_after == Duration::from_secs(4)),
        "{refused:?}"
    );
    // Success resets the count.
    h.at(Duration::from_secs(4), Event::Request { request: 4 });
    h.on(Event::Ready {
        instance: 1,
        addr: addr(),
    });
    assert_eq!(h.pool.instances().next().unwrap().failures, 0);
}

#[test]
fn a_failed_create_is_retried_as_a_create() {
    let mut h = Harness::new(PoolConfig::for_test());
    h.on(Event::Deployed { release: 1 });
    h.on(Event::Failed {
        instance: 1,
        reason: "no image".into(),
    });
    assert_eq!(
        h.at(Duration::from_secs(1), Event::Request { request: 1 }),
        [Action::Create {
            instance: 1,
            release: 1
        }]
    );
    assert_eq!(
        h.on(Event::Created { instance: 1 }),
        [Action::Start { instance: 1 }]
    );
}

#[test]
fn adopted_instances_serve_without_a_create_or_start() {
    let mut h = Harness::new(PoolConfig::for_test());
    let now = h.now;
    let running = h.pool.adopt(now, 4, Phase::Ready { addr: addr() });
    // The release the adopted container runs is current: nothing to create.
    assert_eq!(h.on(Event::Deployed { release: 4 }), []);
    assert_eq!(
        h.on(Event::Request { request: 1 }),
        [forward(1, running, None)]
    );
    // It still idles like any other instance.
    h.on(Event::RequestDone { instance: running });
    assert_eq!(
        h.at(Duration::from_secs(30), Event::Tick),
        [Action::Pause { instance: running }]
    );
}

#[test]
fn an_adopted_paused_instance_thaws_on_demand() {
    let mut h = Harness::new(PoolConfig::for_test());
    let now = h.now;
    let paused = h.pool.adopt(now, 1, Phase::Paused { addr: addr() });
    assert_eq!(h.on(Event::Deployed { release: 1 }), []);
    assert_eq!(
        h.on(Event::Request { request: 1 }),
        [Action::Unpause { instance: paused }]
    );
}

#[test]
fn equally_loaded_instances_take_turns() {
    let mut h = Harness::new(PoolConfig {
        max: 3,
        ..PoolConfig::for_test()
    });
    let now = h.now;
    let ids: Vec<InstanceId> = (0..3)
        .map(|_| h.pool.adopt(now, 1, Phase::Ready { addr: addr() }))
        .collect();
    assert_eq!(h.on(Event::Deployed { release: 1 }), []);
    let send = |h: &mut Harness, request: RequestId, done: bool| {
        let actions = h.on(Event::Request { request });
        let [Action::Forward { instance, .. }] = actions[..] else {
            panic!("{actions:?}");
        };
        if done {
            h.on(Event::RequestDone { instance });
        }
        instance
    };
    // Each request finishes before the next, so all three are always tied: they take turns
    // (when ties went to the lowest id, the first took all six).
    let picks: Vec<InstanceId> = (1..=6).map(|r| send(&mut h, r, true)).collect();
    assert_eq!(picks, [ids[0], ids[1], ids[2], ids[0], ids[1], ids[2]]);
    // Fewest in flight still comes first: while the first one stays busy, the others alternate.
    assert_eq!(send(&mut h, 7, false), ids[0]);
    let picks: Vec<InstanceId> = (8..=11).map(|r| send(&mut h, r, true)).collect();
    assert_eq!(picks, [ids[1], ids[2], ids[1], ids[2]]);
}
