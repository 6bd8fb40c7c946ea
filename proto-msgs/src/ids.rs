//! Identifier newtypes. Each id is a fixed number of random bytes, printed as
//! lowercase hex, so ids of different kinds cannot be mixed up at compile time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Error returned when an id cannot be parsed from hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {input:?}: expected {expected_len} hex characters")]
pub struct ParseIdError {
    kind: &'static str,
    input: String,
    expected_len: usize,
}

/// Hex characters in the longest id.
const MAX_HEX: usize = 40;

/// Writes `bytes` as lowercase hex into `buffer` (ids are on every message, so
/// this skips the formatter).
fn encode_hex<'a>(bytes: &[u8], buffer: &'a mut [u8; MAX_HEX]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let text = &mut buffer[..bytes.len() * 2];
    for (pair, byte) in text.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    std::str::from_utf8(text).expect("hex digits are ASCII")
}

/// Fills `bytes` from exactly twice as many hex digits (either case); `None` otherwise.
fn decode_hex(input: &str, bytes: &mut [u8]) -> Option<()> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            b'A'..=b'F' => Some(digit - b'A' + 10),
            _ => None,
        }
    }
    let digits = input.as_bytes();
    if digits.len() != bytes.len() * 2 {
        return None;
    }
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Number of bytes in this id.
            pub const LEN: usize = $len;

            /// A fresh random id.
            pub fn random() -> Self {
                let mut bytes = [0u8; $len];
                rand::fill(&mut bytes);
                Self(bytes)
            }

            /// The id's raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex form.
            pub fn hex(&self) -> String {
                self.to_string()
            }

            /// The first 8 hex characters, for human-facing output.
            pub fn short(&self) -> String {
                let mut full = self.to_string();
                full.truncate(8);
                full
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(encode_hex(&self.0, &mut [0u8; MAX_HEX]))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(input: &str) -> Result<Self, Self::Err> {
                let mut bytes = [0u8; $len];
                match decode_hex(input, &mut bytes) {
                    Some(()) => Ok(Self(bytes)),
                    None => Err(ParseIdError { kind: $kind, input: input.to_string(), expected_len: $len * 2 }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(encode_hex(&self.0, &mut [0u8; MAX_HEX]))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// A node's identity. A node declared dead never comes back under the same id.
    NodeId, 16, "node"
);
define_id!(
    /// A job: one driver and everything it started.
    JobId, 4, "job"
);
define_id!(
    /// A worker process (or a driver's core worker).
    WorkerId, 16, "worker"
);
define_id!(
    /// One execution of a remote function or actor method.
    TaskId, 16, "task"
);
define_id!(
    /// An actor, stable across restarts.
    ActorId, 16, "actor"
);
define_id!(
    /// An object: the task that made it plus an index (returns count up, puts count down).
    ObjectId, 20, "object"
);
define_id!(
    /// A placement group.
    PlacementGroupId, 16, "placement group"
);

impl JobId {
    /// The job id for a counter value (the GCS numbers jobs from 1).
    pub const fn from_counter(counter: u32) -> Self {
        Self(counter.to_be_bytes())
    }

    /// The counter value this id was made from.
    pub fn counter(&self) -> u32 {
        u32::from_be_bytes(self.0)
    }
}

impl ObjectId {
    /// The `index`-th return value of `task`.
    pub fn for_return(task: TaskId, index: u32) -> Self {
        let mut bytes = [0u8; 20];
        bytes[..16].copy_from_slice(task.as_bytes());
        bytes[16..].copy_from_slice(&index.to_be_bytes());
        Self(bytes)
    }

    /// The `counter`-th object `put` by `task` (counted from the top of the index space).
    pub fn for_put(task: TaskId, counter: u32) -> Self {
        Self::for_return(task, u32::MAX - counter)
    }

    /// The task that made (or put) this object.
    pub fn task_id(&self) -> TaskId {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.0[..16]);
        TaskId(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = NodeId::random();
        let parsed: NodeId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(id.to_string().len(), 32);
        assert_eq!(id.short().len(), 8);
    }

    #[test]
    fn rejects_bad_hex() {
        assert!("zz".parse::<NodeId>().is_err());
        assert!("00".repeat(15).parse::<NodeId>().is_err());
        assert!("gg".repeat(16).parse::<NodeId>().is_err());
        assert!("é".repeat(16).parse::<NodeId>().is_err());
        assert!("+f000000".parse::<JobId>().is_err());
    }

    #[test]
    fn hex_is_lowercase_and_reads_either_case() {
        let id = JobId(*b"\x00\xff\x10\xab");
        assert_eq!(id.to_string(), "00ff10ab");
        assert_eq!("00FF10AB".parse::<JobId>().unwrap(), id);
        let object = ObjectId([0xa5; 20]);
        assert_eq!(object.to_string(), "a5".repeat(20));
        assert_eq!(rmp_serde::to_vec(&object).unwrap()[2..], *"a5".repeat(20).as_bytes());
    }

    #[test]
    fn msgpack_round_trip() {
        let id = NodeId::random();
        let bytes = rmp_serde::to_vec_named(&id).unwrap();
        let back: NodeId = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, id);
    }
}
