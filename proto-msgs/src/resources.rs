//! Resource quantities and sets.
//!
//! Quantities are fixed-point with a resolution of 0.0001 (as in Ray), so
//! adding and subtracting fractional requests never drifts. On the wire a
//! quantity is a plain float, which keeps the format readable from any language.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Well-known resource names.
pub mod names {
    /// Logical CPU cores.
    pub const CPU: &str = "CPU";
    /// GPU devices.
    pub const GPU: &str = "GPU";
    /// Bytes of memory for tasks and actors.
    pub const MEMORY: &str = "memory";
    /// Bytes of the node's object store.
    pub const OBJECT_STORE_MEMORY: &str = "object_store_memory";
    /// Prefix of the per-node resource `node:<ip>`.
    pub const NODE_PREFIX: &str = "node:";
    /// Prefix of the accelerator resource a GPU node offers (`accelerator_type:A100` = 1);
    /// a task asking for that accelerator asks for 0.001 of it, as in Ray.
    pub const ACCELERATOR_TYPE_PREFIX: &str = "accelerator_type:";
    /// Names a user may not set through `--resources`.
    pub const RESERVED: [&str; 4] = [CPU, GPU, MEMORY, OBJECT_STORE_MEMORY];
}

/// A non-negative fixed-point resource quantity (0.0001 resolution).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(i64);

impl Quantity {
    /// Number of fixed-point units in 1.0.
    pub const SCALE: i64 = 10_000;
    /// Zero.
    pub const ZERO: Quantity = Quantity(0);

    /// A whole number of units.
    pub const fn from_whole(value: u64) -> Self {
        Quantity(value as i64 * Self::SCALE)
    }

    /// Converts a float, rounding to the nearest 0.0001. `None` for negative,
    /// non-finite or too-large values.
    pub fn from_f64(value: f64) -> Option<Self> {
        if !value.is_finite() || value < 0.0 || value > (i64::MAX / Self::SCALE) as f64 {
            return None;
        }
        Some(Quantity((value * Self::SCALE as f64).round() as i64))
    }

    /// From raw units of 1/`SCALE`.
    pub const fn from_units(units: i64) -> Self {
        Quantity(units)
    }

    /// As a float (for display and JSON).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE as f64
    }

    /// Raw fixed-point units.
    pub fn units(self) -> i64 {
        self.0
    }

    /// Subtraction clamped at zero.
    pub fn saturating_sub(self, other: Quantity) -> Quantity {
        Quantity((self.0 - other.0).max(0))
    }

    /// Addition.
    pub fn saturating_add(self, other: Quantity) -> Quantity {
        Quantity(self.0.saturating_add(other.0))
    }

    /// True for zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_f64())
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % Self::SCALE == 0 { write!(f, "{:.1}", self.as_f64()) } else { write!(f, "{}", self.as_f64()) }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        Quantity::from_f64(value)
            .ok_or_else(|| serde::de::Error::custom(format!("resource quantity {value} must be a finite number >= 0")))
    }
}

/// A map from resource name to quantity. Zero entries are kept out.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResourceSet(BTreeMap<String, Quantity>);

impl ResourceSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `quantity` (removing it when zero).
    pub fn set(&mut self, name: impl Into<String>, quantity: Quantity) {
        let name = name.into();
        if quantity.is_zero() {
            self.0.remove(&name);
        } else {
            self.0.insert(name, quantity);
        }
    }

    /// Builder form of [`ResourceSet::set`].
    pub fn with(mut self, name: impl Into<String>, quantity: Quantity) -> Self {
        self.set(name, quantity);
        self
    }

    /// The quantity of `name` (zero when absent).
    pub fn get(&self, name: &str) -> Quantity {
        self.0.get(name).copied().unwrap_or_default()
    }

    /// Iterates over non-zero entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Quantity)> {
        self.0.iter().map(|(name, quantity)| (name.as_str(), *quantity))
    }

    /// True when every quantity in `request` is available here.
    pub fn contains(&self, request: &ResourceSet) -> bool {
        request.iter().all(|(name, quantity)| self.get(name) >= quantity)
    }

    /// Keeps only the resources whose name passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|name, _| keep(name));
    }

    /// Number of named resources.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no resource is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The set as name → float, for JSON output.
    pub fn to_f64_map(&self) -> BTreeMap<String, f64> {
        self.iter().map(|(name, quantity)| (name.to_string(), quantity.as_f64())).collect()
    }
}

impl fmt::Debug for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl FromIterator<(String, Quantity)> for ResourceSet {
    fn from_iter<I: IntoIterator<Item = (String, Quantity)>>(iter: I) -> Self {
        let mut set = ResourceSet::new();
        for (name, quantity) in iter {
            set.set(name, quantity);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_has_no_drift() {
        let tenth = Quantity::from_f64(0.1).unwrap();
        let mut total = Quantity::ZERO;
        for _ in 0..10 {
            total = total.saturating_add(tenth);
        }
        assert_eq!(total, Quantity::from_whole(1));
    }

    #[test]
    fn rejects_negative_and_nan() {
        assert!(Quantity::from_f64(-1.0).is_none());
        assert!(Quantity::from_f64(f64::NAN).is_none());
        assert!(Quantity::from_f64(f64::INFINITY).is_none());
    }

    #[test]
    fn set_drops_zero_and_checks_containment() {
        let total = ResourceSet::new()
            .with("CPU", Quantity::from_whole(4))
            .with("custom", Quantity::from_f64(0.5).unwrap())
            .with("GPU", Quantity::ZERO);
        assert_eq!(total.len(), 2);
        let request = ResourceSet::new().with("CPU", Quantity::from_whole(2));
        assert!(total.contains(&request));
        assert!(!request.contains(&total));
    }

    #[test]
    fn msgpack_round_trip_and_bad_values() {
        let set = ResourceSet::new().with("CPU", Quantity::from_f64(1.5).unwrap());
        let bytes = rmp_serde::to_vec_named(&set).unwrap();
        assert_eq!(rmp_serde::from_slice::<ResourceSet>(&bytes).unwrap(), set);
        let negative = rmp_serde::to_vec_named(&BTreeMap::from([("CPU", -1.0)])).unwrap();
        assert!(rmp_serde::from_slice::<ResourceSet>(&negative).is_err());
    }
}
