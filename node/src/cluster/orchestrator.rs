//! The active orchestrator: cluster-wide duties that only the raft leader performs.
//!
//! [`Leadership`] is a pure state machine: it is fed what raft reports (state, term, last log
//! index) and answers when duties must start, stamped with a [`Fence`], and when they must stop
//! (the moment leadership is lost or the term changes). The node's task around it only moves
//! messages: it spawns the duties under a cancellation token and cancels it on `Stop`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The fencing token every side effect of an orchestrator duty carries: the leader's term and
/// the log index at which it took office. A later leader's fence is always greater.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// Raft term of the leadership.
    pub term: u64,
    /// Last log index when the leadership was observed.
    pub index: u64,
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.term, self.index)
    }
}

/// What raft says about this node right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftView {
    /// Whether this node is the leader.
    pub is_leader: bool,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: u64,
}

/// What the duty runner must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Start the duties under this fence.
    Start(Fence),
    /// Stop every duty now.
    Stop(Fence),
}

/// Tracks whether this node is the active orchestrator.
#[derive(Debug, Default)]
pub struct Leadership {
    active: Option<Fence>,
}

impl Leadership {
    /// The fence of the current leadership, if this node is the active orchestrator.
    pub fn active(&self) -> Option<Fence> {
        self.active
    }

    /// Feeds one observation; returns the transitions to carry out, in order (a term change
    /// while leader is a stop and a start).
    pub fn observe(&mut self, view: RaftView) -> Vec<Transition> {
        let mut transitions = Vec::new();
        match (self.active, view.is_leader) {
            (Some(fence), true) if fence.term == view.term => {}
            (Some(fence), _) => {
                transitions.push(Transition::Stop(fence));
                self.active = None;
                if view.is_leader {
                    transitions.extend(self.observe(view));
                }
            }
            (None, true) => {
                let fence = Fence {
                    term: view.term,
                    index: view.last_log_index,
                };
                self.active = Some(fence);
                transitions.push(Transition::Start(fence));
            }
            (None, false) => {}
        }
        transitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(is_leader: bool, term: u64, index: u64) -> RaftView {
        RaftView {
            is_leader,
            term,
            last_log_index: index,
        }
    }

    #[test]
    fn duties_start_on_leadership_and_stop_when_it_is_lost() {
        let mut leadership = Leadership::default();
        assert!(leadership.observe(view(false, 1, 0)).is_empty());
        let start = Fence { term: 2, index: 5 };
        assert_eq!(
            leadership.observe(view(true, 2, 5)),
            [Transition::Start(start)]
        );
        // More entries in the same term change nothing.
        assert!(leadership.observe(view(true, 2, 9)).is_empty());
        assert_eq!(leadership.active(), Some(start));
        assert_eq!(
            leadership.observe(view(false, 3, 9)),
            [Transition::Stop(start)]
        );
        assert_eq!(leadership.active(), None);
    }

    #[test]
    fn a_new_term_while_leader_restarts_duties_with_a_greater_fence() {
        let mut leadership = Leadership::default();
        leadership.observe(view(true, 2, 5));
        let transitions = leadership.observe(view(true, 4, 7));
        assert_eq!(
            transitions,
            [
                Transition::Stop(Fence { term: 2, index: 5 }),
                Transition::Start(Fence { term: 4, index: 7 })
            ]
        );
        assert!(Fence { term: 4, index: 7 } > Fence { term: 2, index: 50 });
    }
}
