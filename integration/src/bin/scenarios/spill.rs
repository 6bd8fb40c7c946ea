//! Spilling: 10 GiB of live objects put through a 1 GiB store, every byte read
//! back by the driver, by a worker on its node, and by a task on another node.

use std::io::BufRead;
use std::time::Instant;

use manta::ObjectRef;
use serde::{Deserialize, Serialize};

use super::check;
use super::objects::{nodes, on};

const OBJECT: usize = 64 << 20;
/// 160 × 64 MiB = 10 GiB.
const OBJECTS: usize = 160;

/// Bytes carried as one msgpack `bin`.
#[derive(Serialize, Deserialize)]
struct Bin(#[serde(with = "serde_bytes")] Vec<u8>);

/// 64 MiB of pseudo-random bytes (splitmix64), the same in every process.
fn base() -> Vec<u8> {
    let mut state = 0x5eed_u64;
    let mut bytes = Vec::with_capacity(OBJECT);
    while bytes.len() < OBJECT {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes
}

/// Object `index` is the base rotated by its own amount, so objects differ from
/// each other and any swapped, shifted or damaged byte shows.
fn rotation(index: usize) -> usize {
    (index * 1_048_583 + 1) % OBJECT
}

fn content(base: &[u8], index: usize) -> Bin {
    let shift = rotation(index);
    let mut bytes = Vec::with_capacity(OBJECT);
    bytes.extend_from_slice(&base[shift..]);
    bytes.extend_from_slice(&base[..shift]);
    Bin(bytes)
}

fn intact(base: &[u8], index: usize, read: &Bin) -> bool {
    let shift = rotation(index);
    read.0.len() == OBJECT && read.0[..OBJECT - shift] == base[shift..] && read.0[OBJECT - shift..] == base[..shift]
}

/// Reads each object and answers where it ran and which ones were damaged.
#[manta::remote]
fn read_back(objects: Vec<(usize, ObjectRef<Bin>)>) -> (manta::NodeId, Vec<usize>) {
    let base = base();
    let damaged = objects
        .iter()
        .filter(|(index, object)| !matches!(object.get(), Ok(read) if intact(&base, *index, &read)))
        .map(|(index, _)| *index)
        .collect();
    (manta::context().unwrap().node_id, damaged)
}

/// Puts 10 GiB, holds it while the test looks at the store, reads every byte
/// back, then (told over stdin) drops it all.
pub fn spill() -> manta::Result<()> {
    let nodes = nodes()?;
    assert_eq!(nodes.len(), 2, "two alive nodes expected");
    let base = base();
    let started = Instant::now();
    let mut objects = Vec::with_capacity(OBJECTS);
    for index in 0..OBJECTS {
        objects.push((index, manta::put(&content(&base, index))?));
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("put 10 GiB in {seconds:.1} s ({:.2} GiB/s)", 10.0 / seconds);
    check("10 GiB of live objects put into a 1 GiB store", objects.len() == OBJECTS, objects.len());
    println!("holding");
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();

    let started = Instant::now();
    let damaged: Vec<usize> = objects
        .iter()
        .filter(|(index, object)| !matches!(object.get(), Ok(read) if intact(&base, *index, &read)))
        .map(|(index, _)| *index)
        .collect();
    println!("read 10 GiB back in {:.1} s", started.elapsed().as_secs_f64());
    check("the driver reads every byte of all 10 GiB back", damaged.is_empty(), &damaged);
    let first: Vec<_> = objects[..8].to_vec();
    let (ran_on, damaged) = read_back::with_options(on(nodes[1]), first.clone()).get()?;
    check("a task on another node reads spilled objects intact", ran_on == nodes[1] && damaged.is_empty(), damaged);
    let (ran_on, damaged) = read_back::with_options(on(nodes[0]), objects[8..16].to_vec()).get()?;
    check("a worker on the spilling node reads them intact", ran_on == nodes[0] && damaged.is_empty(), damaged);

    drop((objects, first));
    println!("dropped");
    let _ = lines.next();
    Ok(())
}
