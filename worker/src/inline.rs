//! Running a future's first step on the current thread, for work that is
//! almost always ready at once (a reply's results to store, a call's outcome to
//! finish): no task is spawned, and nobody is woken, unless it must wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::runtime::Handle;

/// Polls `future` once on this thread, inside `runtime`'s context when given
/// (so it may spawn and use timers from a thread outside the runtime). `Err`
/// gives it back, still pending: spawn it to finish it.
pub(crate) fn poll_here<F: Future>(
    runtime: Option<&Handle>,
    mut future: Pin<Box<F>>,
) -> Result<F::Output, Pin<Box<F>>> {
    let _entered = runtime.map(Handle::enter);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => Err(future),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_finishes_here_and_a_waiting_one_comes_back_to_be_spawned() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        assert_eq!(poll_here(None, Box::pin(async { 7 })).ok(), Some(7));
        let (sender, receiver) = tokio::sync::oneshot::channel::<u32>();
        let waiting = poll_here(Some(runtime.handle()), Box::pin(async move { receiver.await.unwrap_or(0) + 1 }));
        let Err(waiting) = waiting else { panic!("a future waiting on a channel is not ready") };
        let spawned = runtime.spawn(waiting);
        sender.send(41).expect("the receiver waits");
        assert_eq!(runtime.block_on(spawned).expect("the task ends"), 42);
    }
}
