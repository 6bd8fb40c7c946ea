//! Early answers to a group's first `wait`. Creating a group sends a
//! `WaitPlacementGroup` right behind the create, on the same link, so the GCS
//! answers it as soon as the group is placed; the first `wait` then usually
//! finds its answer here instead of making a round trip of its own. Ray's
//! `wait` always asks the GCS. The answer kept here is the GCS's, given when the
//! group was placed, so it can be older than a fresh one: a group placed and then
//! removed by another process still reads as placed on its first `wait` here
//! (removing it through this process forgets the answer).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use manta_proto::PlacementGroupId;
use manta_proto::placement::PlacementGroupState;
use tokio::sync::watch;

/// How long the GCS holds an early wait before answering with the group's
/// state as it is then (a later `wait` asks again).
pub(crate) const EARLY_WAIT: Duration = Duration::from_secs(10);

/// At most this many groups' early answers are kept (a driver that creates
/// groups and never waits on them or removes them stops sending early waits).
const MAX_KEPT: usize = 10_000;

/// What the early wait learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The GCS's answer: the group's state, `None` for a group it does not know.
    State(Option<PlacementGroupState>),
    /// The call failed (link lost, deadline): ask the GCS again.
    Failed,
}

/// Early answers by group, filled by the task that awaits each early wait.
#[derive(Default)]
pub(crate) struct EarlyWaits {
    slots: Mutex<HashMap<PlacementGroupId, watch::Receiver<Option<Answer>>>>,
}

impl EarlyWaits {
    /// Makes room for `pg_id`'s answer; `None` when too many are kept already.
    pub(crate) fn open(&self, pg_id: PlacementGroupId) -> Option<watch::Sender<Option<Answer>>> {
        let mut slots = self.slots.lock().expect("early waits lock");
        if slots.len() >= MAX_KEPT {
            return None;
        }
        let (sender, receiver) = watch::channel(None);
        slots.insert(pg_id, receiver);
        Some(sender)
    }

    /// The slot of `pg_id`'s answer, if one was opened and not yet used.
    pub(crate) fn slot(&self, pg_id: &PlacementGroupId) -> Option<watch::Receiver<Option<Answer>>> {
        self.slots.lock().expect("early waits lock").get(pg_id).cloned()
    }

    /// Drops `pg_id`'s answer (used, or the group removed).
    pub(crate) fn forget(&self, pg_id: &PlacementGroupId) {
        self.slots.lock().expect("early waits lock").remove(pg_id);
    }
}

/// What `wait` does with an early answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Return this.
    Done(bool),
    /// Ask the GCS (the group was still waiting when the early wait ended, or it failed).
    Ask,
}

/// The verdict on an early answer, as `wait`'s own loop would decide on a GCS reply.
pub(crate) fn verdict(answer: Answer) -> Verdict {
    match answer {
        Answer::State(Some(PlacementGroupState::Created)) => Verdict::Done(true),
        Answer::State(Some(PlacementGroupState::Removed) | None) => Verdict::Done(false),
        Answer::State(Some(PlacementGroupState::Pending | PlacementGroupState::Rescheduling)) | Answer::Failed => {
            Verdict::Ask
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_kept_until_used_and_the_count_is_capped() {
        let waits = EarlyWaits::default();
        let id = PlacementGroupId::random();
        let sender = waits.open(id).expect("room");
        let slot = waits.slot(&id).expect("opened");
        assert_eq!(*slot.borrow(), None, "no answer yet");
        sender.send_replace(Some(Answer::State(Some(PlacementGroupState::Created))));
        assert_eq!(*slot.borrow(), Some(Answer::State(Some(PlacementGroupState::Created))));
        waits.forget(&id);
        assert!(waits.slot(&id).is_none());

        let senders: Vec<_> = (0..MAX_KEPT).map(|_| waits.open(PlacementGroupId::random())).collect();
        assert!(senders.iter().all(Option::is_some));
        assert!(waits.open(PlacementGroupId::random()).is_none(), "capped at {MAX_KEPT}");
    }

    #[test]
    fn verdicts_match_what_wait_decides_on_a_gcs_reply() {
        assert_eq!(verdict(Answer::State(Some(PlacementGroupState::Created))), Verdict::Done(true));
        assert_eq!(verdict(Answer::State(Some(PlacementGroupState::Removed))), Verdict::Done(false));
        assert_eq!(verdict(Answer::State(None)), Verdict::Done(false));
        assert_eq!(verdict(Answer::State(Some(PlacementGroupState::Pending))), Verdict::Ask);
        assert_eq!(verdict(Answer::State(Some(PlacementGroupState::Rescheduling))), Verdict::Ask);
        assert_eq!(verdict(Answer::Failed), Verdict::Ask);
    }
}
