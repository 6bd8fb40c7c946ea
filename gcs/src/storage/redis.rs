//! The Redis backend (`--storage redis://host:port`): one hash per table,
//! `<namespace>:<table>`, each field a row. A batch is one MULTI/EXEC, so it
//! applies whole or not at all; durability is the server's (AOF/RDB) setting.

use redis::{Client, Connection};

use super::{Backend, Snapshot, StorageError, Table, Write};

/// A connection to one Redis server; redials after an error.
pub struct RedisBackend {
    client: Client,
    connection: Option<Connection>,
    url: String,
    namespace: String,
}

impl RedisBackend {
    /// Connects to `url`; the head refuses to start when Redis cannot be reached.
    pub fn open(url: &str, namespace: &str) -> Result<Self, StorageError> {
        let shown = redact_password(url);
        let client = Client::open(url)
            .map_err(|error| StorageError(format!("--storage {shown}: not a valid Redis address: {error}")))?;
        // Only the redacted form is kept: it is what errors and logs show.
        let mut backend = Self { client, connection: None, url: shown, namespace: namespace.to_string() };
        backend.connection()?;
        Ok(backend)
    }

    fn key(&self, table: Table) -> String {
        format!("{}:{}", self.namespace, table.name())
    }

    fn connection(&mut self) -> Result<&mut Connection, StorageError> {
        if self.connection.is_none() {
            let connection = self.client.get_connection().map_err(|error| {
                StorageError(format!("cannot reach Redis at {}: {error}; is the server running?", self.url))
            })?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("connection set above"))
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
        Ok(snapshot)
    }

    fn commit(&mut self, writes: &[Write]) -> Result<(), StorageError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for write in writes {
            let key = self.key(write.table);
            match &write.value {
                Some(value) => pipe.hset(key, write.key.as_slice(), value.as_slice()).ignore(),
                None => pipe.hdel(key, write.key.as_slice()).ignore(),
            };
        }
        let url = self.url.clone();
        let result: redis::RedisResult<()> = pipe.query(self.connection()?);
        result.map_err(|error| {
            self.connection = None;
            StorageError(format!("Redis {url}: commit failed: {error}"))
        })
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
