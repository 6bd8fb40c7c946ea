//! Conformance vectors: golden frames generated from the Rust types, in
//! `proto-msgs/vectors/`. Each vector is one whole frame on the wire (length
//! prefix and msgpack body, as hex) beside the JSON of what it means (the
//! frame's serde JSON). This test decodes every vector's bytes, checks they
//! mean its JSON, and re-encodes them byte for byte; the Python package's tests
//! do the same with its own codec (`python/tests/test_conformance.py`). A change
//! to a message that breaks a vector fails here: a compatible change (see the
//! versioning rules in `docs/wire-protocol.md`) adds a vector, it never edits one.
//!
//! `MANTA_BLESS_VECTORS=1 cargo test -p manta-proto --test conformance` writes
//! vectors that are missing; it never rewrites one that exists.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use manta_proto::error::{ErrorCode, WireError};
use manta_proto::frame::{Frame, FrameCodec, Hello, PeerRole};
use manta_proto::gcs::{Channel, KvGetReply, KvGetRequest, KvPutRequest, SubscribeRequest};
use manta_proto::logs::{LogBatchEvent, SubscribeLogsRequest, WorkerLines};
use manta_proto::message::{Event, Reply, Request};
use manta_proto::net::auth::{HandshakeKey, Side, Transcript};
use manta_proto::node::{NodeInfo, NodeState, ServeCallsEvent};
use manta_proto::object::{
    CreateObjectReply, CreateObjectRequest, DriverStartedEvent, ObjectBody, PullObjectReply, PullObjectRequest,
    ReleaseObjectRequest, ReleaseReturnsEvent, ReturnObject, SealObjectRequest, StoredObject,
};
use manta_proto::package::{PutPackageReply, PutPackageRequest, UsePackageRequest};
use manta_proto::resources::{Quantity, ResourceSet};
use manta_proto::runtime_env::{PipSpec, RuntimeEnvSpec};
use manta_proto::task::*;
use manta_proto::{ActorId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use serde::{Deserialize, Serialize};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn blessing() -> bool {
    std::env::var("MANTA_BLESS_VECTORS").is_ok_and(|value| value == "1")
}

/// One vector file.
#[derive(Debug, Serialize, Deserialize)]
struct Vector {
    /// What it shows.
    about: String,
    /// The whole frame: 4-byte big-endian length, then the msgpack body.
    hex: String,
    /// The frame's meaning (its serde JSON: byte strings as arrays of numbers).
    frame: serde_json::Value,
}

fn node() -> NodeId {
    "6e6f64656e6f64656e6f64656e6f6465".parse().unwrap()
}
fn worker() -> WorkerId {
    "776f726b776f726b776f726b776f726b".parse().unwrap()
}
fn task() -> TaskId {
    "7461736b7461736b7461736b7461736b".parse().unwrap()
}
fn actor() -> ActorId {
    "6163746f726163746f726163746f7221".parse().unwrap()
}
fn job() -> JobId {
    JobId::from_counter(7)
}
fn address() -> WorkerAddress {
    WorkerAddress { worker_id: worker(), address: "127.0.0.1:40001".into(), node_id: node() }
}
fn cpus(count: u64) -> ResourceSet {
    ResourceSet::new().with("CPU", Quantity::from_whole(count))
}
fn job_config() -> JobConfig {
    JobConfig {
        job_id: job(),
        namespace: "ns".into(),
        executable: "_manta_exe_0123456789abcdef0123456789abcdef".into(),
        gcs_address: "127.0.0.1:6379".into(),
    }
}
fn request(id: u64, body: Request) -> Frame {
    Frame::Request { id, budget_ms: 30_000, body }
}
fn reply(id: u64, result: Result<Reply, WireError>) -> Frame {
    Frame::Reply { id, result }
}
fn python_task() -> TaskSpec {
    TaskSpec {
        task_id: task(),
        job_id: job(),
        function: "my_module:add".into(),
        language: Language::Python,
        name: "add".into(),
        args: vec![Bytes::from_static(&[0x01]), Bytes::from_static(&[0xa2, b'h', b'i'])],
        num_returns: 1,
        actor_call: None,
        runtime_env: RuntimeEnvSpec {
            env_vars: BTreeMap::from([("counter_name".into(), "test_counter".into())]),
            ..Default::default()
        }
        .into(),
        caller: address().into(),
        stored_args: Vec::new(),
        placement_group: None,
    }
}
fn actor_info() -> ActorInfo {
    ActorInfo {
        actor_id: actor(),
        class: "my_module:Counter".into(),
        language: Language::Python,
        name: Some("counter".into()),
        namespace: "ns".into(),
        job_id: job(),
        detached: false,
        worker: address(),
        node_address: "127.0.0.1:40000".into(),
        max_task_retries: 0,
    }
}
fn failure() -> TaskFailure {
    TaskFailure {
        kind: FailureKind::Application,
        task: "add".into(),
        message: "ZeroDivisionError: division by zero".into(),
        error_type: Some("ZeroDivisionError".into()),
    }
}

type Named = (&'static str, &'static str, Frame);

/// The handshake, heartbeats and protocol notices.
fn link_vectors() -> Vec<Named> {
    let version = manta_proto::PROTOCOL_VERSION;
    let hello =
        Hello { protocol_version: version, role: PeerRole::Worker, name: "python driver".into(), nonce: vec![7u8; 32] };
    let refused = WireError::new(ErrorCode::AuthenticationFailed, "authentication failed: wrong cluster token");
    vec![
        ("hello", "handshake 1: a worker says hello", Frame::Hello(hello)),
        (
            "challenge",
            "handshake 2: the server's challenge",
            Frame::Challenge { protocol_version: version, name: "gcs".into(), nonce: vec![9u8; 32] },
        ),
        ("proof", "handshake 3: the client's proof", Frame::Proof { proof: vec![1u8; 32] }),
        (
            "welcome",
            "handshake 4: accepted, with the server's proof",
            Frame::Welcome { protocol_version: version, name: "gcs".into(), proof: vec![2u8; 32] },
        ),
        ("rejected", "handshake refused", Frame::Rejected(refused)),
        ("ping", "heartbeat", Frame::Ping { nonce: 42 }),
        ("pong", "heartbeat answer", Frame::Pong { nonce: 42 }),
        ("cancel", "the caller gave up on request 5", Frame::Cancel { id: 5 }),
        ("error", "a protocol error before closing", Frame::Error(WireError::invalid("malformed frame"))),
        ("ack", "a reply with nothing to return", reply(2, Ok(Reply::Ack))),
        ("error_reply", "a failed request", reply(3, Err(WireError::new(ErrorCode::NotFound, "no such job")))),
    ]
}

/// What a driver asks the GCS.
fn gcs_vectors() -> Vec<Named> {
    let register =
        RegisterJobRequest { namespace: String::new(), driver_pid: 4242, reattach: None, submission_id: None };
    let python_job = JobRuntimeEnvEvent { job_id: job(), executable: String::new(), runtime_env: Default::default() };
    let head = NodeInfo {
        node_id: node(),
        address: "127.0.0.1:40000".into(),
        state: NodeState::Alive,
        death_reason: None,
        is_head: true,
        pid: 100,
        resources_total: cpus(2).with("GPU", Quantity::from_whole(2)),
        resources_available: cpus(2),
        labels: BTreeMap::new(),
        start_time_ms: 1_700_000_000_000,
        end_time_ms: None,
        pending_demand: Vec::new(),
        metrics_address: None,
    };
    let pickled = Bytes::from_static(b"\x80\x05N.");
    let kv_key = || ("manta.functions".to_string(), "07/0f1e2d3c".to_string());
    let package = "_manta_pkg_0123456789abcdef0123456789abcdef.zip";
    vec![
        ("register_job", "GCS: a driver starts a job", request(1, Request::RegisterJob(register))),
        (
            "register_job_reply",
            "its reply",
            reply(1, Ok(Reply::RegisterJob(RegisterJobReply { job_id: job(), namespace: "ns".into() }))),
        ),
        (
            "set_job_runtime_env",
            "GCS: a Python job with no Rust program",
            request(2, Request::SetJobRuntimeEnv(SetJobRuntimeEnvRequest { job_id: job(), env: python_job })),
        ),
        (
            "finish_job",
            "GCS: a driver ends its job",
            request(4, Request::FinishJob(FinishJobRequest { job_id: job() })),
        ),
        (
            "get_all_nodes",
            "GCS: the node table",
            request(5, Request::GetAllNodes(manta_proto::gcs::GetAllNodesRequest {})),
        ),
        (
            "get_all_nodes_reply",
            "one alive head node",
            reply(5, Ok(Reply::GetAllNodes(manta_proto::gcs::GetAllNodesReply { nodes: vec![head] }))),
        ),
        (
            "kv_put",
            "GCS: store a pickled Python function",
            request(
                6,
                Request::KvPut(KvPutRequest {
                    namespace: kv_key().0,
                    key: kv_key().1,
                    value: pickled.clone(),
                    overwrite: false,
                }),
            ),
        ),
        (
            "kv_get",
            "GCS: read it back",
            request(7, Request::KvGet(KvGetRequest { namespace: kv_key().0, key: kv_key().1 })),
        ),
        ("kv_get_reply", "its value", reply(7, Ok(Reply::KvGet(KvGetReply { value: Some(pickled) })))),
        (
            "subscribe",
            "GCS: pubsub channels",
            request(8, Request::Subscribe(SubscribeRequest { channels: vec![Channel::NodeChanges, Channel::Jobs] })),
        ),
        (
            "register_actor",
            "GCS: record an actor and claim its name",
            request(16, Request::RegisterActor(RegisterActorRequest { info: actor_info(), restart: None })),
        ),
        (
            "register_actor_reply",
            "the name was free",
            reply(16, Ok(Reply::RegisterActor(RegisterActorReply { existing: None }))),
        ),
        (
            "get_named_actor",
            "GCS: look up a named actor",
            request(
                17,
                Request::GetNamedActor(GetNamedActorRequest { name: "counter".into(), namespace: "ns".into() }),
            ),
        ),
        (
            "get_named_actor_reply",
            "found",
            reply(17, Ok(Reply::GetNamedActor(GetNamedActorReply { info: Some(actor_info()) }))),
        ),
        (
            "unregister_actor",
            "GCS: kill an actor for good",
            request(18, Request::UnregisterActor(UnregisterActorRequest { actor_id: actor() })),
        ),
        (
            "use_package",
            "GCS: is a package stored",
            request(26, Request::UsePackage(UsePackageRequest { name: package.into(), job_id: Some(job()) })),
        ),
        (
            "put_package",
            "GCS: one chunk of an upload",
            request(
                27,
                Request::PutPackage(PutPackageRequest {
                    name: package.into(),
                    size: 3,
                    digest: "0123456789abcdef0123456789abcdef".into(),
                    offset: 0,
                    data: Bytes::from_static(b"PK!"),
                    job_id: Some(job()),
                }),
            ),
        ),
        (
            "put_package_reply",
            "the upload is whole",
            reply(27, Ok(Reply::PutPackage(PutPackageReply { complete: true }))),
        ),
    ]
}

/// Leases, tasks and actors.
fn task_vectors() -> Vec<Named> {
    let rust_task = TaskSpec {
        function: "quickstart::add#1a2b3c4d".into(),
        language: Language::Rust,
        runtime_env: Default::default(),
        ..python_task()
    };
    let actor_call = TaskSpec {
        function: "my_module:Counter".into(),
        name: "Counter.incr".into(),
        args: Vec::new(),
        actor_call: Some(ActorCall { actor_id: actor(), method: "incr".into() }),
        runtime_env: Default::default(),
        ..python_task()
    };
    let actor_spec = ActorSpec {
        actor_id: actor(),
        job_id: job(),
        class: "@07/0f1e2d3c".into(),
        language: Language::Python,
        args: vec![Bytes::from_static(&[0x00])],
        max_restarts: 1,
        max_concurrency: 1,
        name: Some("counter".into()),
        namespace: "ns".into(),
        detached: false,
        runtime_env: RuntimeEnvSpec::default(),
        owner: address(),
        restarts_used: 0,
    };
    let pip = PipSpec { packages: vec!["./wheels/tiny-1.0-py3-none-any.whl".into()], ..Default::default() };
    let lease = RequestWorkerLeaseRequest {
        strategy: SchedulingStrategy::Default,
        job: job_config(),
        resources: cpus(1),
        runtime_env: RuntimeEnvSpec { pip: Some(pip), ..Default::default() },
        actor: None,
        detached: false,
        allow_spill: true,
        placement: None,
        backlog: 3,
        language: Language::Python,
    };
    let stored = StoredObject { node_id: node(), node_address: "127.0.0.1:40000".into(), size: 1 << 20 };
    let inline =
        |byte: &'static [u8]| ReturnObject { body: ObjectBody::Inline(Bytes::from_static(byte)), nested: vec![] };
    let spill = LeaseOutcome::Reschedule { node_id: node(), node_address: "127.0.0.1:40002".into() };
    let refused = LeaseOutcome::Canceled { reason: "no node has {\"GPU\": 8.0}".into(), cause: CancelCause::Other };
    let registered = RegisterWorkerRequest { worker_id: worker(), address: "127.0.0.1:40001".into(), pid: 4243 };
    vec![
        (
            "request_worker_lease",
            "node: a Python worker with a pip env",
            request(9, Request::RequestWorkerLease(lease)),
        ),
        (
            "lease_granted",
            "a worker is reserved",
            reply(9, Ok(Reply::RequestWorkerLease(LeaseOutcome::Granted { worker: address() }))),
        ),
        ("lease_reschedule", "spillback", reply(9, Ok(Reply::RequestWorkerLease(spill)))),
        ("lease_canceled", "infeasible", reply(9, Ok(Reply::RequestWorkerLease(refused)))),
        (
            "return_worker_lease",
            "node: give the worker back",
            request(10, Request::ReturnWorkerLease(ReturnWorkerLeaseRequest { worker_id: worker() })),
        ),
        ("register_worker", "node: a worker announces itself", request(11, Request::RegisterWorker(registered))),
        ("register_worker_reply", "the node's id", reply(11, Ok(Reply::RegisterWorker(node())))),
        (
            "push_task_python",
            "worker: run a Python function by name",
            request(12, Request::PushTask(PushTaskRequest { spec: python_task() })),
        ),
        (
            "push_task_rust",
            "worker: run a Rust function by key",
            request(13, Request::PushTask(PushTaskRequest { spec: rust_task })),
        ),
        (
            "push_actor_call",
            "worker: an actor method call",
            request(14, Request::PushTask(PushTaskRequest { spec: actor_call })),
        ),
        ("task_ok", "a task's result, inline", reply(12, Ok(Reply::Task(Ok(vec![inline(&[0x03])]))))),
        (
            "task_stored",
            "a large result in the node's store",
            reply(12, Ok(Reply::Task(Ok(vec![ReturnObject { body: ObjectBody::Stored(stored), nested: vec![] }])))),
        ),
        ("task_failed", "a task that raised", reply(12, Ok(Reply::Task(Err(failure()))))),
        (
            "create_actor",
            "worker: construct an actor",
            request(15, Request::CreateActor(CreateActorRequest { spec: actor_spec })),
        ),
        (
            "kill_worker",
            "node: end a worker",
            request(19, Request::KillWorker(KillWorkerRequest { worker_id: worker(), reason: "actor killed".into() })),
        ),
        (
            "cancel_task",
            "worker: cancel a running task",
            request(
                21,
                Request::CancelTask(CancelTaskRequest {
                    task_id: task(),
                    force: true,
                    recursive: false,
                    at_executor: true,
                }),
            ),
        ),
    ]
}

/// Objects, logs and events.
fn object_vectors() -> Vec<Named> {
    let object = ObjectId::for_return(task(), 0);
    let stored = StoredObject { node_id: node(), node_address: "127.0.0.1:40000".into(), size: 1 << 20 };
    let value = GetObjectReply { value: Some(Ok(ObjectBody::Inline(Bytes::from_static(&[0x2a])))) };
    let create = CreateObjectRequest { object_id: object, size: 1 << 20, owner: worker(), job_id: job() };
    let pull =
        PullObjectRequest { object_id: object, stored: stored.clone(), owner: worker(), job_id: job(), reader: None };
    let read = PullObjectRequest { object_id: object, stored, owner: worker(), job_id: job(), reader: Some(worker()) };
    let lines = WorkerLines {
        worker_id: worker(),
        pid: 4243,
        name: "Counter".into(),
        is_err: false,
        lines: vec!["test_counter got 1".into()],
        held_back: 0,
        file: "worker-x.out".into(),
    };
    let started = DriverStartedEvent { worker_id: worker(), address: "127.0.0.1:40001".into() };
    let path = || "/tmp/manta/objects/x".to_string();
    vec![
        (
            "get_object",
            "owner: an object's value",
            request(20, Request::GetObject(GetObjectRequest { object_id: object, timeout_ms: 1000 })),
        ),
        ("get_object_reply", "the value", reply(20, Ok(Reply::GetObject(value)))),
        (
            "get_object_failed",
            "the value is a failure",
            reply(20, Ok(Reply::GetObject(GetObjectReply { value: Some(Err(failure())) }))),
        ),
        ("create_object", "node: room for a large object", request(22, Request::CreateObject(create))),
        (
            "create_object_reply",
            "the file to write",
            reply(22, Ok(Reply::CreateObject(CreateObjectReply { path: path(), offset: None }))),
        ),
        (
            "create_object_reply_arena",
            "where to write: a range of the node's arena",
            reply(22, Ok(Reply::CreateObject(CreateObjectReply { path: path(), offset: Some(1 << 20) }))),
        ),
        (
            "seal_object",
            "node: written",
            request(23, Request::SealObject(SealObjectRequest { object_id: object, ok: true })),
        ),
        ("pull_object", "node: a local copy", request(24, Request::PullObject(pull))),
        (
            "pull_object_reply",
            "where it is",
            reply(24, Ok(Reply::PullObject(PullObjectReply { path: path(), copied: true, offset: None }))),
        ),
        ("pull_object_to_read", "node: a local copy, pinned for its reader", request(24, Request::PullObject(read))),
        (
            "pull_object_reply_arena",
            "where it is: a range of the node's arena",
            reply(24, Ok(Reply::PullObject(PullObjectReply { path: path(), copied: false, offset: Some(1 << 20) }))),
        ),
        (
            "release_object",
            "node: the reader is done with the arena range",
            request(29, Request::ReleaseObject(ReleaseObjectRequest { object_id: object, reader: worker() })),
        ),
        (
            "subscribe_logs",
            "node: stream a job's worker output",
            request(25, Request::SubscribeLogs(SubscribeLogsRequest { job_id: job() })),
        ),
        (
            "flush_logs",
            "node: send the job's lines printed so far, then answer",
            request(28, Request::FlushLogs(manta_proto::logs::FlushLogsRequest { job_id: job() })),
        ),
        (
            "log_batch",
            "node to driver: worker output",
            Frame::Event(Event::LogBatch(LogBatchEvent { ip: "127.0.0.1".into(), streams: vec![lines] })),
        ),
        (
            "release_returns",
            "caller to executor: results registered",
            Frame::Event(Event::ReleaseReturns(ReleaseReturnsEvent { task_id: task() })),
        ),
        ("driver_started", "driver to its node", Frame::Event(Event::DriverStarted(started))),
        (
            "serve_calls",
            "node to its workers: the fence",
            Frame::Event(Event::ServeCalls(ServeCallsEvent { open: true })),
        ),
    ]
}

fn vectors() -> Vec<Named> {
    [link_vectors(), gcs_vectors(), task_vectors(), object_vectors()].concat()
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    FrameCodec::new(usize::MAX >> 1).encode(frame, &mut out).expect("vector frames encode");
    out.to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex")).collect()
}

#[test]
fn every_vector_decodes_to_its_meaning_and_re_encodes_byte_for_byte() {
    let dir = vectors_dir();
    let mut names = Vec::new();
    for (name, about, frame) in vectors() {
        names.push(format!("{name}.json"));
        let path = dir.join(format!("{name}.json"));
        if !path.exists() {
            assert!(
                blessing(),
                "vector {} is missing: run MANTA_BLESS_VECTORS=1 cargo test -p manta-proto --test conformance",
                path.display()
            );
            let frame_json = serde_json::to_value(&frame).unwrap();
            let vector = Vector { about: about.into(), hex: hex(&encode(&frame)), frame: frame_json };
            std::fs::write(&path, serde_json::to_string_pretty(&vector).unwrap() + "\n").unwrap();
        }
        let vector: Vector = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let bytes = unhex(&vector.hex);
        let decoded = FrameCodec::new(usize::MAX >> 1)
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap_or_else(|error| panic!("vector {name} no longer decodes: {error}"))
            .expect("a whole frame");
        let meaning: Frame = serde_json::from_value(vector.frame.clone()).unwrap();
        assert_eq!(decoded, meaning, "vector {name}: its bytes and its JSON disagree");
        assert_eq!(encode(&decoded), bytes, "vector {name}: re-encoding changed the bytes");
        assert_eq!(decoded, frame, "vector {name}: the message changed; add a new vector instead of editing this one");
    }
    // Every file in the folder is a vector this test checks.
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json") && name != "handshake.json")
        .collect();
    on_disk.sort();
    names.sort();
    assert_eq!(on_disk, names, "the vectors folder and this test's list differ");
}

/// The handshake's key and proofs for a known token and nonces (`handshake.json`).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct HandshakeVector {
    token: String,
    client_nonce: String,
    server_nonce: String,
    role: PeerRole,
    client_name: String,
    client_proof: String,
    server_proof: String,
}

#[test]
fn the_handshake_vector_holds() {
    let (client_nonce, server_nonce) = ([0x11u8; 32], [0x22u8; 32]);
    let key = HandshakeKey::from_token("s3cret-token");
    let transcript = Transcript {
        client_nonce: &client_nonce,
        server_nonce: &server_nonce,
        role: PeerRole::Worker,
        client_name: "python driver",
    };
    let expected = HandshakeVector {
        token: "s3cret-token".into(),
        client_nonce: hex(&client_nonce),
        server_nonce: hex(&server_nonce),
        role: PeerRole::Worker,
        client_name: "python driver".into(),
        client_proof: hex(&key.proof(Side::Client, &transcript)),
        server_proof: hex(&key.proof(Side::Server, &transcript)),
    };
    let path = vectors_dir().join("handshake.json");
    if !path.exists() && blessing() {
        std::fs::write(&path, serde_json::to_string_pretty(&expected).unwrap() + "\n").unwrap();
    }
    let stored: HandshakeVector = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(stored, expected, "the handshake's proofs changed: that is a protocol version bump");
}
