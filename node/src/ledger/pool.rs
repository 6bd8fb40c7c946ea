//! [`ResourcePool`]: a node's total and available resources, the one place
//! their arithmetic is written. Taking more than is free, or giving back more
//! than was taken, is a bug in the caller: debug builds stop on it (release
//! builds clamp, so a bug never makes a node offer resources it does not have).

use manta_proto::resources::{Quantity, ResourceSet};

/// Total and available resources of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourcePool {
    total: ResourceSet,
    available: ResourceSet,
}

impl ResourcePool {
    /// A pool with everything free.
    pub fn new(total: ResourceSet) -> Self {
        Self { available: total.clone(), total }
    }

    /// What the node has.
    pub fn total(&self) -> &ResourceSet {
        &self.total
    }

    /// What is free now.
    pub fn available(&self) -> &ResourceSet {
        &self.available
    }

    /// True when `amount` is free now.
    pub fn can_acquire(&self, amount: &ResourceSet) -> bool {
        self.available.contains(amount)
    }

    /// Takes `amount`, which must be free.
    pub fn acquire(&mut self, amount: &ResourceSet) {
        for (name, quantity) in amount.iter() {
            let free = self.available.get(name);
            debug_assert!(free >= quantity, "acquiring {quantity} {name} with only {free} free");
            self.available.set(name, free.saturating_sub(quantity));
        }
    }

    /// Takes as much of `amount` as is free; returns what was taken.
    pub fn acquire_up_to(&mut self, amount: &ResourceSet) -> ResourceSet {
        let taken: ResourceSet =
            amount.iter().map(|(name, quantity)| (name.to_string(), quantity.min(self.available.get(name)))).collect();
        self.acquire(&taken);
        taken
    }

    /// Gives `amount` back. Resources the node no longer has (a removed placement
    /// group's bundle resources) are dropped; for the others, giving back more than
    /// was taken is a bug.
    pub fn release(&mut self, amount: &ResourceSet) {
        for (name, quantity) in amount.iter() {
            let total = self.total.get(name);
            if total.is_zero() {
                continue;
            }
            let free = self.available.get(name).saturating_add(quantity);
            debug_assert!(free <= total, "releasing {quantity} {name} makes {free} free of {total}");
            self.available.set(name, free.min(total));
        }
    }

    /// Adds resources to the node, free (a committed bundle's resources).
    pub fn grow(&mut self, amount: &ResourceSet) {
        for (name, quantity) in amount.iter() {
            self.total.set(name, self.total.get(name).saturating_add(quantity));
            self.available.set(name, self.available.get(name).saturating_add(quantity));
        }
    }

    /// Removes every resource whose name passes `gone`, held or not (a removed
    /// bundle's resources: what held them is ended).
    pub fn remove(&mut self, gone: impl Fn(&str) -> bool) {
        self.total.retain(|name| !gone(name));
        self.available.retain(|name| !gone(name));
    }

    /// What is held: total minus available, per resource.
    pub fn held(&self) -> ResourceSet {
        self.total
            .iter()
            .map(|(name, total)| (name.to_string(), total.saturating_sub(self.available.get(name))))
            .filter(|(_, held): &(String, Quantity)| !held.is_zero())
            .collect()
    }
}

/// The sum of several sets.
pub fn sum<'a>(sets: impl IntoIterator<Item = &'a ResourceSet>) -> ResourceSet {
    let mut total = ResourceSet::new();
    for set in sets {
        for (name, quantity) in set.iter() {
            total.set(name, total.get(name).saturating_add(quantity));
        }
    }
    total
}

/// `from` minus `amount`, per resource (never below zero).
pub fn difference(from: &ResourceSet, amount: &ResourceSet) -> ResourceSet {
    from.iter().map(|(name, quantity)| (name.to_string(), quantity.saturating_sub(amount.get(name)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(count: u64) -> ResourceSet {
        ResourceSet::new().with("CPU", Quantity::from_whole(count))
    }

    #[test]
    fn acquire_and_release_keep_available_within_total() {
        let mut pool = ResourcePool::new(cpus(4));
        pool.acquire(&cpus(3));
        assert_eq!(pool.available(), &cpus(1));
        assert!(!pool.can_acquire(&cpus(2)));
        assert_eq!(pool.acquire_up_to(&cpus(2)), cpus(1));
        assert_eq!(pool.held(), cpus(4));
        pool.release(&cpus(4));
        assert_eq!(pool.available(), &cpus(4));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "makes 5.0 free of 4.0")]
    fn a_double_release_is_caught_in_debug_builds() {
        let mut pool = ResourcePool::new(cpus(4));
        pool.acquire(&cpus(1));
        pool.release(&cpus(1));
        pool.release(&cpus(1));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "with only 4.0 free")]
    fn over_acquiring_is_caught_in_debug_builds() {
        ResourcePool::new(cpus(4)).acquire(&cpus(5));
    }

    #[test]
    fn removed_resources_are_not_given_back() {
        let bundle = ResourceSet::new().with("CPU_group_x", Quantity::from_whole(1));
        let mut pool = ResourcePool::new(cpus(2));
        pool.grow(&bundle);
        pool.acquire(&bundle);
        pool.remove(|name| name == "CPU_group_x");
        pool.release(&bundle);
        assert_eq!(pool.total(), &cpus(2));
        assert_eq!(pool.available(), &cpus(2));
    }
}
