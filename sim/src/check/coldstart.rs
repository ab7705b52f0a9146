//! K simultaneous requests to a cold app start one instance, not K (DESIGN §8), and a quiet
//! cluster answers them all.
//!
//! The harness sends one burst of requests to an app deployed in the quiet tail, which no
//! request reached before: the same instant, several ingress nodes. Placement's cold rule
//! maps the app to one worker from every node's view, and that worker's pool single-flights
//! the start. Judged at the end, over the apps [`End::cold_bursts`] names: at most one
//! instance of each ever started, and every request of the burst was answered `200`.

use std::collections::BTreeMap;

use super::{Checker, End};
use crate::trace::{Event, NodeId, Violation};

/// See the module doc.
#[derive(Debug, Default)]
pub struct ColdStartChecker {
    /// Instances started, by app: (when, node, instance).
    started: BTreeMap<String, Vec<(u64, NodeId, String)>>,
    /// Requests sent, by id: (app, when).
    sent: BTreeMap<u64, (String, u64)>,
    /// Answers, by request id: (status, instance).
    answered: BTreeMap<u64, (u16, Option<String>)>,
}

impl Checker for ColdStartChecker {
    fn name(&self) -> &'static str {
        "one-cold-start"
    }

    fn step(&mut self, at_ms: u64, events: &[Event]) -> Vec<Violation> {
        for event in events {
            match event {
                Event::InstanceStarted {
                    node,
                    app,
                    instance,
                } => self.started.entry(app.clone()).or_default().push((
                    at_ms,
                    *node,
                    instance.clone(),
                )),
                Event::RequestSent { id, app, .. } => {
                    self.sent.insert(*id, (app.clone(), at_ms));
                }
                Event::Answered {
                    id,
                    status,
                    instance,
                    ..
                } => {
                    self.answered.insert(*id, (*status, instance.clone()));
                }
                _ => {}
            }
        }
        Vec::new()
    }

    fn finish(&mut self, at_ms: u64, end: &End) -> Vec<Violation> {
        let mut violations = Vec::new();
        let mut violation = |message: String| {
            violations.push(Violation {
                checker: "one-cold-start",
                at_ms,
                message,
            })
        };
        for app in &end.cold_bursts {
            let burst: Vec<(u64, u64)> = self
                .sent
                .iter()
                .filter(|(_, (sent_app, _))| sent_app == app)
                .map(|(id, (_, at))| (*id, *at))
                .collect();
            let started = self.started.get(app).map_or(&[][..], Vec::as_slice);
            if started.len() > 1 {
                violation(format!(
                    "{} simultaneous requests to cold app `{app}` started {} instances: {started:?}",
                    burst.len(),
                    started.len()
                ));
            }
            for (id, sent_at) in burst {
                match self.answered.get(&id) {
                    Some((200, _)) => {}
                    Some((status, _)) => violation(format!(
                        "request {id} to cold app `{app}` (sent at {sent_at} ms, quiet cluster) was answered {status}"
                    )),
                    None => violation(format!(
                        "request {id} to cold app `{app}` (sent at {sent_at} ms, quiet cluster) was never answered"
                    )),
                }
            }
        }
        violations
    }
}
