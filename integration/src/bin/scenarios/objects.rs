//! Scenarios for objects: large values in the node stores, refs nested in values
//! and passed across nodes, reference counting, the store-full error.

use std::io::BufRead;
use std::time::{Duration, Instant};

use manta::{Error, ObjectRef, SchedulingStrategy, TaskOptions};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::check;

/// Positions checked in a blob (every `STRIDE`th byte holds `position % 251`).
const STRIDE: usize = 4099;

/// Bytes that serialize as one msgpack `bin` and deserialize into a digest,
/// read in place from the (mapped) object: a 1 GiB object is checked without
/// another 1 GiB copy.
#[derive(Debug, Clone, PartialEq)]
pub enum Blob {
    /// The bytes (sending side).
    Data(Vec<u8>),
    /// What a reader saw: the length, and whether every marked byte was right.
    Digest {
        /// Length in bytes.
        len: usize,
        /// Every marked byte holds its position mod 251.
        intact: bool,
    },
}

impl Blob {
    /// `len` bytes, marked at every `STRIDE`th position.
    pub fn new(len: usize) -> Self {
        let mut data = vec![0u8; len];
        for position in (0..len).step_by(STRIDE) {
            data[position] = (position % 251) as u8;
        }
        Blob::Data(data)
    }

    fn digest(bytes: &[u8]) -> Self {
        let intact = (0..bytes.len()).step_by(STRIDE).all(|position| bytes[position] == (position % 251) as u8);
        Blob::Digest { len: bytes.len(), intact }
    }

    /// True for an intact digest of `len` bytes.
    pub fn is_intact(&self, expected: usize) -> bool {
        matches!(self, Blob::Digest { len, intact: true } if *len == expected)
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Blob::Data(data) => serializer.serialize_bytes(data),
            Blob::Digest { .. } => Err(serde::ser::Error::custom("a digest is not data")),
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Digester;
        impl<'de> Visitor<'de> for Digester {
            type Value = Blob;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("bytes")
            }
            fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Blob, E> {
                Ok(Blob::digest(bytes))
            }
        }
        deserializer.deserialize_bytes(Digester)
    }
}

/// What a task saw of a blob: its length, and whether it was intact.
#[manta::remote]
fn digest(blob: Blob) -> (usize, bool) {
    match blob {
        Blob::Digest { len, intact } => (len, intact),
        Blob::Data(data) => (data.len(), false),
    }
}

/// Where a task taking a blob ran.
#[manta::remote]
fn blob_node(blob: Blob) -> (manta::NodeId, bool) {
    (manta::context().unwrap().node_id, matches!(blob, Blob::Digest { intact: true, .. }))
}

#[manta::remote]
fn make_blob(len: usize) -> Blob {
    Blob::new(len)
}

/// Puts blobs of these sizes here and returns the refs (owned by this worker).
#[manta::remote]
fn put_blobs(sizes: Vec<usize>) -> Vec<ObjectRef<Blob>> {
    sizes.into_iter().map(|len| manta::put(&Blob::new(len)).unwrap()).collect()
}

/// Receives refs nested in an argument, reads them, and hands them back nested in its result.
#[manta::remote]
fn forward(refs: Vec<ObjectRef<Blob>>) -> (Vec<ObjectRef<Blob>>, bool) {
    let intact = refs.iter().all(|blob| matches!(blob.get(), Ok(Blob::Digest { intact: true, .. })));
    (refs, intact)
}

struct Keeper {
    kept: Vec<ObjectRef<Blob>>,
}

#[manta::actor]
impl Keeper {
    fn new() -> Self {
        Keeper { kept: Vec::new() }
    }

    fn keep(&mut self, refs: Vec<ObjectRef<Blob>>) -> usize {
        self.kept.extend(refs);
        self.kept.len()
    }

    fn release(&mut self) -> usize {
        self.kept.clear();
        0
    }

    fn make(&self, len: usize) -> ObjectRef<Blob> {
        manta::put(&Blob::new(len)).unwrap()
    }
}

pub fn on(node: manta::NodeId) -> TaskOptions {
    TaskOptions::default().scheduling_strategy(SchedulingStrategy::NodeAffinity { node_id: node, soft: false })
}

pub fn nodes() -> manta::Result<Vec<manta::NodeId>> {
    let mut nodes: Vec<_> = manta::nodes()?.into_iter().filter(|node| node.state == manta::NodeState::Alive).collect();
    nodes.sort_by_key(|node| !node.is_head);
    Ok(nodes.into_iter().map(|node| node.node_id).collect())
}

/// Large objects and nested refs across a 3-node cluster, then (driven by the
/// test over stdin) dropping them all so the test can see every store empty.
pub fn big_objects() -> manta::Result<()> {
    const GIB: usize = 1 << 30;
    let nodes = nodes()?;
    assert_eq!(nodes.len(), 3, "three alive nodes expected");
    let (_head, second, third) = (nodes[0], nodes[1], nodes[2]);

    let started = Instant::now();
    let big = manta::put(&Blob::new(GIB))?;
    let remote = digest::with_options(on(second), &big).get()?;
    check("a 1 GiB put is read intact by a task on another node", remote == (GIB, true), remote);
    check("the owner reads its 1 GiB object back", big.get()?.is_intact(GIB), ());
    drop(big);
    println!("1 GiB driver -> node took {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let made = make_blob::with_options(on(second), GIB);
    check("a 1 GiB task result is pulled to the driver's node", made.get()?.is_intact(GIB), ());
    let third_read = digest::with_options(on(third), &made).get()?;
    check("and read by a task on a third node", third_read == (GIB, true), third_read);
    drop(made);
    println!("1 GiB node -> driver and node took {:.1} s", started.elapsed().as_secs_f64());

    let far = make_blob::with_options(on(third), 3 << 20);
    let ready = manta::wait_with(std::slice::from_ref(&far), 1, Some(Duration::from_secs(30)), false)?.0.len();
    check("wait (fetch_local = false) sees a remote result", ready == 1, ready);
    let ready = manta::wait(std::slice::from_ref(&far), 1, Some(Duration::from_secs(30)))?.0.len();
    check("wait (fetch_local) pulls it here", ready == 1, ready);
    let placed = blob_node::remote(&far).get()?;
    check("a task runs where its large argument lives (data locality)", placed == (third, true), placed);

    // Refs owned by a worker on node 2, nested in its result; passed on nested in
    // an argument to node 3, which hands them back nested in its own result.
    let owned_by_worker: Vec<ObjectRef<Blob>> =
        put_blobs::with_options(on(second), vec![1000usize, 2 << 20, 5 << 20]).get()?;
    let (returned, intact) = forward::with_options(on(third), owned_by_worker.clone()).get()?;
    check("refs nested in an argument resolve on another node", intact, ());
    let all_intact = returned
        .iter()
        .zip([1000usize, 2 << 20, 5 << 20])
        .all(|(blob, len)| matches!(blob.get(), Ok(digest) if digest.is_intact(len)));
    check("refs nested in a result come back intact", all_intact, ());
    let keeper = Keeper::remote()?;
    check("an actor keeps borrowed refs", keeper.keep(owned_by_worker.clone()).get()? == 3, ());
    drop(returned);

    let orphan_maker = Keeper::remote()?;
    let read: ObjectRef<Blob> = orphan_maker.make(2 << 20).get()?;
    check("a large object owned by an actor resolves", read.get()?.is_intact(2 << 20), ());
    let orphan: ObjectRef<Blob> = orphan_maker.make(2 << 20).get()?;
    manta::kill(&orphan_maker)?;
    let lost = orphan.get_timeout(Duration::from_secs(20));
    check("a large object whose owner died is lost (owner died)", matches!(&lost, Err(Error::OwnerDied(_))), &lost);
    drop((orphan, read));

    // Hold everything until the test has listed it, then drop it all.
    println!("holding");
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();
    drop(owned_by_worker);
    drop(far);
    let after = keeper.keep(Vec::new()).get()?;
    check("the actor still holds its refs after the driver dropped its own", after == 3, after);
    keeper.release().get()?;
    println!("dropped");
    let _ = lines.next();
    Ok(())
}

/// A small store with a smaller spill budget: puts wait, then fail with the sizes;
/// freed room is reused at once; 10 GiB put and dropped in 100 MiB objects never
/// fills it.
pub fn store_full() -> manta::Result<()> {
    const MB: usize = 1_000_000;
    let first = manta::put(&Blob::new(120 * MB))?;
    let second = manta::put(&Blob::new(120 * MB))?;
    let started = Instant::now();
    let refused = manta::put(&Blob::new(120 * MB));
    let message = match &refused {
        Err(Error::ObjectStoreFull(message)) => message.clone(),
        other => panic!("expected ObjectStoreFull, got {other:?}"),
    };
    println!("{message}");
    check(
        "a put into a full store fails with the sizes asked and held",
        message.contains("114.4 MiB asked for")
            && message.contains("held")
            && message.contains("of a 95.4 MiB spill budget")
            && message.contains("--object-store-memory"),
        &message,
    );
    check("after waiting for room first", started.elapsed() >= Duration::from_millis(400), started.elapsed());
    drop(first);
    let third = manta::put(&Blob::new(120 * MB));
    check("dropping a ref frees its room for the next put", third.is_ok(), third.as_ref().err());
    drop((second, third));

    let started = Instant::now();
    let chunk = Blob::new(100 << 20);
    let mut refused = Vec::new();
    for round in 0..100 {
        // Each ref is dropped at the end of its round: its 100 MiB must come back.
        if let Err(error) = manta::put(&chunk) {
            refused.push((round, error));
        }
    }
    println!("10 GiB put and dropped in {:.1} s", started.elapsed().as_secs_f64());
    check("10 GiB put and dropped in 100 MiB objects fits a 300 MB store", refused.is_empty(), &refused);
    let task_result = make_blob::remote(400 * MB).get();
    check(
        "a task result larger than the store fails with ObjectStoreFull",
        matches!(&task_result, Err(Error::ObjectStoreFull(_))),
        &task_result,
    );
    Ok(())
}

/// Work on both nodes of a two-node cluster: a task on each, a large object put
/// here and read by a task on the other node, and a large result pulled back.
pub fn two_nodes() -> manta::Result<()> {
    const MIB: usize = 1 << 20;
    let nodes = nodes()?;
    check("two alive nodes", nodes.len() == 2, &nodes);
    // The local raylet learns of the joined node through the pushed cluster view
    // (every 100 ms): until then, affinity to it is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ran = Vec::new();
    for node in &nodes {
        loop {
            match blob_node::with_options(on(*node), Blob::new(16)).get() {
                Ok((ran_on, _)) => break ran.push((ran_on, *node)),
                Err(Error::Unschedulable(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => return Err(error),
            }
        }
    }
    check("a task runs on each node", ran.iter().all(|(ran_on, node)| ran_on == node), &ran);
    let big = manta::put(&Blob::new(8 * MIB))?;
    let read = digest::with_options(on(nodes[1]), &big).get()?;
    check("an 8 MiB object crosses to the other node intact", read == (8 * MIB, true), read);
    let made = make_blob::with_options(on(nodes[1]), 8 * MIB);
    check("an 8 MiB result comes back intact", made.get()?.is_intact(8 * MIB), ());
    Ok(())
}
