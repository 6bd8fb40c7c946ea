//! The internal key-value store: a [`KvTable`] behind the [`KvStore`] actor.

use std::collections::BTreeMap;

use bytes::Bytes;
use manta_proto::gcs::{KvDelRequest, KvGetRequest, KvKeysRequest, KvPutRequest};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::Shared;
use crate::storage::Rows;

/// The storage key of a KV entry: namespace, a zero byte, key.
fn row_key(namespace: &str, key: &str) -> Vec<u8> {
    [namespace.as_bytes(), &[0], key.as_bytes()].concat()
}

/// A KV entry as stored.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct KvRow {
    pub namespace: String,
    pub key: String,
    pub value: Bytes,
}

/// Namespaced keys to byte values, ordered so prefix scans are ranges.
#[derive(Debug, Default)]
pub struct KvTable {
    entries: BTreeMap<(String, String), Bytes>,
    store: Rows,
}

impl KvTable {
    /// A table holding recovered rows, persisting changes to `store`.
    pub fn restore(rows: Vec<KvRow>, store: Rows) -> Self {
        let entries = rows.into_iter().map(|row| ((row.namespace, row.key), row.value)).collect();
        Self { entries, store }
    }

    fn persist(&self, namespace: &str, key: &str) {
        match self.entries.get(&(namespace.to_string(), key.to_string())) {
            Some(value) => self.store.put(
                row_key(namespace, key),
                &KvRow { namespace: namespace.to_string(), key: key.to_string(), value: value.clone() },
            ),
            None => self.store.delete(row_key(namespace, key)),
        }
    }

    /// Stores a value; returns true when the key is new. An existing key is
    /// replaced only with `overwrite`.
    pub fn put(&mut self, request: KvPutRequest) -> bool {
        let key = (request.namespace, request.key);
        let added = match self.entries.get_mut(&key) {
            Some(existing) => {
                if !request.overwrite {
                    return false;
                }
                *existing = request.value;
                false
            }
            None => {
                self.entries.insert(key.clone(), request.value);
                true
            }
        };
        self.persist(&key.0, &key.1);
        added
    }

    /// Reads a value.
    pub fn get(&self, request: &KvGetRequest) -> Option<Bytes> {
        self.entries.get(&(request.namespace.clone(), request.key.clone())).cloned()
    }

    /// Deletes a key or a prefix; returns how many keys went.
    pub fn delete(&mut self, request: &KvDelRequest) -> u64 {
        let doomed = if request.by_prefix {
            self.keys(&KvKeysRequest { namespace: request.namespace.clone(), prefix: request.key.clone() })
        } else if self.entries.contains_key(&(request.namespace.clone(), request.key.clone())) {
            vec![request.key.clone()]
        } else {
            Vec::new()
        };
        for key in &doomed {
            self.entries.remove(&(request.namespace.clone(), key.clone()));
            self.persist(&request.namespace, key);
        }
        doomed.len() as u64
    }

    /// Keys of a namespace starting with a prefix, sorted.
    pub fn keys(&self, request: &KvKeysRequest) -> Vec<String> {
        let start = (request.namespace.clone(), request.prefix.clone());
        self.entries
            .range(start..)
            .take_while(|((namespace, key), _)| *namespace == request.namespace && key.starts_with(&request.prefix))
            .map(|((_, key), _)| key.clone())
            .collect()
    }
}

/// The KV actor. Stateless; its state is the shared [`KvTable`].
#[derive(Debug, Default)]
pub struct KvStore;

/// Messages to the [`KvStore`].
#[derive(Debug)]
pub enum KvMsg {
    /// Store a value; replies whether the key is new.
    Put(KvPutRequest, RpcReplyPort<bool>),
    /// Read a value.
    Get(KvGetRequest, RpcReplyPort<Option<Bytes>>),
    /// Delete a key or prefix; replies how many keys went.
    Del(KvDelRequest, RpcReplyPort<u64>),
    /// List keys by prefix.
    Keys(KvKeysRequest, RpcReplyPort<Vec<String>>),
}

impl Actor for KvStore {
    type Msg = KvMsg;
    type State = Shared<KvTable>;
    type Arguments = Shared<KvTable>;

    async fn pre_start(
        &self,
        _myself: ActorRef<KvMsg>,
        table: Shared<KvTable>,
    ) -> Result<Shared<KvTable>, ActorProcessingErr> {
        Ok(table)
    }

    async fn handle(
        &self,
        _myself: ActorRef<KvMsg>,
        message: KvMsg,
        table: &mut Shared<KvTable>,
    ) -> Result<(), ActorProcessingErr> {
        let mut table = table.lock();
        match message {
            KvMsg::Put(request, reply) => {
                let _ = reply.send(table.put(request));
            }
            KvMsg::Get(request, reply) => {
                let _ = reply.send(table.get(&request));
            }
            KvMsg::Del(request, reply) => {
                let _ = reply.send(table.delete(&request));
            }
            KvMsg::Keys(request, reply) => {
                let _ = reply.send(table.keys(&request));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, overwrite: bool) -> KvPutRequest {
        KvPutRequest { namespace: "ns".into(), key: key.into(), value: Bytes::from(value.to_string()), overwrite }
    }

    #[test]
    fn put_get_overwrite() {
        let mut table = KvTable::default();
        assert!(table.put(put("a", "1", false)));
        assert!(!table.put(put("a", "2", false)));
        let get = KvGetRequest { namespace: "ns".into(), key: "a".into() };
        assert_eq!(table.get(&get).unwrap(), "1");
        table.put(put("a", "3", true));
        assert_eq!(table.get(&get).unwrap(), "3");
        let other = KvGetRequest { namespace: "other".into(), key: "a".into() };
        assert!(table.get(&other).is_none(), "namespaces are separate");
    }

    #[test]
    fn prefix_keys_and_delete() {
        let mut table = KvTable::default();
        for key in ["job:1", "job:2", "jobs", "node:1"] {
            table.put(put(key, "x", false));
        }
        table.put(KvPutRequest { namespace: "zz".into(), key: "job:9".into(), value: Bytes::new(), overwrite: false });
        let keys = table.keys(&KvKeysRequest { namespace: "ns".into(), prefix: "job:".into() });
        assert_eq!(keys, vec!["job:1", "job:2"]);
        let deleted = table.delete(&KvDelRequest { namespace: "ns".into(), key: "job".into(), by_prefix: true });
        assert_eq!(deleted, 3);
        assert_eq!(table.keys(&KvKeysRequest { namespace: "ns".into(), prefix: String::new() }), vec!["node:1"]);
        let single = KvDelRequest { namespace: "ns".into(), key: "node:1".into(), by_prefix: false };
        assert_eq!(table.delete(&single), 1);
        assert_eq!(table.delete(&single), 0);
    }
}
