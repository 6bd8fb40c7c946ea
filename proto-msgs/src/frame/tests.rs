use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::gcs::{KvPutRequest, RegisterNodeRequest};
use crate::ids::NodeId;
use crate::resources::{Quantity, ResourceSet};

fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            role: PeerRole::Node,
            name: "node a".into(),
            nonce: vec![7; 32],
        }),
        Frame::Request {
            id: 7,
            budget_ms: 1500,
            body: Request::RegisterNode(RegisterNodeRequest {
                node_id: "00112233445566778899aabbccddeeff".parse::<NodeId>().unwrap(),
                address: "127.0.0.1:1".into(),
                is_head: false,
                pid: 42,
                resources_total: ResourceSet::new().with("CPU", Quantity::from_whole(2)),
                resources_available: ResourceSet::new(),
                labels: [("zone".to_string(), "a".to_string())].into(),
                metrics_address: None,
            }),
        },
        Frame::Request {
            id: 8,
            budget_ms: 10,
            body: Request::KvPut(KvPutRequest {
                namespace: "ns".into(),
                key: "k".into(),
                value: Bytes::from_static(&[0xc8; 100]),
                overwrite: true,
            }),
        },
        Frame::Reply { id: 7, result: Err(WireError::invalid("nope")) },
        Frame::Reply { id: 9, result: Ok(Reply::Ack) },
        Frame::Cancel { id: 3 },
        Frame::Ping { nonce: u64::MAX },
        Frame::Pong { nonce: 0 },
    ]
}

#[test]
fn round_trip_every_sample() {
    let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME_BYTES);
    let mut buffer = BytesMut::new();
    for frame in sample_frames() {
        codec.encode(&frame, &mut buffer).unwrap();
    }
    for expected in sample_frames() {
        let decoded = codec.decode(&mut buffer).unwrap().expect("a whole frame");
        assert_eq!(decoded, expected);
    }
    assert!(buffer.is_empty());
    assert!(codec.decode(&mut buffer).unwrap().is_none());
}

#[test]
fn byte_payloads_are_msgpack_bin() {
    let frame = Frame::Request {
        id: 1,
        budget_ms: 1,
        body: Request::KvPut(KvPutRequest {
            namespace: String::new(),
            key: String::new(),
            value: Bytes::from_static(&[0xc8; 100]),
            overwrite: false,
        }),
    };
    let body = encode_body(&frame).unwrap();
    // 100 bytes of 0xc8 as an array of ints would take ~200 bytes; as bin, ~100.
    assert!(body.len() < 180, "payload was not encoded as bin: {} bytes", body.len());
    assert!(body.windows(2).any(|pair| pair == [0xc4, 100]), "no bin8 header found");
}

#[test]
fn truncated_input_waits_for_more() {
    let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME_BYTES);
    let mut whole = BytesMut::new();
    codec.encode(&Frame::Ping { nonce: 5 }, &mut whole).unwrap();
    for cut in 0..whole.len() {
        let mut partial = BytesMut::from(&whole[..cut]);
        assert!(codec.decode(&mut partial).unwrap().is_none(), "cut at {cut}");
        assert_eq!(partial.len(), cut, "a partial frame must not be consumed");
    }
}

#[test]
fn oversize_is_refused_before_allocating() {
    let mut codec = FrameCodec::new(1024);
    let mut buffer = BytesMut::new();
    buffer.put_u32(u32::MAX);
    buffer.put_slice(b"abc");
    let capacity_before = buffer.capacity();
    match codec.decode(&mut buffer) {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!(len, u32::MAX as usize);
            assert_eq!(max, 1024);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(buffer.capacity(), capacity_before, "the buffer must not grow for an oversize frame");
}

#[test]
fn oversize_encode_is_an_error_and_leaves_buffer_clean() {
    let mut codec = FrameCodec::new(16);
    let mut buffer = BytesMut::from(&b"xy"[..]);
    let frame = Frame::Error(WireError::invalid("a message much longer than sixteen bytes"));
    assert!(matches!(codec.encode(&frame, &mut buffer), Err(FrameError::TooLarge { .. })));
    assert_eq!(&buffer[..], b"xy");
}

#[test]
fn garbage_body_is_malformed() {
    let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME_BYTES);
    let mut buffer = BytesMut::new();
    buffer.put_u32(5);
    buffer.put_slice(&[0xc1, 0xff, 0x00, 0x13, 0x37]);
    assert!(matches!(codec.decode(&mut buffer), Err(FrameError::Malformed(_))));
}

#[test]
fn http_request_is_refused_as_oversize_or_malformed() {
    // "GET " read as a length is 1.19 GB: refused by the cap, not allocated.
    let mut codec = FrameCodec::new(HANDSHAKE_MAX_FRAME_BYTES);
    let mut buffer = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
    assert!(codec.decode(&mut buffer).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut codec = FrameCodec::new(256);
        let mut buffer = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec.decode(&mut buffer) {}
    }

    /// Frames survive a round trip, even when the bytes arrive in two pieces.
    #[test]
    fn round_trip_split_anywhere(
        nonce in any::<u64>(),
        key in ".{0,40}",
        value in proptest::collection::vec(any::<u8>(), 0..300),
        split in 0usize..400,
    ) {
        let frames = vec![
            Frame::Ping { nonce },
            Frame::Request {
                id: nonce,
                budget_ms: nonce % 10_000,
                body: Request::KvPut(KvPutRequest {
                    namespace: key.clone(),
                    key: key.clone(),
                    value: Bytes::from(value.clone()),
                    overwrite: nonce % 2 == 0,
                }),
            },
            Frame::Cancel { id: nonce },
        ];
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME_BYTES);
        let mut wire = BytesMut::new();
        for frame in &frames {
            codec.encode(frame, &mut wire).unwrap();
        }
        let split = split.min(wire.len());
        let mut buffer = BytesMut::from(&wire[..split]);
        let mut decoded = Vec::new();
        while let Some(frame) = codec.decode(&mut buffer).unwrap() {
            decoded.push(frame);
        }
        buffer.extend_from_slice(&wire[split..]);
        while let Some(frame) = codec.decode(&mut buffer).unwrap() {
            decoded.push(frame);
        }
        prop_assert_eq!(decoded, frames);
    }
}
