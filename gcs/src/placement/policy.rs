//! Where a placement group's bundles go: one pure function over the nodes' free
//! resources, one branch per strategy.

use manta_proto::NodeId;
use manta_proto::placement::PlacementStrategy;
use manta_proto::resources::ResourceSet;

/// Chooses a node for every bundle not yet placed (`placed[i] = None`), or says
/// why it cannot. `available` is what each alive node has free, ordered by node id;
/// it is not changed. Bundles already placed keep their nodes (a rescheduled group).
pub fn place(
    bundles: &[ResourceSet],
    placed: &[Option<NodeId>],
    strategy: PlacementStrategy,
    available: &[(NodeId, ResourceSet)],
) -> Result<Vec<NodeId>, String> {
    let mut free: Vec<(NodeId, ResourceSet)> = available.to_vec();
    let mut result: Vec<Option<NodeId>> = placed.to_vec();
    result.resize(bundles.len(), None);
    let used = |result: &[Option<NodeId>], node: NodeId| result.iter().filter(|placed| **placed == Some(node)).count();
    let fits = |free: &ResourceSet, bundle: &ResourceSet| bundle.iter().all(|(name, amount)| free.get(name) >= amount);
    let take = |free: &mut ResourceSet, bundle: &ResourceSet| {
        for (name, amount) in bundle.iter() {
            let left = free.get(name).saturating_sub(amount);
            free.set(name.to_string(), left);
        }
    };
    let todo: Vec<usize> = (0..bundles.len()).filter(|index| result[*index].is_none()).collect();
    if strategy == PlacementStrategy::Pack
        && let Ok(together) = place(bundles, placed, PlacementStrategy::StrictPack, available)
    {
        // All on one node when some node has room for all of them.
        return Ok(together);
    }
    match strategy {
        PlacementStrategy::StrictPack => {
            let mut total = ResourceSet::new();
            for index in &todo {
                for (name, amount) in bundles[*index].iter() {
                    total.set(name.to_string(), total.get(name).saturating_add(amount));
                }
            }
            // Where the others already are, if anywhere; else the first node with room for all.
            let anchor = result.iter().flatten().next().copied();
            let node = free
                .iter()
                .filter(|(node, _)| anchor.is_none_or(|anchor| anchor == *node))
                .find(|(_, free)| fits(free, &total))
                .map(|(node, _)| *node)
                .ok_or_else(|| "no single node has room for all the bundles together (STRICT_PACK)".to_string())?;
            for index in todo {
                result[index] = Some(node);
            }
        }
        PlacementStrategy::StrictSpread => {
            for index in todo {
                let node = free
                    .iter_mut()
                    .filter(|(node, _)| used(&result, *node) == 0)
                    .find(|(_, free)| fits(free, &bundles[index]));
                let Some((node, room)) = node else {
                    return Err(format!(
                        "bundle {index} needs a node of its own with room for it (STRICT_SPREAD over {} alive nodes)",
                        available.len()
                    ));
                };
                take(room, &bundles[index]);
                result[index] = Some(*node);
            }
        }
        PlacementStrategy::Pack | PlacementStrategy::Spread => {
            for index in todo {
                let bundle = &bundles[index];
                // PACK: the node already holding most bundles first; SPREAD: the least used.
                let mut candidates: Vec<usize> = (0..free.len()).filter(|at| fits(&free[*at].1, bundle)).collect();
                if candidates.is_empty() {
                    return Err(format!("no node has room for bundle {index} ({:?})", bundle.to_f64_map()));
                }
                candidates.sort_by_key(|at| {
                    let count = used(&result, free[*at].0) as i64;
                    if strategy == PlacementStrategy::Pack { -count } else { count }
                });
                let at = candidates[0];
                take(&mut free[at].1, bundle);
                result[index] = Some(free[at].0);
            }
        }
    }
    Ok(result.into_iter().map(|node| node.expect("every bundle placed")).collect())
}

#[cfg(test)]
mod tests {
    use manta_proto::resources::Quantity;

    use super::*;

    fn cpus(count: u64) -> ResourceSet {
        ResourceSet::new().with("CPU", Quantity::from_whole(count))
    }

    fn nodes(free: &[u64]) -> Vec<(NodeId, ResourceSet)> {
        let mut nodes: Vec<_> = free.iter().map(|count| (NodeId::random(), cpus(*count))).collect();
        nodes.sort_by_key(|(id, _)| *id);
        nodes
    }

    fn distinct(placed: &[NodeId]) -> usize {
        let mut unique = placed.to_vec();
        unique.sort();
        unique.dedup();
        unique.len()
    }

    #[test]
    fn pack_uses_as_few_nodes_as_possible_and_may_spill() {
        let view = nodes(&[4, 4, 4]);
        let placed = place(&[cpus(1), cpus(1), cpus(1)], &[None; 3], PlacementStrategy::Pack, &view).unwrap();
        assert_eq!(distinct(&placed), 1);
        let placed = place(&[cpus(3), cpus(3)], &[None; 2], PlacementStrategy::Pack, &view).unwrap();
        assert_eq!(distinct(&placed), 2, "does not fit on one node: spills");
    }

    #[test]
    fn spread_uses_distinct_nodes_while_it_can_and_overlaps_after() {
        let view = nodes(&[4, 4]);
        let placed = place(&[cpus(1), cpus(1)], &[None; 2], PlacementStrategy::Spread, &view).unwrap();
        assert_eq!(distinct(&placed), 2);
        let placed = place(&[cpus(1), cpus(1), cpus(1)], &[None; 3], PlacementStrategy::Spread, &view).unwrap();
        assert_eq!(distinct(&placed), 2, "three bundles over two nodes overlap");
    }

    #[test]
    fn strict_pack_needs_one_node_for_all() {
        let view = nodes(&[2, 2]);
        assert!(place(&[cpus(1), cpus(1)], &[None; 2], PlacementStrategy::StrictPack, &view).is_ok());
        let refused = place(&[cpus(2), cpus(1)], &[None; 2], PlacementStrategy::StrictPack, &view).unwrap_err();
        assert!(refused.contains("STRICT_PACK"), "{refused}");
    }

    #[test]
    fn strict_spread_needs_a_node_per_bundle() {
        let view = nodes(&[4, 4]);
        let placed = place(&[cpus(1), cpus(1)], &[None; 2], PlacementStrategy::StrictSpread, &view).unwrap();
        assert_eq!(distinct(&placed), 2);
        assert!(place(&[cpus(1), cpus(1), cpus(1)], &[None; 3], PlacementStrategy::StrictSpread, &view).is_err());
    }

    #[test]
    fn a_rescheduled_group_keeps_its_placed_bundles() {
        let view = nodes(&[4, 4, 4]);
        let kept = view[0].0;
        let placed = place(&[cpus(1), cpus(1)], &[Some(kept), None], PlacementStrategy::StrictSpread, &view).unwrap();
        assert_eq!(placed[0], kept);
        assert_ne!(placed[1], kept);
        let packed = place(&[cpus(1), cpus(1)], &[Some(kept), None], PlacementStrategy::StrictPack, &view).unwrap();
        assert_eq!(packed, vec![kept, kept]);
    }
}
