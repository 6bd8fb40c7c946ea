//! Loopback tests of the connection layer: calls, deadlines, cancel, auth, garbage, reconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::ErrorCode;
use crate::gcs::{KvGetReply, KvGetRequest};
use crate::message::{Reply, Request};

/// Answers KvGet with the key as the value; a key of "slow" sleeps for a second.
struct EchoService {
    connects: AtomicUsize,
}

impl Service for EchoService {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        Box::pin(async move {
            match request {
                Request::KvGet(KvGetRequest { key, .. }) => {
                    if key == "slow" {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok(Reply::KvGet(KvGetReply { value: Some(key.into_bytes().into()) }))
                }
                other => Err(WireError::invalid(format!("unexpected {}", other.name()))),
            }
        })
    }

    fn connected(&self, _peer: &PeerHandle) {
        self.connects.fetch_add(1, Ordering::SeqCst);
    }
}

fn config(token: &str) -> Arc<NetConfig> {
    let mut config = NetConfig::new(token, crate::frame::PeerRole::Test, "test");
    config.heartbeat_interval = Duration::from_millis(50);
    config.heartbeat_timeout = Duration::from_millis(1000);
    Arc::new(config)
}

async fn server(token: &str) -> (ractor::ActorRef<ListenerMsg>, String, Arc<EchoService>) {
    let listener = bind("127.0.0.1:0").await.unwrap();
    let service = Arc::new(EchoService { connects: AtomicUsize::new(0) });
    let (actor, address) = spawn_listener(listener, config(token), service.clone(), None).await.unwrap();
    (actor, address.to_string(), service)
}

fn get(key: &str) -> Request {
    Request::KvGet(KvGetRequest { namespace: String::new(), key: key.into() })
}

#[tokio::test]
async fn call_round_trip_and_remote_error() {
    let (_listener, address, _) = server("t").await;
    let peer = connect(&address, config("t"), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap();
    let reply = peer.call(get("abc"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(reply, Reply::KvGet(KvGetReply { value: Some(b"abc".to_vec().into()) }));
    let error = peer.call(Request::GetAllNodes(Default::default()), Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn deadline_is_enforced_and_link_survives() {
    let (_listener, address, _) = server("t").await;
    let peer = connect(&address, config("t"), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap();
    let error = peer.call(get("slow"), Duration::from_millis(100)).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::DeadlineExceeded);
    assert!(peer.call(get("after"), Duration::from_secs(5)).await.is_ok());
}

#[tokio::test]
async fn many_concurrent_calls_share_the_credits() {
    let (_listener, address, _) = server("t").await;
    let mut net = (*config("t")).clone();
    net.max_in_flight = 4;
    let peer = connect(&address, Arc::new(net), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap();
    let calls = (0..200).map(|index| {
        let peer = peer.clone();
        tokio::spawn(async move { peer.call(get(&index.to_string()), Duration::from_secs(10)).await })
    });
    for (index, call) in calls.enumerate() {
        let reply = call.await.unwrap().unwrap();
        assert_eq!(reply, Reply::KvGet(KvGetReply { value: Some(index.to_string().into_bytes().into()) }));
    }
}

#[tokio::test]
async fn wrong_token_is_refused_without_retry() {
    let (_listener, address, _) = server("right").await;
    let started = std::time::Instant::now();
    let error =
        connect(&address, config("wrong"), Arc::new(NoService), None, Duration::from_secs(30)).await.unwrap_err();
    assert!(matches!(error, ConnectError::AuthenticationFailed(_)), "{error}");
    assert!(error.to_string().contains("authentication failed"));
    assert!(started.elapsed() < Duration::from_secs(5), "a refusal must not be retried");
}

/// A server that records what a client sends and answers the handshake as a
/// server that does not know the token would (a Welcome with a made-up proof).
async fn impostor() -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let recorder = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buffer = bytes::BytesMut::new();
        let mut codec = crate::frame::FrameCodec::new(crate::frame::HANDSHAKE_MAX_FRAME_BYTES);
        let mut answered = 0;
        loop {
            let mut chunk = [0u8; 4096];
            let read = match tokio::time::timeout(Duration::from_secs(3), socket.read(&mut chunk)).await {
                Ok(Ok(read)) if read > 0 => read,
                _ => return seen,
            };
            seen.extend_from_slice(&chunk[..read]);
            buffer.extend_from_slice(&chunk[..read]);
            while let Ok(Some(frame)) = codec.decode(&mut buffer) {
                let answer = match (frame, answered) {
                    (crate::frame::Frame::Hello(_), 0) => crate::frame::Frame::Challenge {
                        protocol_version: crate::PROTOCOL_VERSION,
                        name: "impostor".into(),
                        nonce: vec![1; 32],
                    },
                    _ => crate::frame::Frame::Welcome {
                        protocol_version: crate::PROTOCOL_VERSION,
                        name: "impostor".into(),
                        proof: vec![0; 32],
                    },
                };
                answered += 1;
                let mut out = bytes::BytesMut::new();
                codec.encode(&answer, &mut out).unwrap();
                socket.write_all(&out).await.unwrap();
            }
        }
    });
    (address, recorder)
}

#[tokio::test]
async fn the_token_never_crosses_the_wire_and_a_server_without_it_is_refused() {
    let token = "a-cluster-token-0123456789abcdef";
    let (address, recorder) = impostor().await;
    let error = connect(&address, config(token), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(error, ConnectError::AuthenticationFailed(_)), "{error}");
    assert!(error.to_string().contains("without proving it knows the cluster token"), "{error}");
    let seen = recorder.await.unwrap();
    assert!(!seen.is_empty(), "the client spoke");
    assert!(!seen.windows(token.len()).any(|window| window == token.as_bytes()), "the token was sent");
    assert!(
        !seen.windows(8).any(|window| token.as_bytes().windows(8).any(|part| part == window)),
        "a piece of the token was sent"
    );
}

#[tokio::test]
async fn only_handshake_frames_pass_before_authentication() {
    let (_listener, address, service) = server("t").await;
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = crate::frame::Frame::Request { id: 1, budget_ms: 1000, body: get("sneaky") };
    let mut out = bytes::BytesMut::new();
    crate::frame::FrameCodec::new(crate::frame::HANDSHAKE_MAX_FRAME_BYTES).encode(&request, &mut out).unwrap();
    socket.write_all(&out).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), socket.read_to_end(&mut answer)).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("expected a Hello frame"), "{text}");
    assert_eq!(service.connects.load(Ordering::SeqCst), 0, "no link was made");
}

/// Raises this process's open-file soft limit to its hard limit (the sockets of both ends live here).
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_keep_a_correct_client_out() {
    raise_open_file_limit();
    let (_listener, address, _) = server("t").await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        match tokio::net::TcpStream::connect(&address).await {
            Ok(socket) => idle.push(socket),
            Err(error) => panic!("could not open idle socket {}: {error}", idle.len()),
        }
    }
    let started = std::time::Instant::now();
    let peer = connect(&address, config("t"), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap();
    assert!(peer.call(get("through"), Duration::from_secs(5)).await.is_ok());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "a correct client waited {took:?} behind 1,000 idle sockets");
    drop(idle);
}

#[tokio::test]
async fn unreachable_names_every_address() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = free.local_addr().unwrap().to_string();
    drop(free);
    let seeds = vec![address.clone(), "127.0.0.1:1".to_string()];
    let error =
        connect_any(&seeds, config("t"), Arc::new(NoService), None, Duration::from_millis(300)).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains(&address) && text.contains("127.0.0.1:1"), "{text}");
}

#[tokio::test]
async fn garbage_bytes_do_not_disturb_the_server() {
    let (_listener, address, _) = server("t").await;
    for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0, 0, 0, 3, 0xc1, 0xc1, 0xc1], &[0xff; 64]] {
        let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
        socket.write_all(garbage).await.unwrap();
        let mut sink = Vec::new();
        // The server answers with a refusal (or nothing) and closes.
        let _ = tokio::time::timeout(Duration::from_secs(6), socket.read_to_end(&mut sink)).await.unwrap();
    }
    let peer = connect(&address, config("t"), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap();
    assert!(peer.call(get("still fine"), Duration::from_secs(5)).await.is_ok());
}

#[tokio::test]
async fn outbound_link_reconnects_after_the_server_restarts() {
    let (listener, address, _) = server("t").await;
    let peer = connect(&address, config("t"), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap();
    assert!(peer.call(get("one"), Duration::from_secs(5)).await.is_ok());
    listener.stop_and_wait(None, None).await.unwrap();
    // Wait until the client notices, then bring a server back on the same port.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while peer.is_connected() {
        assert!(tokio::time::Instant::now() < deadline, "client never noticed the server going away");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let socket = bind(&address).await.unwrap();
    let service = Arc::new(EchoService { connects: AtomicUsize::new(0) });
    let (_again, _) = spawn_listener(socket, config("t"), service.clone(), None).await.unwrap();
    let reply = peer.call(get("two"), Duration::from_secs(10)).await.unwrap();
    assert_eq!(reply, Reply::KvGet(KvGetReply { value: Some(b"two".to_vec().into()) }));
    assert_eq!(service.connects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn closed_handle_fails_fast() {
    let (_listener, address, _) = server("t").await;
    let peer = connect(&address, config("t"), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap();
    peer.close();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !peer.is_closed() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let error = peer.call(get("x"), Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::ConnectionLost);
}

fn with_tls(config: Arc<NetConfig>, files: &tls::TlsFiles) -> Arc<NetConfig> {
    let mut config = (*config).clone();
    config.tls = Some(Arc::new(files.load().expect("test TLS files load")));
    Arc::new(config)
}

#[tokio::test]
async fn tls_links_carry_calls_and_refuse_the_wrong_ca_and_clear_text() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tls::test_ca::write(dir.path(), "cluster-");
    let stranger = tls::test_ca::write(dir.path(), "stranger-");
    let listener = bind("127.0.0.1:0").await.unwrap();
    let service = Arc::new(EchoService { connects: AtomicUsize::new(0) });
    let (_listener, address) = spawn_listener(listener, with_tls(config("t"), &cluster), service, None).await.unwrap();
    let address = address.to_string();

    let peer = connect(&address, with_tls(config("t"), &cluster), Arc::new(NoService), None, Duration::from_secs(5))
        .await
        .expect("a client with the cluster's CA connects");
    let reply = peer.call(get("over tls"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(reply, Reply::KvGet(KvGetReply { value: Some(b"over tls".to_vec().into()) }));

    let error = connect(&address, config("t"), Arc::new(NoService), None, Duration::from_secs(30)).await.unwrap_err();
    assert!(error.to_string().contains("requires TLS"), "a clear-text client is told why: {error}");

    let started = std::time::Instant::now();
    let error = connect(&address, with_tls(config("t"), &stranger), Arc::new(NoService), None, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("TLS handshake failed"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "a certificate refusal is not retried");
}

#[tokio::test]
async fn a_tls_client_is_told_a_clear_text_node_does_not_speak_tls() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::test_ca::write(dir.path(), "");
    let (_listener, address, _) = server("t").await;
    let error = connect(&address, with_tls(config("t"), &files), Arc::new(NoService), None, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("TLS handshake failed"), "{error}");
}

/// Handshakes like a real client, then hands back the raw socket halves.
async fn raw_client(address: &str, token: &str) -> super::connection::Established {
    super::handshake::dial(address, &config(token)).await.map_err(|_| "dial failed").unwrap()
}

/// Writes `count` KvGet requests for `key` as fast as the socket takes them;
/// returns how many were written before the server closed the link.
async fn flood(write: &mut super::writer::LinkWriter, key: &str, count: u64) -> u64 {
    let mut codec = crate::frame::FrameCodec::new(crate::frame::DEFAULT_MAX_FRAME_BYTES);
    let mut buffer = bytes::BytesMut::new();
    for id in 0..count {
        let frame = crate::frame::Frame::Request { id, budget_ms: 60_000, body: get(key) };
        codec.encode(&frame, &mut buffer).unwrap();
        if buffer.len() >= 64 << 10 || id + 1 == count {
            if write.write_all(&buffer).await.is_err() {
                return id;
            }
            buffer.clear();
        }
    }
    count
}

/// Reads until the server closes the link; false if it is still open after `within`.
async fn closed_within(read: &mut super::connection::LinkReader, within: Duration) -> bool {
    let mut sink = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_peer_with_too_many_requests_in_flight_is_cut_off() {
    let (_listener, address, _) = server("t").await;
    let mut link = raw_client(&address, "t").await;
    let sent = flood(&mut link.write, "slow", super::connection::MAX_INBOUND_REQUESTS as u64 + 100).await;
    assert!(sent > 0);
    assert!(closed_within(&mut link.read, Duration::from_secs(10)).await, "the server closed the link");
    // The server is unharmed: a correct client still gets answers.
    let peer = connect(&address, config("t"), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap();
    assert!(peer.call(get("after"), Duration::from_secs(5)).await.is_ok());
}

#[tokio::test]
async fn a_peer_that_never_reads_its_replies_is_cut_off() {
    let (_listener, address, _) = server("t").await;
    let link = raw_client(&address, "t").await;
    // A million requests, replies never read: the server stops reading, then closes
    // after the heartbeat timeout (1 s here) instead of queueing a million replies.
    let writing = tokio::spawn(async move {
        let mut write = link.write;
        flood(&mut write, "fast", 1_000_000).await
    });
    let sent = tokio::time::timeout(Duration::from_secs(30), writing).await.expect("the flood was stopped").unwrap();
    assert!(sent < 1_000_000, "the server stopped taking requests after {sent}");
}

/// Records the cluster-view versions that reach it; keeps the links that connect.
#[derive(Default)]
struct ViewRecorder {
    versions: std::sync::Mutex<Vec<u64>>,
    links: std::sync::Mutex<Vec<PeerHandle>>,
}

impl Service for ViewRecorder {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let name = request.name();
        Box::pin(async move { Err(WireError::invalid(format!("unexpected {name}"))) })
    }

    fn event(&self, _peer: &PeerHandle, event: crate::message::Event) {
        if let crate::message::Event::ClusterView(view) = event {
            self.versions.lock().unwrap().push(view.version);
        }
    }

    fn connected(&self, peer: &PeerHandle) {
        self.links.lock().unwrap().push(peer.clone());
    }
}

/// A feed whose state is a version; a follower behind gets one view of the latest.
struct Versions(std::sync::Mutex<u64>);

impl Feed for Versions {
    fn frames_after(&self, cursor: Option<u64>) -> (Vec<bytes::Bytes>, Option<u64>) {
        let latest = *self.0.lock().unwrap();
        if cursor == Some(latest) {
            return (Vec::new(), cursor);
        }
        (vec![view_frame(latest)], Some(latest))
    }
}

fn view_frame(version: u64) -> bytes::Bytes {
    let view = crate::gcs::ClusterViewEvent::whole(1, version, Vec::new());
    crate::frame::encode_shared(&crate::frame::Frame::Event(crate::message::Event::ClusterView(view))).unwrap()
}

#[tokio::test]
async fn a_link_follows_a_feed_to_its_latest_and_carries_shared_frames() {
    // The server side publishes (as the GCS does); the client records.
    let listener = bind("127.0.0.1:0").await.unwrap();
    let server = Arc::new(ViewRecorder::default());
    let (_listener, address) = spawn_listener(listener, config("t"), server.clone(), None).await.unwrap();
    let client = Arc::new(ViewRecorder::default());
    let _peer = connect(&address.to_string(), config("t"), client.clone(), None, Duration::from_secs(5)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let link = loop {
        if let Some(link) = server.links.lock().unwrap().first().cloned() {
            break link;
        }
        assert!(std::time::Instant::now() < deadline, "the server never saw the link");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let versions = Arc::new(Versions(std::sync::Mutex::new(0)));
    let feed = SharedFeed::new(versions.clone());
    for version in 1..=500 {
        *versions.0.lock().unwrap() = version;
        link.follow(&feed, false);
    }
    link.send_encoded(view_frame(1000)).unwrap();
    while client.versions.lock().unwrap().last() != Some(&1000) {
        assert!(std::time::Instant::now() < deadline, "the shared frame never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = client.versions.lock().unwrap().clone();
    let (views, last) = seen.split_at(seen.len() - 1);
    assert_eq!(last, [1000]);
    assert_eq!(views.last(), Some(&500), "the follower reached the latest version");
    assert!(views.windows(2).all(|pair| pair[0] < pair[1]), "versions only go forward: {views:?}");
    assert!(views.len() <= 500, "never more views than changes");
}

/// Answers KvGet from a thread of its own through an [`Answer`]: the key
/// "drop" drops the answer unsent, "late" answers after 300 ms.
struct ThreadService;

impl Service for ThreadService {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let name = request.name();
        Box::pin(async move { Err(WireError::invalid(format!("{name} should have been answered directly"))) })
    }

    fn answers_directly(&self, request: &Request) -> bool {
        matches!(request, Request::KvGet(_))
    }

    fn answer_directly(&self, _peer: &PeerHandle, request: Request, answer: Answer) {
        let Request::KvGet(KvGetRequest { key, .. }) = request else { unreachable!("only KvGet is taken") };
        std::thread::spawn(move || match key.as_str() {
            "drop" => drop(answer),
            _ => {
                if key == "late" {
                    std::thread::sleep(Duration::from_millis(300));
                }
                answer.send(Ok(Reply::KvGet(KvGetReply { value: Some(key.into_bytes().into()) })));
            }
        });
    }
}

#[tokio::test]
async fn a_service_answers_from_its_own_thread_and_a_dropped_answer_is_an_error() {
    let listener = bind("127.0.0.1:0").await.unwrap();
    let (_listener, address) = spawn_listener(listener, config("t"), Arc::new(ThreadService), None).await.unwrap();
    let peer =
        connect(&address.to_string(), config("t"), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap();
    let calls: Vec<_> = (0..200)
        .map(|index| {
            let peer = peer.clone();
            tokio::spawn(async move { peer.call(get(&format!("k{index}")), Duration::from_secs(5)).await })
        })
        .collect();
    for (index, call) in calls.into_iter().enumerate() {
        let reply = call.await.unwrap().unwrap();
        assert_eq!(reply, Reply::KvGet(KvGetReply { value: Some(format!("k{index}").into_bytes().into()) }));
    }
    let dropped = peer.call(get("drop"), Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(dropped.code(), ErrorCode::Internal);
    assert!(dropped.to_string().contains("dropped before it was answered"), "{dropped}");
    // The caller's deadline holds; the late answer, which arrives before the next
    // one, is dropped by the caller and the link carries on.
    let late = peer.call(get("late"), Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(late.code(), ErrorCode::DeadlineExceeded);
    let after = peer.call(get("late"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(after, Reply::KvGet(KvGetReply { value: Some(b"late".to_vec().into()) }));
}

#[test]
fn a_plain_thread_writes_its_request_and_a_method_thread_its_reply() {
    // Neither thread is a runtime thread: each writes its frame into the idle
    // writer's socket itself; the replies still match their requests, in order.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let peer = runtime.block_on(async {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let (listener, address) = spawn_listener(listener, config("t"), Arc::new(ThreadService), None).await.unwrap();
        std::mem::forget(listener);
        connect(&address.to_string(), config("t"), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap()
    });
    // The link comes up in the peer's actor just after `connect` returns.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while peer.send_if_up(get("up"), Duration::from_secs(5)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the link never came up");
        std::thread::yield_now();
    }
    for index in 0..300 {
        let key = format!("plain{index}");
        let pending = peer.send_if_up(get(&key), Duration::from_secs(5)).expect("the link is up").unwrap();
        let reply = runtime.block_on(pending.wait()).unwrap();
        assert_eq!(reply, Reply::KvGet(KvGetReply { value: Some(key.into_bytes().into()) }));
    }
    // A burst from the same thread: the first may be written here, the rest queued behind it.
    let burst: Vec<_> = (0..50)
        .map(|index| peer.send_if_up(get(&format!("b{index}")), Duration::from_secs(5)).unwrap().unwrap())
        .collect();
    for (index, pending) in burst.into_iter().enumerate() {
        let reply = runtime.block_on(pending.wait()).unwrap();
        assert_eq!(reply, Reply::KvGet(KvGetReply { value: Some(format!("b{index}").into_bytes().into()) }));
    }
}

/// Hands its reply to a channel.
struct ToChannel(tokio::sync::mpsc::UnboundedSender<Result<Reply, CallError>>);

impl OnReply for ToChannel {
    fn reply(self: Box<Self>, reply: Result<Reply, CallError>) {
        let _ = self.0.send(reply);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_runs_its_callback_and_a_lost_link_runs_it_with_the_loss() {
    let (listener, address, _) = server("t").await;
    let peer = connect(&address, config("t"), Arc::new(NoService), None, Duration::from_secs(5)).await.unwrap();
    let (sender, mut replies) = tokio::sync::mpsc::unbounded_channel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !peer.is_connected() {
        assert!(tokio::time::Instant::now() < deadline, "the link never came up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Sent from a plain thread, as a caller's thread sends an actor call.
    let (thread_peer, thread_sender) = (peer.clone(), sender.clone());
    let sent = std::thread::spawn(move || {
        match thread_peer.send_if_up_then(get("abc"), Duration::from_secs(5), Box::new(ToChannel(thread_sender))) {
            Ok(()) => "sent".to_string(),
            Err(Unsent::NotUp(_)) => "not up".to_string(),
            Err(Unsent::Lost(error, _)) => error.to_string(),
        }
    });
    assert_eq!(sent.join().unwrap(), "sent");
    let reply = tokio::time::timeout(Duration::from_secs(5), replies.recv()).await.unwrap().unwrap();
    assert_eq!(reply.unwrap(), Reply::KvGet(KvGetReply { value: Some(b"abc".to_vec().into()) }));
    // In flight when the server goes away: the callback hears of the loss.
    assert!(peer.send_then(get("slow"), Duration::from_secs(30), Box::new(ToChannel(sender.clone()))).await);
    listener.stop_and_wait(None, None).await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(10), replies.recv()).await.unwrap().unwrap();
    assert_eq!(lost.unwrap_err().code(), ErrorCode::ConnectionLost);
    // A closed link sends nothing and gives the callback back, uncalled.
    peer.close();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !peer.is_closed() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let unsent = peer.send_if_up_then(get("x"), Duration::from_secs(5), Box::new(ToChannel(sender)));
    assert!(matches!(unsent, Err(Unsent::NotUp(_))));
    assert!(replies.try_recv().is_err());
}
