//! Server-side filtering and paging of the state tables, as Ray's state API
//! takes it (`filter_keys`/`filter_predicates`/`filter_values`, `limit`), plus
//! an `offset` for paging the dashboard's lists. The GCS applies a query to its
//! tables where they live, so a page of 50 out of 100,000 tasks costs one scan
//! and sends 50 rows, never the whole history.
//!
//! Filter keys are the JSON field names of the state API's rows; each table
//! says which keys it can filter on ([`StateRow::KEYS`]), and a query naming
//! another key is refused with the list.

use serde::{Deserialize, Serialize};

use crate::job::JobRecord;
use crate::placement::PlacementGroupInfo;
use crate::task::{ActorRecord, TaskRecord};

/// The most rows one query may ask for (Ray's `RAY_MAX_LIMIT_FROM_API_SERVER`).
pub const MAX_LIMIT: usize = 10_000;

/// How a filter compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterOp {
    /// `=`: the field equals the value.
    Eq,
    /// `!=`: the field differs from the value.
    Ne,
}

impl FilterOp {
    /// Parses Ray's predicate text (`=` or `!=`).
    pub fn parse(text: &str) -> Result<FilterOp, String> {
        match text {
            "=" => Ok(FilterOp::Eq),
            "!=" => Ok(FilterOp::Ne),
            other => Err(format!("filter predicate {other:?} is not supported; use = or !=")),
        }
    }
}

/// One `key op value` filter. Values compare as text; states compare without case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFilter {
    /// A row field.
    pub key: String,
    /// How to compare.
    pub op: FilterOp,
    /// The text to compare with (`null` matches a missing field).
    pub value: String,
}

impl StateFilter {
    /// Parses `key=value` or `key!=value` (the CLI's `--filter`).
    pub fn parse(text: &str) -> Result<StateFilter, String> {
        let (key, op, value) = match text.split_once("!=") {
            Some((key, value)) => (key, FilterOp::Ne, value),
            None => {
                let (key, value) =
                    text.split_once('=').ok_or_else(|| format!("filter {text:?} is not key=value or key!=value"))?;
                (key, FilterOp::Eq, value)
            }
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("filter {text:?} has an empty key"));
        }
        Ok(StateFilter { key: key.to_string(), op, value: value.trim().to_string() })
    }

    /// True when `field` (absent: `None`) passes the filter.
    pub fn passes(&self, field: Option<&str>) -> bool {
        let equal = match field {
            None => self.value.is_empty() || self.value == "null",
            Some(text) if self.key == "state" || self.key.ends_with("_state") => text.eq_ignore_ascii_case(&self.value),
            Some(text) => text == self.value,
        };
        equal == (self.op == FilterOp::Eq)
    }
}

/// Which rows of a table, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateQuery {
    /// Every filter must pass.
    pub filters: Vec<StateFilter>,
    /// Rows skipped (newest first) before the page starts.
    pub offset: usize,
    /// At most this many rows.
    pub limit: usize,
}

/// A page of a table: its rows, newest first, and counts for the pager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<R> {
    /// The rows.
    pub rows: Vec<R>,
    /// Rows in the table.
    pub total: usize,
    /// Rows that passed the filters.
    pub matched: usize,
}

/// A row type the GCS can filter: its filterable fields by JSON name.
pub trait StateRow {
    /// The keys [`StateRow::field`] answers.
    const KEYS: &'static [&'static str];
    /// The field's text, `None` when it has no value.
    fn field(&self, key: &str) -> Option<String>;
}

impl StateQuery {
    /// A query for the newest `limit` rows.
    pub fn newest(limit: usize) -> StateQuery {
        StateQuery { filters: Vec::new(), offset: 0, limit }
    }

    /// Refuses keys the row type cannot filter on, and limits over [`MAX_LIMIT`].
    pub fn check<R: StateRow>(&self) -> Result<(), String> {
        if self.limit > MAX_LIMIT {
            return Err(format!("limit {} is over the most rows one query returns, {MAX_LIMIT}", self.limit));
        }
        match self.filters.iter().find(|filter| !R::KEYS.contains(&filter.key.as_str())) {
            Some(filter) => Err(format!("cannot filter on {:?}; the keys are {}", filter.key, R::KEYS.join(", "))),
            None => Ok(()),
        }
    }

    /// True when the row passes every filter.
    pub fn passes<R: StateRow>(&self, row: &R) -> bool {
        self.filters.iter().all(|filter| filter.passes(row.field(&filter.key).as_deref()))
    }

    /// The page of `newest_first`, whose length is `total`; rows are cloned
    /// only when they land on the page.
    pub fn page<'a, R: StateRow + Clone + 'a>(
        &self,
        newest_first: impl Iterator<Item = &'a R>,
        total: usize,
    ) -> Page<R> {
        let mut rows = Vec::new();
        let mut matched = 0;
        for row in newest_first.filter(|row| self.passes(*row)) {
            if matched >= self.offset && rows.len() < self.limit {
                rows.push(row.clone());
            }
            matched += 1;
        }
        Page { rows, total, matched }
    }
}

fn text(value: impl ToString) -> Option<String> {
    Some(value.to_string())
}

impl StateRow for TaskRecord {
    const KEYS: &'static [&'static str] =
        &["task_id", "name", "func_or_class_name", "state", "job_id", "node_id", "worker_id", "actor_id", "type"];

    fn field(&self, key: &str) -> Option<String> {
        match key {
            "task_id" => text(self.task_id),
            "name" | "func_or_class_name" => text(&self.name),
            "state" => text(self.state.as_str()),
            "job_id" => text(self.job_id),
            "node_id" => self.node_id.map(|id| id.to_string()),
            "worker_id" => self.worker_id.map(|id| id.to_string()),
            "actor_id" => self.actor_id.map(|id| id.to_string()),
            "type" => text(if self.actor_id.is_some() { "ACTOR_TASK" } else { "NORMAL_TASK" }),
            _ => None,
        }
    }
}

impl ActorRecord {
    /// The class's short name (`Counter`, not the module path or registry key).
    pub fn class_name(&self) -> &str {
        let class = self.info.class.split('#').next().unwrap_or_default();
        class.rsplit("::").next().unwrap_or_default()
    }
}

impl StateRow for ActorRecord {
    const KEYS: &'static [&'static str] =
        &["actor_id", "class_name", "state", "name", "ray_namespace", "job_id", "node_id", "worker_id", "is_detached"];

    fn field(&self, key: &str) -> Option<String> {
        let info = &self.info;
        match key {
            "actor_id" => text(info.actor_id),
            "class_name" => text(self.class_name()),
            "state" => text(self.state.as_str()),
            "name" => info.name.clone(),
            "ray_namespace" => text(&info.namespace),
            "job_id" => text(info.job_id),
            "node_id" => text(info.worker.node_id),
            "worker_id" => text(info.worker.worker_id),
            "is_detached" => text(info.detached),
            _ => None,
        }
    }
}

impl StateRow for PlacementGroupInfo {
    const KEYS: &'static [&'static str] =
        &["placement_group_id", "name", "ray_namespace", "state", "strategy", "creator_job_id", "is_detached"];

    fn field(&self, key: &str) -> Option<String> {
        match key {
            "placement_group_id" => text(self.spec.pg_id),
            "name" => self.spec.name.clone(),
            "ray_namespace" => text(&self.spec.namespace),
            "state" => text(self.state.as_str()),
            "strategy" => text(self.spec.strategy.as_str()),
            "creator_job_id" => text(self.spec.job_id),
            "is_detached" => text(self.spec.detached),
            _ => None,
        }
    }
}

impl StateRow for JobRecord {
    const KEYS: &'static [&'static str] = &["job_id", "state", "namespace", "driver_pid"];

    fn field(&self, key: &str) -> Option<String> {
        match key {
            "job_id" => text(self.job_id),
            "state" => text(self.state.as_str()),
            "namespace" => text(&self.namespace),
            "driver_pid" => text(self.driver_pid),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Row(u32, &'static str);

    impl StateRow for Row {
        const KEYS: &'static [&'static str] = &["n", "state"];
        fn field(&self, key: &str) -> Option<String> {
            match key {
                "n" => Some(self.0.to_string()),
                "state" => Some(self.1.to_string()),
                _ => None,
            }
        }
    }

    #[test]
    fn filters_parse_and_compare() {
        let equal = StateFilter::parse("state=running").unwrap();
        assert_eq!(equal.op, FilterOp::Eq);
        assert!(equal.passes(Some("RUNNING")), "states compare without case");
        let differ = StateFilter::parse("name != f").unwrap();
        assert_eq!((differ.key.as_str(), differ.value.as_str(), differ.op), ("name", "f", FilterOp::Ne));
        assert!(!differ.passes(Some("f")));
        assert!(differ.passes(None));
        assert!(StateFilter::parse("name=null").unwrap().passes(None));
        assert!(StateFilter::parse("novalue").is_err());
        assert!(StateFilter::parse("=x").is_err());
        assert!(FilterOp::parse("~").is_err());
    }

    #[test]
    fn pages_count_every_match_and_clone_only_the_page() {
        let rows: Vec<Row> = (0..10).map(|n| Row(n, if n % 2 == 0 { "EVEN" } else { "ODD" })).collect();
        let query = StateQuery { filters: vec![StateFilter::parse("state=even").unwrap()], offset: 1, limit: 2 };
        let page = query.page(rows.iter().rev(), rows.len());
        assert_eq!(page.rows, vec![Row(6, "EVEN"), Row(4, "EVEN")]);
        assert_eq!((page.total, page.matched), (10, 5));
        let past_the_end = StateQuery { offset: 50, ..query };
        assert!(past_the_end.page(rows.iter(), 10).rows.is_empty());
    }

    #[test]
    fn unknown_keys_and_huge_limits_are_refused() {
        let query = StateQuery { filters: vec![StateFilter::parse("colour=red").unwrap()], ..StateQuery::newest(5) };
        let error = query.check::<Row>().unwrap_err();
        assert!(error.contains("\"colour\"") && error.contains("n, state"), "{error}");
        assert!(StateQuery::newest(MAX_LIMIT + 1).check::<Row>().unwrap_err().contains("10000"));
        assert!(StateQuery::newest(MAX_LIMIT).check::<Row>().is_ok());
    }
}
