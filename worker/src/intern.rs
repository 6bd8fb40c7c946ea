//! [`Interned`]: one shared copy of each distinct value (the resource sets,
//! runtime environments and function names that queued tasks would otherwise
//! each hold).

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Distinct values, shared. They are few (a program's resource shapes and
/// environments) and kept for the process's life.
#[derive(Debug)]
pub(crate) struct Interned<T: ?Sized>(Mutex<HashSet<Arc<T>>>);

impl<T: ?Sized> Default for Interned<T> {
    fn default() -> Self {
        Self(Mutex::new(HashSet::new()))
    }
}

impl<T: Hash + Eq> Interned<T> {
    /// The shared copy of `value`.
    pub(crate) fn get(&self, value: T) -> Arc<T> {
        let mut known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(shared) = known.get(&value) {
            return shared.clone();
        }
        let shared = Arc::new(value);
        known.insert(shared.clone());
        shared
    }
}

impl Interned<str> {
    /// The shared copy of `text` (function descriptors and task names).
    pub(crate) fn text(&self, text: &str) -> Arc<str> {
        let mut known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(shared) = known.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        known.insert(shared.clone());
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy() {
        let interned = Interned::default();
        let (a, b, c) = (interned.get("cpu".to_string()), interned.get("cpu".to_string()), interned.get("gpu".into()));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        let names = Interned::<str>::default();
        assert!(Arc::ptr_eq(&names.text("f"), &names.text("f")));
    }
}
