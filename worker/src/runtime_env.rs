//! The runtime environment of a job, task or actor (today: environment variables).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A runtime environment, as Ray's `runtime_env` dict: `{"env_vars": {"K": "V"}}`.
/// Job-level variables are inherited by every task and actor of the job;
/// task- or actor-level ones merge over them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeEnv {
    /// Environment variables.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
}

impl RuntimeEnv {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one variable.
    pub fn env_var(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env_vars.insert(key.into(), value.into());
        self
    }

    /// Parses the JSON form, e.g. `{"env_vars": {"counter_name": "test_counter"}}`.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|error| {
            Error::InvalidArgument(format!(
                "runtime_env is not valid: {error}; expected e.g. {{\"env_vars\": {{\"KEY\": \"value\"}}}}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_form_and_refuses_unknown_fields() {
        let env = RuntimeEnv::from_json(r#"{"env_vars": {"counter_name": "test_counter"}}"#).unwrap();
        assert_eq!(env.env_vars["counter_name"], "test_counter");
        assert!(RuntimeEnv::from_json(r#"{"pip": ["x"]}"#).is_err());
        assert!(RuntimeEnv::from_json(r#"{"env_vars": {"n": 1}}"#).is_err());
        assert!(RuntimeEnv::from_json("not json").is_err());
    }
}
