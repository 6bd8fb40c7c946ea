//! The state tables' rows as JSON with Ray's state API field names, shared by
//! `/api/v0/...`, the dashboard and `manta list`, so every view names a field
//! the same way and a filter key works everywhere it is shown.

use manta_proto::node::NodeInfo;
use manta_proto::object::ObjectRecord;
use manta_proto::placement::PlacementGroupInfo;
use manta_proto::task::{ActorRecord, JobRecord, TaskRecord, TaskState};
use serde_json::{Value, json};

/// A task or actor call. `detail` adds its state history and lease outcomes.
pub fn task(task: &TaskRecord, detail: bool) -> Value {
    let time_of = |wanted: fn(TaskState) -> bool| task.history.iter().find(|(state, _)| wanted(*state)).map(|e| e.1);
    let mut row = json!({
        "task_id": task.task_id.to_string(),
        "name": task.name,
        "func_or_class_name": task.name,
        "state": task.state.as_str(),
        "type": if task.actor_id.is_some() { "ACTOR_TASK" } else { "NORMAL_TASK" },
        "job_id": task.job_id.to_string(),
        "node_id": task.node_id.map(|id| id.to_string()),
        "worker_id": task.worker_id.map(|id| id.to_string()),
        "actor_id": task.actor_id.map(|id| id.to_string()),
        "error": task.error,
        "error_message": task.error,
        "creation_time_ms": task.history.iter().map(|entry| entry.1).min(),
        "start_time_ms": time_of(|state| state == TaskState::SubmittedToWorker),
        "end_time_ms": time_of(TaskState::is_terminal),
    });
    if detail {
        row["lease_outcomes"] = json!(task.lease_outcomes);
        row["state_history"] = task
            .history
            .iter()
            .map(|(state, time)| json!({"state": state.as_str(), "time_ms": time}))
            .collect::<Vec<_>>()
            .into();
    }
    row
}

/// An actor.
pub fn actor(actor: &ActorRecord) -> Value {
    let info = &actor.info;
    json!({
        "actor_id": info.actor_id.to_string(),
        "class_name": actor.class_name(),
        "state": actor.state.as_str(),
        "name": info.name,
        "ray_namespace": info.namespace,
        "job_id": info.job_id.to_string(),
        "is_detached": info.detached,
        "node_id": info.worker.node_id.to_string(),
        "worker_id": info.worker.worker_id.to_string(),
        "address": info.worker.address,
        "death_cause": actor.death_cause,
        "num_restarts": actor.num_restarts,
    })
}

/// A placement group.
pub fn placement_group(group: &PlacementGroupInfo) -> Value {
    json!({
        "placement_group_id": group.spec.pg_id.to_string(),
        "name": group.spec.name,
        "ray_namespace": group.spec.namespace,
        "state": group.state.as_str(),
        "strategy": group.spec.strategy.as_str(),
        "creator_job_id": group.spec.job_id.to_string(),
        "is_detached": group.spec.detached,
        "bundles": group.spec.bundles.iter().map(|bundle| bundle.to_f64_map()).collect::<Vec<_>>(),
        "bundle_nodes": group.bundle_nodes.iter().map(|node| node.map(|id| id.to_string())).collect::<Vec<_>>(),
        "pending_reason": group.pending_reason,
        "create_time_ms": group.create_time_ms,
    })
}

/// A job as the GCS job table has it (one per driver).
pub fn job(job: &JobRecord) -> Value {
    json!({
        "job_id": job.job_id.to_string(),
        "state": job.state.as_str(),
        "namespace": job.namespace,
        "driver_pid": job.driver_pid,
        "start_time_ms": job.start_time_ms,
        "end_time_ms": job.end_time_ms,
        "runtime_env": job.runtime_env.as_ref().map(|env| serde_json::to_value(env).unwrap_or_default()),
    })
}

/// A node.
pub fn node(node: &NodeInfo) -> Value {
    json!({
        "node_id": node.node_id.to_string(),
        "state": node.state.as_str(),
        "address": node.address,
        "node_ip": node.address.rsplit_once(':').map(|(host, _)| host).unwrap_or(&node.address),
        "is_head": node.is_head,
        "is_head_node": node.is_head,
        "pid": node.pid,
        "resources_total": node.resources_total.to_f64_map(),
        "resources_available": node.resources_available.to_f64_map(),
        "labels": node.labels,
        "start_time_ms": node.start_time_ms,
        "end_time_ms": node.end_time_ms,
        "death_reason": node.death_reason,
        "metrics_address": node.metrics_address,
    })
}

/// An object, as an owner or a node's store lists it.
pub fn object(record: &ObjectRecord) -> Value {
    json!({
        "object_id": record.object_id.to_string(),
        "state": record.state,
        "size": record.size,
        "object_size": record.size,
        "node_id": record.node_id.to_string(),
        "owner_worker_id": record.owner.as_ref().map(|owner| owner.worker_id.to_string()),
        "owner_address": record.owner.as_ref().map(|owner| owner.address.clone()),
        "pid": record.pid,
        "local_refs": record.local_refs,
        "borrowers": record.borrowers,
        "location": record.location,
        "job_id": record.job_id.map(|job| job.to_string()),
    })
}

/// Objects: each alive node's store copies and owner processes, then each
/// owner's own rows (gathered on demand; the GCS keeps no objects). Returns the
/// rows and a note per node or owner that did not answer.
pub async fn gather_objects<F, Fut>(nodes: &[NodeInfo], limit: usize, connect: F) -> (Vec<Value>, Vec<String>)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<manta_proto::net::PeerHandle, String>>,
{
    let request = manta_proto::object::ListObjectsRequest { limit };
    let timeout = std::time::Duration::from_secs(10);
    let (mut rows, mut owners, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    for node in nodes.iter().filter(|node| node.state == manta_proto::node::NodeState::Alive) {
        let reply = match connect(node.address.clone()).await {
            Ok(peer) => peer.rpc(request.clone(), timeout).await.map_err(|error| error.to_string()),
            Err(error) => Err(error),
        };
        match reply {
            Ok(reply) => {
                rows.extend(reply.objects.iter().map(object));
                owners.extend(reply.owners);
            }
            Err(error) => notes.push(format!("node {} did not list its objects: {error}", node.node_id)),
        }
    }
    for owner in owners {
        // An owner may exit meanwhile; its objects went with it.
        let Ok(peer) = connect(owner).await else { continue };
        if let Ok(reply) = peer.rpc(request.clone(), timeout).await {
            rows.extend(reply.objects.iter().map(object));
        }
    }
    (rows, notes)
}

/// True when every filter passes on the row's field, compared as text (for
/// the small tables filtered as JSON: nodes, objects, submitted jobs).
pub fn passes(row: &Value, filters: &[manta_proto::query::StateFilter]) -> bool {
    filters.iter().all(|filter| {
        let text = match &row[&filter.key] {
            Value::Null => None,
            Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        };
        filter.passes(text.as_deref())
    })
}

#[cfg(test)]
mod tests {
    use manta_proto::query::StateFilter;

    use super::*;

    #[test]
    fn json_filters_compare_as_text() {
        let row = json!({"state": "ALIVE", "pid": 7, "name": null});
        let filter = |text| vec![StateFilter::parse(text).unwrap()];
        assert!(passes(&row, &filter("state=alive")));
        assert!(passes(&row, &filter("pid=7")));
        assert!(passes(&row, &filter("name=null")));
        assert!(passes(&row, &filter("state!=DEAD")));
        assert!(!passes(&row, &filter("pid!=7")));
    }
}
