//! GPU instances of a node: which devices a lease gets.
//!
//! GPUs are unit-instance resources: a request above 1 must be whole and gets
//! that many whole devices; a fraction below 1 is packed onto one device
//! (the fullest that still fits, so whole devices stay free for whole requests).

use manta_proto::resources::Quantity;

/// Free share of each device, indexed by position in the node's device list.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuAllocator {
    /// Physical device ids (from the node's `CUDA_VISIBLE_DEVICES`, else 0..N).
    device_ids: Vec<String>,
    free: Vec<Quantity>,
}

/// Devices granted to one lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuGrant {
    /// Positions in the device list.
    pub slots: Vec<usize>,
    /// The share taken on each.
    pub share: Quantity,
}

impl GpuAllocator {
    /// `count` devices with the given physical ids (or 0..count when `None`).
    pub fn new(count: usize, visible: Option<Vec<String>>) -> Self {
        let device_ids = match visible {
            Some(ids) if ids.len() >= count => ids.into_iter().take(count).collect(),
            _ => (0..count).map(|index| index.to_string()).collect(),
        };
        Self { device_ids, free: vec![Quantity::from_whole(1); count] }
    }

    /// Checks a request: more than one GPU must be a whole number.
    pub fn validate(amount: Quantity) -> Result<(), String> {
        let one = Quantity::from_whole(1);
        if amount > one && amount.units() % one.units() != 0 {
            return Err(format!(
                "num_gpus = {amount} is not allowed: more than one GPU must be a whole number (fractions pack onto one device)"
            ));
        }
        Ok(())
    }

    /// Takes devices for `amount` GPUs, or `None` when they are not free now.
    pub fn allocate(&mut self, amount: Quantity) -> Option<GpuGrant> {
        if amount.is_zero() {
            return Some(GpuGrant::default());
        }
        let one = Quantity::from_whole(1);
        if amount >= one {
            let wanted = (amount.units() / one.units()) as usize;
            let slots: Vec<usize> = (0..self.free.len()).filter(|slot| self.free[*slot] == one).take(wanted).collect();
            if slots.len() < wanted {
                return None;
            }
            for slot in &slots {
                self.free[*slot] = Quantity::ZERO;
            }
            return Some(GpuGrant { slots, share: one });
        }
        let slot =
            (0..self.free.len()).filter(|slot| self.free[*slot] >= amount).min_by_key(|slot| self.free[*slot])?;
        self.free[slot] = self.free[slot].saturating_sub(amount);
        Some(GpuGrant { slots: vec![slot], share: amount })
    }

    /// Gives a grant back.
    pub fn release(&mut self, grant: &GpuGrant) {
        for slot in &grant.slots {
            if let Some(free) = self.free.get_mut(*slot) {
                *free = free.saturating_add(grant.share).min(Quantity::from_whole(1));
            }
        }
    }

    /// The physical ids of a grant, as `CUDA_VISIBLE_DEVICES` wants them.
    pub fn visible_devices(&self, grant: &GpuGrant) -> String {
        grant.slots.iter().filter_map(|slot| self.device_ids.get(*slot).cloned()).collect::<Vec<_>>().join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(value: f64) -> Quantity {
        Quantity::from_f64(value).unwrap()
    }

    #[test]
    fn whole_requests_take_whole_devices() {
        let mut allocator = GpuAllocator::new(3, None);
        let first = allocator.allocate(gpus(1.0)).unwrap();
        let second = allocator.allocate(gpus(2.0)).unwrap();
        assert_eq!(allocator.visible_devices(&first), "0");
        assert_eq!(allocator.visible_devices(&second), "1,2");
        assert!(allocator.allocate(gpus(1.0)).is_none());
        allocator.release(&second);
        let again = allocator.allocate(gpus(1.0)).unwrap();
        assert_eq!(allocator.visible_devices(&again), "1");
    }

    #[test]
    fn fractions_pack_onto_one_device() {
        let mut allocator = GpuAllocator::new(2, None);
        let quarter = allocator.allocate(gpus(0.25)).unwrap();
        let half = allocator.allocate(gpus(0.5)).unwrap();
        assert_eq!(quarter.slots, half.slots, "packed onto the same device");
        let whole = allocator.allocate(gpus(1.0)).unwrap();
        assert_ne!(whole.slots, quarter.slots, "the other device stayed whole");
        assert!(allocator.allocate(gpus(0.5)).is_none(), "0.25 left on the shared device");
        assert!(allocator.allocate(gpus(0.25)).is_some());
        allocator.release(&half);
        assert!(allocator.allocate(gpus(0.5)).is_some());
    }

    #[test]
    fn maps_through_the_nodes_visible_devices_and_validates() {
        let mut allocator = GpuAllocator::new(2, Some(vec!["1".into(), "3".into()]));
        let both = allocator.allocate(gpus(2.0)).unwrap();
        assert_eq!(allocator.visible_devices(&both), "1,3");
        assert!(GpuAllocator::validate(gpus(1.5)).is_err());
        assert!(GpuAllocator::validate(gpus(2.0)).is_ok());
        assert!(GpuAllocator::validate(gpus(0.5)).is_ok());
    }
}
