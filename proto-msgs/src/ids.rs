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
                for byte in &self.0 {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
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
                let error = || ParseIdError { kind: $kind, input: input.to_string(), expected_len: $len * 2 };
                if input.len() != $len * 2 || !input.is_ascii() {
                    return Err(error());
                }
                let mut bytes = [0u8; $len];
                for (index, byte) in bytes.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&input[index * 2..index * 2 + 2], 16).map_err(|_| error())?;
                }
                Ok(Self(bytes))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_string())
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
    }

    #[test]
    fn msgpack_round_trip() {
        let id = NodeId::random();
        let bytes = rmp_serde::to_vec_named(&id).unwrap();
        let back: NodeId = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, id);
    }
}
