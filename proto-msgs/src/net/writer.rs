//! The writing side of an established link: a task that coalesces queued
//! frames into few socket writes, and a way for a thread outside the runtime to
//! write a frame itself while that task has nothing to do.
//!
//! A caller's thread that sends a request, or an actor's method thread that
//! answers one, would otherwise wake a runtime thread only to copy a few hundred
//! bytes into the socket. While the task waits for work with nothing queued and
//! nothing buffered, it leaves the socket in a shared slot ([`WriterQueue::try_write`]):
//! such a thread writes its frame there at once, and what the socket does not
//! take stays in the slot's buffer for the task, which a wake-up sends for.
//! Frames keep their order: a thread writes only while nothing is queued, under
//! the slot's lock. Plain TCP links only; a TLS stream's state is the task's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::connection::Backlog;
use super::peer::PeerHandle;
use crate::error::WireError;
use crate::frame::{Frame, FrameCodec, LENGTH_PREFIX_BYTES};

/// The writing half of a link's stream.
pub(crate) type LinkWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// Flush the write buffer once it holds this much, even if more frames are queued.
const FLUSH_THRESHOLD_BYTES: usize = 256 << 10;
/// A feed frame this large is written from its shared buffer, not copied.
const DIRECT_WRITE_BYTES: usize = 64 << 10;

/// What a link's writer is given: a frame, a frame encoded once for many links
/// (length prefix included), a wake-up to send the frames of the feeds now due
/// (see [`super::feed`]), or one to send what a thread left in the idle buffer.
#[derive(Debug)]
// Frames stay inline, as the queue held them before: boxing would cost every
// frame an allocation to save room only in the rarer shared variants.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outgoing {
    Frame(Frame),
    Encoded(bytes::Bytes),
    FeedsDue,
    Flush,
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Self {
        Outgoing::Frame(frame)
    }
}

/// The socket and its buffer, while the writer task waits for work.
struct Idle {
    socket: LinkWriter,
    codec: FrameCodec,
    buffer: BytesMut,
}

struct Shared {
    /// Items sent to the queue and not yet taken by the task.
    queued: AtomicUsize,
    /// `Some` while the task waits with nothing queued and nothing buffered.
    idle: Mutex<Option<Idle>>,
    /// Whether threads may write here (plain TCP).
    direct: bool,
}

/// The link's writer has stopped (the link closed): nothing more is sent.
#[derive(Debug)]
pub(crate) struct WriterGone;

/// The sending side of a link's writer (cloneable).
#[derive(Clone)]
pub(crate) struct WriterQueue {
    queue: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WriterQueue {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("WriterQueue").field("direct", &self.shared.direct).finish_non_exhaustive()
    }
}

impl WriterQueue {
    /// Whether `other` feeds the same writer (the same socket).
    pub(crate) fn same(&self, other: &WriterQueue) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Queues `item` for the writer task; `Err` once the link's writer is gone.
    pub(crate) fn send(&self, item: Outgoing) -> Result<(), WriterGone> {
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        self.queue.send(item).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            WriterGone
        })
    }

    /// Writes `frame` from this thread when it is not a runtime thread and the
    /// writer task is idle; gives it back otherwise, to be queued.
    // The frame comes back as it went in: boxing it would cost every frame an allocation.
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_write(&self, frame: Frame) -> Result<(), Frame> {
        if !self.shared.direct || tokio::runtime::Handle::try_current().is_ok() {
            return Err(frame);
        }
        let mut slot = self.shared.idle.lock().expect("writer lock");
        let Some(idle) = slot.as_mut() else { return Err(frame) };
        if self.shared.queued.load(Ordering::SeqCst) > 0 || !idle.buffer.is_empty() {
            return Err(frame);
        }
        if idle.codec.encode(&frame, &mut idle.buffer).is_err() {
            // The task reports what cannot be encoded (and fails its request).
            return Err(frame);
        }
        let mut context = Context::from_waker(std::task::Waker::noop());
        while !idle.buffer.is_empty() {
            match std::pin::Pin::new(&mut idle.socket).poll_write(&mut context, &idle.buffer) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    // The link is failing: its reader notices and closes it.
                    idle.buffer.clear();
                    return Ok(());
                }
                Poll::Ready(Ok(written)) => {
                    let _ = idle.buffer.split_to(written);
                }
                Poll::Pending => {
                    // The socket is full: the task sends the rest.
                    drop(slot);
                    let _ = self.send(Outgoing::Flush);
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// A writer for a new socket: its queue, and the task's end of it.
/// `direct`: threads may write (plain TCP).
pub(crate) fn writer(socket: LinkWriter, codec: FrameCodec, direct: bool) -> (WriterQueue, WriterTask) {
    let (queue, receiver) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared { queued: AtomicUsize::new(0), idle: Mutex::new(None), direct });
    let task = WriterTask { socket: Some(socket), codec, receiver, shared: shared.clone() };
    (WriterQueue { queue, shared }, task)
}

/// The writer task's state.
pub(crate) struct WriterTask {
    socket: Option<LinkWriter>,
    codec: FrameCodec,
    receiver: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
}

impl Drop for WriterTask {
    /// An aborted task closes the socket even while it sits in the idle slot.
    fn drop(&mut self) {
        self.shared.idle.lock().expect("writer lock").take();
    }
}

/// Writes frames from the queue until every sender is gone or the socket fails.
pub(crate) async fn write_loop(mut task: WriterTask, handle: PeerHandle, backlog: Backlog) {
    let mut buffer = BytesMut::with_capacity(8 << 10);
    let Some(mut socket) = task.socket.take() else { return };
    loop {
        // Nothing queued or buffered: threads may write while the task waits.
        *task.shared.idle.lock().expect("writer lock") =
            Some(Idle { socket, codec: task.codec.clone(), buffer: std::mem::take(&mut buffer) });
        let first = task.receiver.recv().await;
        let Some(idle) = task.shared.idle.lock().expect("writer lock").take() else { return };
        (socket, buffer) = (idle.socket, idle.buffer);
        let Some(first) = first else { break };
        let mut next = Some(first);
        while let Some(item) = next.take() {
            task.shared.queued.fetch_sub(1, Ordering::SeqCst);
            let written = match item {
                Outgoing::Frame(frame) => {
                    if matches!(frame, Frame::Reply { .. } | Frame::Pong { .. }) {
                        backlog.fetch_sub(1, Ordering::Relaxed);
                    }
                    encode_or_report(&mut task.codec, frame, &mut buffer, &handle);
                    Ok(())
                }
                Outgoing::Encoded(frame) => write_shared(&mut socket, &task.codec, &mut buffer, &handle, [frame]).await,
                Outgoing::FeedsDue => {
                    write_shared(&mut socket, &task.codec, &mut buffer, &handle, handle.feeds_due()).await
                }
                Outgoing::Flush => Ok(()),
            };
            if let Err(error) = written {
                debug!(peer = %handle.label(), %error, "write failed; the reader will notice the closed link");
                return;
            }
            if buffer.len() < FLUSH_THRESHOLD_BYTES {
                next = task.receiver.try_recv().ok();
            }
        }
        if !buffer.is_empty() {
            if let Err(error) = socket.write_all(&buffer).await {
                debug!(peer = %handle.label(), %error, "write failed; the reader will notice the closed link");
                return;
            }
            buffer.clear();
        }
    }
    if !buffer.is_empty() {
        let _ = socket.write_all(&buffer).await;
    }
    let _ = socket.shutdown().await;
}

/// Sends frames encoded once for many links, in order after what `buffer`
/// holds: small ones are copied into it, large ones written from their shared bytes.
async fn write_shared(
    socket: &mut LinkWriter,
    codec: &FrameCodec,
    buffer: &mut BytesMut,
    handle: &PeerHandle,
    frames: impl IntoIterator<Item = bytes::Bytes>,
) -> std::io::Result<()> {
    for frame in frames {
        let body = frame.len().saturating_sub(LENGTH_PREFIX_BYTES);
        if body > codec.max_frame_bytes() {
            warn!(peer = %handle.label(), body, max = codec.max_frame_bytes(), "shared frame over the link's cap; not sent");
            continue;
        }
        if frame.len() < DIRECT_WRITE_BYTES {
            buffer.extend_from_slice(&frame);
            continue;
        }
        if !buffer.is_empty() {
            socket.write_all(buffer).await?;
            buffer.clear();
        }
        socket.write_all(&frame).await?;
    }
    Ok(())
}

/// Encodes `frame`; a frame that cannot be encoded fails its request instead of the link.
fn encode_or_report(codec: &mut FrameCodec, frame: Frame, buffer: &mut BytesMut, handle: &PeerHandle) {
    let Err(error) = codec.encode(&frame, buffer) else {
        return;
    };
    warn!(peer = %handle.label(), %error, "frame not sent");
    match frame {
        Frame::Request { id, .. } => {
            handle.complete(id, Err(WireError::invalid(format!("request not sent: {error}"))));
        }
        Frame::Reply { id, .. } => {
            let notice = Frame::Reply { id, result: Err(WireError::internal(format!("reply not sent: {error}"))) };
            if let Err(error) = codec.encode(&notice, buffer) {
                warn!(peer = %handle.label(), %error, "error reply not sent either");
            }
        }
        _ => {}
    }
}
