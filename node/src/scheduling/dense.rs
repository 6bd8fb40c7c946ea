//! A dense form of the nodes' resources, built once per cluster-view change, so a
//! decision costs a few integer comparisons per node instead of string-keyed map
//! lookups. CPU, GPU, memory and object store memory are fixed columns; other
//! resources (custom ones, `node:<ip>`, bundle resources) are interned to column
//! numbers and kept per node in a short sorted list.

use std::collections::HashMap;

use manta_proto::NodeId;
use manta_proto::resources::{ResourceSet, names};

use super::NodeView;

const FIXED: [&str; 4] = [names::CPU, names::GPU, names::MEMORY, names::OBJECT_STORE_MEMORY];
const GPU_COLUMN: usize = 1;

/// One node's row.
#[derive(Debug, Clone)]
struct Row {
    node_id: NodeId,
    total: [i64; 4],
    available: [i64; 4],
    /// (column, total, available), sorted by column.
    extra: Vec<(u32, i64, i64)>,
    utilization: f64,
}

/// A request in the view's columns.
#[derive(Debug, Clone)]
pub struct DenseRequest {
    fixed: [i64; 4],
    extra: Vec<(u32, i64)>,
    /// Names no node has: infeasible everywhere.
    unknown: bool,
    wants_gpus: bool,
}

impl DenseRequest {
    /// True when the request asks for GPUs.
    pub fn wants_gpus(&self) -> bool {
        self.wants_gpus
    }
}

/// The nodes' resources, dense.
#[derive(Debug, Clone, Default)]
pub struct DenseView {
    columns: HashMap<String, u32>,
    /// Column number → name.
    names: Vec<String>,
    rows: Vec<Row>,
    /// Row indices ordered by node id (SPREAD's order).
    by_id: Vec<usize>,
}

fn fixed_column(name: &str) -> Option<usize> {
    FIXED.iter().position(|fixed| *fixed == name)
}

/// Critical-resource utilization over CPU, memory and object store memory.
fn utilization(total: &[i64; 4], available: &[i64; 4]) -> f64 {
    [0usize, 2, 3]
        .iter()
        .filter(|column| total[**column] > 0)
        .map(|column| 1.0 - available[*column] as f64 / total[*column] as f64)
        .fold(0.0, f64::max)
}

impl DenseView {
    /// Builds the view of `nodes` (in their order).
    pub fn build(nodes: &[NodeView]) -> Self {
        let mut view = DenseView {
            columns: HashMap::new(),
            names: Vec::new(),
            rows: Vec::with_capacity(nodes.len()),
            by_id: Vec::new(),
        };
        for node in nodes {
            let mut row =
                Row { node_id: node.node_id, total: [0; 4], available: [0; 4], extra: Vec::new(), utilization: 0.0 };
            for (name, amount) in node.total.iter() {
                match fixed_column(name) {
                    Some(column) => row.total[column] = amount.units(),
                    None => {
                        let column = match view.columns.get(name) {
                            Some(column) => *column,
                            None => {
                                let column = view.names.len() as u32;
                                view.columns.insert(name.to_string(), column);
                                view.names.push(name.to_string());
                                column
                            }
                        };
                        row.extra.push((column, amount.units(), node.available.get(name).units()));
                    }
                }
            }
            for (column, name) in FIXED.iter().enumerate() {
                row.available[column] = node.available.get(name).units();
            }
            row.extra.sort_unstable_by_key(|(column, _, _)| *column);
            row.utilization = utilization(&row.total, &row.available);
            view.rows.push(row);
        }
        view.by_id = (0..view.rows.len()).collect();
        view.by_id.sort_by_key(|index| view.rows[*index].node_id);
        view
    }

    /// Node `index` now has `available` free (the local node between decisions, or a
    /// node work was just sent to). Resources not in the view are ignored.
    pub fn update_available(&mut self, index: usize, available: &ResourceSet) {
        let row = &mut self.rows[index];
        for (column, name) in FIXED.iter().enumerate() {
            row.available[column] = available.get(name).units();
        }
        for (column, _, free) in row.extra.iter_mut() {
            *free = available.get(&self.names[*column as usize]).units();
        }
        row.utilization = utilization(&row.total, &row.available);
    }

    /// Row indices in node-id order.
    pub fn by_id(&self) -> &[usize] {
        &self.by_id
    }

    /// `request` in this view's columns.
    pub fn request(&self, request: &ResourceSet) -> DenseRequest {
        let mut dense = DenseRequest { fixed: [0; 4], extra: Vec::new(), unknown: false, wants_gpus: false };
        for (name, amount) in request.iter() {
            if amount.is_zero() {
                continue;
            }
            match fixed_column(name) {
                Some(column) => dense.fixed[column] = amount.units(),
                None => match self.columns.get(name) {
                    Some(column) => dense.extra.push((*column, amount.units())),
                    None => dense.unknown = true,
                },
            }
        }
        dense.extra.sort_unstable_by_key(|(column, _)| *column);
        dense.wants_gpus = dense.fixed[GPU_COLUMN] > 0;
        dense
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the view has no node.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Node `index`'s id.
    pub fn node_id(&self, index: usize) -> NodeId {
        self.rows[index].node_id
    }

    /// Index of `node_id`.
    pub fn index_of(&self, node_id: NodeId) -> Option<usize> {
        self.rows.iter().position(|row| row.node_id == node_id)
    }

    fn fits(row: &Row, request: &DenseRequest, available: bool) -> bool {
        if request.unknown {
            return false;
        }
        let have = if available { &row.available } else { &row.total };
        if (0..4).any(|column| have[column] < request.fixed[column]) {
            return false;
        }
        request.extra.iter().all(|(column, amount)| {
            match row.extra.binary_search_by_key(column, |(extra, _, _)| *extra) {
                Ok(at) => {
                    let (_, total, free) = row.extra[at];
                    (if available { free } else { total }) >= *amount
                }
                Err(_) => false,
            }
        })
    }

    /// The request could ever run on node `index`.
    pub fn feasible(&self, index: usize, request: &DenseRequest) -> bool {
        Self::fits(&self.rows[index], request, false)
    }

    /// The request fits what node `index` has free now.
    pub fn available_for(&self, index: usize, request: &DenseRequest) -> bool {
        Self::fits(&self.rows[index], request, true)
    }

    /// Node `index`'s critical-resource utilization.
    pub fn utilization(&self, index: usize) -> f64 {
        self.rows[index].utilization
    }

    /// Node `index` has GPUs.
    pub fn has_gpus(&self, index: usize) -> bool {
        self.rows[index].total[GPU_COLUMN] > 0
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::resources::Quantity;

    use super::*;
    use crate::scheduling::testing::{cpus, node};

    #[test]
    fn checks_match_the_map_based_view_and_follow_updates() {
        let mut custom = node(1, 4, 2, 1);
        custom.total.set("disk", Quantity::from_whole(2));
        custom.available.set("disk", Quantity::from_whole(1));
        let nodes = vec![custom.clone(), node(2, 2, 0, 0)];
        let mut view = DenseView::build(&nodes);
        let requests = [
            cpus(1),
            cpus(3),
            ResourceSet::new().with("disk", Quantity::from_whole(1)),
            ResourceSet::new().with("disk", Quantity::from_whole(2)),
            ResourceSet::new().with("unobtainium", Quantity::from_whole(1)),
        ];
        for request in &requests {
            let dense = view.request(request);
            for (index, node) in nodes.iter().enumerate() {
                assert_eq!(view.feasible(index, &dense), node.feasible(request), "{request:?} on {index}");
                assert_eq!(view.available_for(index, &dense), node.available_for(request), "{request:?} on {index}");
            }
        }
        assert!((view.utilization(0) - custom.utilization()).abs() < 1e-9);
        assert!(view.has_gpus(0) && !view.has_gpus(1));
        let mut busy = custom.available.clone();
        busy.set("disk", Quantity::ZERO);
        view.update_available(0, &busy);
        assert!(!view.available_for(0, &view.request(&requests[2])));
        assert_eq!(view.by_id(), &[0, 1]);
    }
}
