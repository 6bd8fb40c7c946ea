//! The actor-call gate of this worker process, set by its node (see
//! `manta_node::fence`): while the node has not heard from the GCS within its
//! fence window, actor calls wait in the actor's queue instead of running, so an
//! actor the GCS may restart elsewhere never answers alongside its successor.

use std::sync::LazyLock;

use tokio::sync::watch;

static GATE: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::channel(true).0);

/// The node opened (true) or closed the gate.
pub(crate) fn set_open(open: bool) {
    GATE.send_replace(open);
}

/// True while the gate is open (a check that needs no runtime).
pub(crate) fn is_open() -> bool {
    *GATE.borrow()
}

/// Returns at once while the gate is open; else waits until it opens.
pub(crate) async fn wait_open() {
    if *GATE.borrow() {
        return;
    }
    let mut gate = GATE.subscribe();
    let _ = gate.wait_for(|open| *open).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn calls_wait_while_the_gate_is_closed() {
        set_open(false);
        let waiting = tokio::spawn(wait_open());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "held while closed");
        set_open(true);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("runs once open").unwrap();
        wait_open().await;
    }
}
