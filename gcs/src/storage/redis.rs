//! The Redis backend (`--storage redis://host:port`): one hash per table,
//! `<namespace>:<table>`, each field a row, and a marker key `<namespace>:marker`
//! holding this cluster's random id. A batch is one Lua script that first checks
//! the marker, so it applies whole, and never to a Redis that was flushed or
//! replaced under the head (the head then stops, naming the problem). Durability
//! is the server's (AOF/RDB) setting. Connecting and each command time out.

use std::time::Duration;

use redis::{Client, Connection};

use super::{Backend, Snapshot, StorageError, Table, Write};

/// Time allowed to connect, and for one command.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Applies a batch only if the marker still holds this cluster's id.
/// ARGV: the id, then per row `S key field value` or `D key field`.
const COMMIT_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('MANTA_MARKER_MISSING')
end
local i = 2
while i <= #ARGV do
  if ARGV[i] == 'S' then
    redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  else
    redis.call('HDEL', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  end
end
return 1
"#;

/// A connection to one Redis server; redials after an error.
pub struct RedisBackend {
    client: Client,
    connection: Option<Connection>,
    url: String,
    namespace: String,
    /// This cluster's id in the marker key (learned or made at load).
    marker: Option<String>,
    /// Set when the marker was found gone: the store is not this head's any more.
    unusable: Option<String>,
}

impl RedisBackend {
    /// Connects to `url`; the head refuses to start when Redis cannot be reached.
    pub fn open(url: &str, namespace: &str) -> Result<Self, StorageError> {
        let shown = redact_password(url);
        let client = Client::open(url)
            .map_err(|error| StorageError(format!("--storage {shown}: not a valid Redis address: {error}")))?;
        // Only the redacted form is kept: it is what errors and logs show.
        let mut backend = Self {
            client,
            connection: None,
            url: shown,
            namespace: namespace.to_string(),
            marker: None,
            unusable: None,
        };
        backend.connection()?;
        Ok(backend)
    }

    fn key(&self, table: Table) -> String {
        format!("{}:{}", self.namespace, table.name())
    }

    fn marker_key(&self) -> String {
        format!("{}:marker", self.namespace)
    }

    fn connection(&mut self) -> Result<&mut Connection, StorageError> {
        if self.connection.is_none() {
            let unreachable = |error: redis::RedisError| {
                StorageError(format!("cannot reach Redis at {}: {error}; is the server running?", self.url))
            };
            let connection = self.client.get_connection_with_timeout(TIMEOUT).map_err(unreachable)?;
            connection.set_read_timeout(Some(TIMEOUT)).map_err(unreachable)?;
            connection.set_write_timeout(Some(TIMEOUT)).map_err(unreachable)?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("connection set above"))
    }

    /// Reads the marker; on a store with no manta rows, writes a new one.
    fn claim_marker(&mut self, snapshot: &Snapshot) -> Result<String, StorageError> {
        let (key, url) = (self.marker_key(), self.url.clone());
        let found: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query(self.connection()?)
            .map_err(|error| StorageError(format!("Redis {url}: cannot read {key}: {error}")))?;
        if let Some(found) = found {
            return Ok(found);
        }
        if snapshot.values().any(|rows| !rows.is_empty()) {
            return Err(StorageError(format!(
                "Redis {url} holds manta tables under namespace {:?} but no marker key {key}: part of the data was \
                 lost or it was written by something else; the head will not run over it. Move the keys aside, or \
                 start with another --storage-namespace",
                self.namespace
            )));
        }
        let id = format!("{:032x}", rand::random::<u128>());
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&id)
            .arg("NX")
            .query(self.connection()?)
            .map_err(|error| StorageError(format!("Redis {url}: cannot write {key}: {error}")))?;
        match set {
            Some(_) => Ok(id),
            None => Err(StorageError(format!(
                "Redis {url}: another head claimed namespace {:?} at the same time; give each cluster its own \
                 --storage-namespace",
                self.namespace
            ))),
        }
    }
}

impl Backend for RedisBackend {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        let mut snapshot = Snapshot::new();
        for table in Table::ALL {
            let key = self.key(table);
            let url = self.url.clone();
            let rows: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(&key)
                .query(self.connection()?)
                .map_err(|error| StorageError(format!("Redis {url}: cannot read {key}: {error}")))?;
            snapshot.insert(table, rows.into_iter().collect());
        }
        self.marker = Some(self.claim_marker(&snapshot)?);
        Ok(snapshot)
    }

    fn commit(&mut self, writes: &[Write]) -> Result<(), StorageError> {
        let url = self.url.clone();
        let marker = self.marker.clone().ok_or_else(|| StorageError(format!("Redis {url}: written before loading")))?;
        let mut script = redis::cmd("EVAL");
        script.arg(COMMIT_SCRIPT).arg(1).arg(self.marker_key()).arg(&marker);
        for write in writes {
            let key = self.key(write.table);
            match &write.value {
                Some(value) => script.arg("S").arg(key).arg(write.key.as_slice()).arg(value.as_slice()),
                None => script.arg("D").arg(key).arg(write.key.as_slice()),
            };
        }
        let result: redis::RedisResult<i64> = script.query(self.connection()?);
        result.map(drop).map_err(|error| {
            if error.to_string().contains("MANTA_MARKER_MISSING") {
                self.unusable = Some(format!(
                    "Redis {url} no longer holds this cluster's marker key {}: it was flushed, restarted without \
                     persistence, or replaced; the head stops rather than run over a store that lost its tables",
                    self.marker_key()
                ));
            }
            self.connection = None;
            StorageError(format!("Redis {url}: commit failed: {error}"))
        })
    }

    fn unusable(&self) -> Option<String> {
        self.unusable.clone()
    }

    fn describe(&self) -> String {
        format!("Redis {} (namespace {})", self.url, self.namespace)
    }
}

/// `url` with any password replaced by `***` (`redis://user:secret@host` → `redis://user:***@host`),
/// for every log line and error.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((credentials, host)) = rest.rsplit_once('@') else { return url.to_string() };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_password;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(redact_password("redis://user:s3cret@127.0.0.1:6380/0"), "redis://user:***@127.0.0.1:6380/0");
        assert_eq!(redact_password("redis://:s3cret@127.0.0.1:6380"), "redis://:***@127.0.0.1:6380");
        assert_eq!(redact_password("redis://127.0.0.1:6380"), "redis://127.0.0.1:6380");
    }
}
