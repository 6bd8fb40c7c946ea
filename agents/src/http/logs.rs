//! A job's driver log: `GET /api/jobs/{id}/logs` (the whole file, read from
//! the supervisor's node) and `GET /api/jobs/{id}/logs/tail` (a WebSocket of
//! text frames that follows the output as the supervisor sends it, and closes
//! once the job has ended and everything it printed was sent). The follower
//! subscribes before it reads the file, so nothing falls between the two; a gap
//! (a follower that fell behind) is filled from the file.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use manta_proto::NodeId;
use manta_proto::gcs::GetAllNodesRequest;
use manta_proto::logs::ReadLogRequest;
use manta_proto::net::PeerHandle;
use manta_proto::submission::JobSubmission;
use serde_json::json;

use super::jobs::find;
use super::{AppState, Followed};

/// Bytes per read from a node.
const READ_BYTES: u64 = 4 << 20;
/// A WebSocket client silent this long (no pong) is dropped.
const HEARTBEAT: Duration = Duration::from_secs(10);

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config.route("/jobs/{id}/logs", web::get().to(logs)).route("/jobs/{id}/logs/tail", web::get().to(tail));
}

/// A link to a node, made once.
pub(crate) async fn node_link(state: &AppState, node_id: NodeId) -> Result<PeerHandle, String> {
    let mut nodes = state.nodes.lock().await;
    if let Some(peer) = nodes.get(&node_id).filter(|peer| !peer.is_closed()) {
        return Ok(peer.clone());
    }
    let all = state.gcs.call(GetAllNodesRequest {}).await.map_err(|error| error.to_string())?;
    let node = all
        .nodes
        .into_iter()
        .find(|node| node.node_id == node_id && node.state == manta_proto::node::NodeState::Alive)
        .ok_or_else(|| format!("node {node_id} is no longer in the cluster; its logs are gone with it"))?;
    let peer = manta_proto::net::connect(
        &node.address,
        state.net.clone(),
        std::sync::Arc::new(manta_proto::net::NoService),
        None,
        Duration::from_secs(5),
    )
    .await
    .map_err(|error| format!("cannot reach node {node_id} at {}: {error}", node.address))?;
    nodes.insert(node_id, peer.clone());
    Ok(peer)
}

/// The job's log from `from` up to `until` (or its current end).
async fn read_log(state: &AppState, job: &JobSubmission, from: u64, until: Option<u64>) -> Result<Vec<u8>, String> {
    let Some(node_id) = job.driver_node_id else { return Ok(Vec::new()) };
    let peer = node_link(state, node_id).await?;
    let mut data = Vec::new();
    let mut offset = from;
    loop {
        let max_bytes = until.map_or(READ_BYTES, |until| until.saturating_sub(offset).min(READ_BYTES));
        if max_bytes == 0 {
            break;
        }
        let request = ReadLogRequest { name: job.log_file_name(), offset, max_bytes, tail_lines: None };
        let reply = match peer.rpc(request, Duration::from_secs(10)).await {
            Ok(reply) => reply,
            // Not written yet: the entrypoint has printed nothing.
            Err(manta_proto::net::CallError::Remote(error)) if error.code == manta_proto::ErrorCode::NotFound => break,
            Err(error) => return Err(error.to_string()),
        };
        if reply.data.is_empty() {
            break;
        }
        offset = reply.next_offset;
        data.extend_from_slice(&reply.data);
    }
    Ok(data)
}

async fn logs(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let job = match find(&state, &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    match read_log(&state, &job, 0, None).await {
        Ok(data) => HttpResponse::Ok().json(json!({"logs": String::from_utf8_lossy(&data)})),
        Err(error) => HttpResponse::ServiceUnavailable().body(error),
    }
}

/// Turns byte chunks into text without splitting a character across frames.
#[derive(Default)]
struct Utf8Carry(Vec<u8>);

impl Utf8Carry {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.0.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.0) {
            Ok(_) => self.0.len(),
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(_) => self.0.len(),
        };
        let rest = self.0.split_off(valid);
        let text = String::from_utf8_lossy(&self.0).into_owned();
        self.0 = rest;
        text
    }
}

/// What a follower has sent, and what it still must.
struct Follow {
    sent: u64,
    carry: Utf8Carry,
    job: JobSubmission,
}

impl Follow {
    /// True once the job ended and every byte it logged was sent (or no more can come).
    fn done(&self) -> bool {
        self.job.status.is_terminal() && self.job.log_bytes.is_none_or(|total| self.sent >= total)
    }

    /// The part of `data` (starting at `offset`) not sent yet.
    fn take(&mut self, offset: u64, data: &[u8]) -> Option<String> {
        let end = offset + data.len() as u64;
        if end <= self.sent || offset > self.sent {
            return None;
        }
        let fresh = &data[(self.sent - offset) as usize..];
        self.sent = end;
        let text = self.carry.push(fresh);
        (!text.is_empty()).then_some(text)
    }
}

async fn tail(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    let job = match find(&state, &id).await {
        Ok(job) => job,
        Err(response) => return Ok(response),
    };
    let (response, mut session, mut messages) = actix_ws::handle(&request, body)?;
    let mut followed = state.hub.follow(&job.submission_id);
    actix_web::rt::spawn(async move {
        // Read the record again now that changes are followed: nothing is missed in between.
        let job = find(&state, &job.submission_id).await.unwrap_or(job);
        let mut follow = Follow { sent: 0, carry: Utf8Carry::default(), job };
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut gap = true;
        loop {
            if gap {
                gap = false;
                let until = follow.job.log_bytes;
                if let Ok(data) = read_log(&state, &follow.job, follow.sent, until).await
                    && let Some(text) = follow.take(follow.sent, &data)
                    && session.text(text).await.is_err()
                {
                    return;
                }
            }
            if follow.done() {
                break;
            }
            tokio::select! {
                item = followed.recv() => match item {
                    Some(Followed::Log(chunk)) => {
                        if chunk.offset > follow.sent {
                            gap = true;
                            continue;
                        }
                        if let Some(text) = follow.take(chunk.offset, &chunk.data)
                            && session.text(text).await.is_err()
                        {
                            return;
                        }
                    }
                    Some(Followed::Changed(record)) => {
                        follow.job = *record;
                        gap = follow.job.status.is_terminal();
                    }
                    None => {
                        // Fell too far behind and was dropped: follow again and fill from the file.
                        followed = state.hub.follow(&follow.job.submission_id);
                        gap = true;
                    }
                },
                message = messages.recv() => match message {
                    Some(Ok(actix_ws::Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
                _ = heartbeat.tick() => {
                    if session.ping(b"").await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = session.close(Some(actix_ws::CloseCode::Normal.into())).await;
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_never_split_a_character_and_nothing_is_sent_twice() {
        let mut carry = Utf8Carry::default();
        let snowman = "☃".as_bytes();
        assert_eq!(carry.push(&snowman[..1]), "");
        assert_eq!(carry.push(&snowman[1..]), "☃");
        let job = crate::http::tests_support::job();
        let mut follow = Follow { sent: 0, carry: Utf8Carry::default(), job };
        assert_eq!(follow.take(0, b"hello ").as_deref(), Some("hello "));
        assert_eq!(follow.take(0, b"hello "), None, "already sent");
        assert_eq!(follow.take(3, b"lo world").as_deref(), Some("world"), "only the new part");
        assert_eq!(follow.take(20, b"later"), None, "a gap is filled from the file first");
        assert!(!follow.done());
        follow.job.status = manta_proto::submission::SubmissionStatus::Succeeded;
        follow.job.log_bytes = Some(11);
        assert!(follow.done());
    }
}
