//! The one retry rule of tasks, actor calls and lineage rebuilds: a
//! [`RetryBudget`] (how many more times work may be sent again) and the pure
//! [`after_failure`] decision, so the rule is written once.
//!
//! As in Ray: system failures (the worker or its node died, an argument was lost
//! with its node) are retried while `max_retries` (tasks) or `max_task_retries`
//! (actor calls) allows; application failures (`Err`, panic) only when
//! `retry_exceptions` covers them. A retry is spent when the work is sent again,
//! never twice for one failure. -1 means for ever.

use std::collections::HashMap;
use std::time::Instant;

use manta_proto::NodeId;
use manta_proto::task::TaskFailure;

use crate::options::RetryErrors;

/// How many more times a task or call may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RetryBudget {
    /// `None`: for ever.
    left: Option<u32>,
}

impl RetryBudget {
    /// From Ray's `max_retries` / `max_task_retries`: a negative count retries for ever.
    pub(crate) fn new(max_retries: i32) -> Self {
        Self { left: u32::try_from(max_retries).ok() }
    }

    /// No retry at all.
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        Self::new(0)
    }

    /// True when no retry is left.
    #[cfg(test)]
    pub(crate) fn is_spent(&self) -> bool {
        self.left == Some(0)
    }

    /// Spends one retry; false (and nothing spent) when none is left.
    pub(crate) fn try_spend(&mut self) -> bool {
        match &mut self.left {
            None => true,
            Some(0) => false,
            Some(left) => {
                *left -= 1;
                true
            }
        }
    }

    /// The count as Ray writes it (-1: for ever).
    #[cfg(test)]
    pub(crate) fn as_max_retries(&self) -> i32 {
        self.left.map_or(-1, |left| i32::try_from(left).unwrap_or(i32::MAX))
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AttemptFailure<'a> {
    /// The worker process or its node went away while it held the work.
    WorkerLost,
    /// A stored argument was lost with its node (it can be rebuilt, then run again).
    ArgumentLost,
    /// The function returned an error or panicked.
    Application(&'a TaskFailure),
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NextStep {
    /// Send it again (one retry was spent).
    Retry,
    /// Give up: the failure is the result.
    Fail,
}

/// The rule: system failures are retried while the budget lasts; application
/// failures only when `retry_errors` covers them. Spends a retry on `Retry`.
pub(crate) fn after_failure(
    failure: AttemptFailure<'_>,
    retry_errors: &RetryErrors,
    budget: &mut RetryBudget,
) -> NextStep {
    let retriable = match failure {
        AttemptFailure::WorkerLost | AttemptFailure::ArgumentLost => true,
        AttemptFailure::Application(failure) => retry_errors.covers(failure),
    };
    if retriable && budget.try_spend() { NextStep::Retry } else { NextStep::Fail }
}

/// Nodes where a worker was lost under a task, until they answer a request sent
/// after the loss. A retry does not go to such a node meanwhile: its other workers
/// are likely dying with it, and one node's death must cost a task one attempt,
/// not one per worker the node had.
#[derive(Debug, Default)]
pub(crate) struct Suspects {
    lost_at: HashMap<NodeId, Instant>,
}

impl Suspects {
    /// A worker on `node` was lost at `at`.
    pub(crate) fn lost(&mut self, node: NodeId, at: Instant) {
        let latest = self.lost_at.entry(node).or_insert(at);
        *latest = (*latest).max(at);
    }

    /// True when no node is suspect (the common case: nothing to check).
    pub(crate) fn is_empty(&self) -> bool {
        self.lost_at.is_empty()
    }

    /// `node` answered a request sent at `sent_at`: if that was after its last loss, it is trusted again.
    pub(crate) fn answered(&mut self, node: NodeId, sent_at: Instant) {
        if self.lost_at.get(&node).is_some_and(|lost| *lost <= sent_at) {
            self.lost_at.remove(&node);
        }
    }

    /// Whether a task whose last attempt was lost on `avoid` may run on `node` now.
    pub(crate) fn may_run(&self, avoid: Option<NodeId>, node: NodeId) -> bool {
        avoid != Some(node) || !self.lost_at.contains_key(&node)
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::task::FailureKind;

    use super::*;

    fn failure(kind: FailureKind, error_type: Option<&str>) -> TaskFailure {
        TaskFailure { kind, task: "t".into(), message: "m".into(), error_type: error_type.map(str::to_string) }
    }

    #[test]
    fn a_budget_of_n_retries_exactly_n_times() {
        for max in 0..5 {
            let mut budget = RetryBudget::new(max);
            let retries = (0..10)
                .take_while(|_| {
                    after_failure(AttemptFailure::WorkerLost, &RetryErrors::None, &mut budget) == NextStep::Retry
                })
                .count();
            assert_eq!(retries, max as usize, "max_retries = {max}");
            assert!(budget.is_spent());
        }
    }

    #[test]
    fn a_negative_budget_retries_for_ever() {
        let mut budget = RetryBudget::new(-1);
        for _ in 0..10_000 {
            assert_eq!(after_failure(AttemptFailure::ArgumentLost, &RetryErrors::None, &mut budget), NextStep::Retry);
        }
        assert_eq!(budget.as_max_retries(), -1);
        assert!(!budget.is_spent());
    }

    #[test]
    fn application_failures_are_retried_only_when_covered_and_spend_the_same_budget() {
        let error = failure(FailureKind::Application, Some("my::Error"));
        let panic = failure(FailureKind::Panic, None);
        let mut budget = RetryBudget::new(2);
        assert_eq!(after_failure(AttemptFailure::Application(&error), &RetryErrors::None, &mut budget), NextStep::Fail);
        assert_eq!(budget.as_max_retries(), 2, "a failure that is not retried spends nothing");
        let typed = RetryErrors::Types(vec!["my::Error".into()]);
        assert_eq!(after_failure(AttemptFailure::Application(&panic), &typed, &mut budget), NextStep::Fail);
        assert_eq!(after_failure(AttemptFailure::Application(&error), &typed, &mut budget), NextStep::Retry);
        assert_eq!(after_failure(AttemptFailure::Application(&panic), &RetryErrors::All, &mut budget), NextStep::Retry);
        assert_eq!(after_failure(AttemptFailure::WorkerLost, &RetryErrors::All, &mut budget), NextStep::Fail);
    }

    #[test]
    fn a_spent_budget_stays_spent() {
        let mut budget = RetryBudget::none();
        assert!(!budget.try_spend());
        assert!(budget.is_spent());
        assert_eq!(budget.as_max_retries(), 0);
    }

    #[test]
    fn a_retry_avoids_the_node_it_was_lost_on_until_that_node_answers() {
        let (dying, other) = (NodeId::random(), NodeId::random());
        let mut suspects = Suspects::default();
        let before = Instant::now();
        let lost = before + std::time::Duration::from_millis(5);
        suspects.lost(dying, lost);
        assert!(!suspects.may_run(Some(dying), dying), "not back to the node it was lost on");
        assert!(suspects.may_run(Some(dying), other));
        assert!(suspects.may_run(None, dying), "a first attempt may go anywhere");
        suspects.answered(dying, before);
        assert!(!suspects.may_run(Some(dying), dying), "an answer to a request sent before the loss proves nothing");
        suspects.answered(dying, lost + std::time::Duration::from_millis(1));
        assert!(suspects.may_run(Some(dying), dying), "it answered since");
    }
}
