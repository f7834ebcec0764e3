//! The task graph of a workflow (petgraph): cycle detection that names the tasks
//! on a cycle, and topological order.

use std::collections::BTreeMap;

use petgraph::algo::{kosaraju_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

/// Edges go from a dependency to the task that requires it. Unknown dependencies
/// are left out (validation reports them separately).
pub struct TaskGraph<'a> {
    graph: DiGraph<&'a str, ()>,
}

impl<'a> TaskGraph<'a> {
    pub fn new<I>(tasks: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a [String])>,
    {
        let tasks: Vec<(&str, &[String])> = tasks.into_iter().collect();
        let mut graph = DiGraph::new();
        let mut index: BTreeMap<&str, NodeIndex> = BTreeMap::new();
        for (id, _) in &tasks {
            index.insert(id, graph.add_node(*id));
        }
        for (id, requires) in &tasks {
            for dep in requires.iter() {
                if let Some(&from) = index.get(dep.as_str()) {
                    graph.add_edge(from, index[id], ());
                }
            }
        }
        TaskGraph { graph }
    }

    /// Every cycle, each as the task ids on it (sorted, then rotated so the
    /// smallest id comes first), in a stable order. Kosaraju's walk, not
    /// Tarjan's: petgraph's Tarjan recurses once per task of a chain, and a
    /// few thousand tasks in a row (a `repeat`'s) overflowed the stack.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = kosaraju_scc(&self.graph)
            .into_iter()
            .filter(|scc| scc.len() > 1 || self.graph.find_edge(scc[0], scc[0]).is_some())
            .map(|scc| {
                let mut ids: Vec<String> = scc.iter().map(|n| self.graph[*n].to_string()).collect();
                ids.sort();
                ids
            })
            .collect();
        out.sort();
        out
    }

    /// Task ids in an order where every task comes after its dependencies, or the
    /// id of a task on a cycle.
    pub fn topological(&self) -> Result<Vec<String>, String> {
        toposort(&self.graph, None)
            .map(|order| order.iter().map(|n| self.graph[*n].to_string()).collect())
            .map_err(|c| self.graph[c.node_id()].to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(edges: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        edges
            .iter()
            .map(|(id, reqs)| (id.to_string(), reqs.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn finds_cycle_members() {
        let g = graph(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &["a"])]);
        let tg = TaskGraph::new(g.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        assert_eq!(tg.cycles(), vec![vec!["a", "b", "c"]]);
        assert!(tg.topological().is_err());
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let g = graph(&[("a", &["a"])]);
        let tg = TaskGraph::new(g.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        assert_eq!(tg.cycles(), vec![vec!["a"]]);
    }

    /// A chain as long as a run can hold (`repeat`'s tasks require each
    /// other in a row) is walked without a call per task on the stack.
    #[test]
    fn a_long_chain_is_walked_without_recursion() {
        let n = crate::driver::MAX_TASKS_PER_RUN;
        let g: Vec<(String, Vec<String>)> = (0..n)
            .map(|i| {
                let reqs = if i == 0 {
                    vec![]
                } else {
                    vec![format!("t{}", i - 1)]
                };
                (format!("t{i}"), reqs)
            })
            .collect();
        let tg = TaskGraph::new(g.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        assert!(tg.cycles().is_empty());
        assert_eq!(tg.topological().unwrap().len(), n);
        let mut closed = g;
        closed[0].1.push(format!("t{}", n - 1));
        let tg = TaskGraph::new(closed.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        assert_eq!(tg.cycles().len(), 1);
        assert_eq!(tg.cycles()[0].len(), n);
    }

    proptest! {
        // Edges only from lower to higher index: never a cycle, and the order
        // puts every dependency first.
        #[test]
        fn acyclic_graphs_sort(n in 1usize..20, seed in proptest::collection::vec(any::<bool>(), 400)) {
            let mut g = Vec::new();
            for i in 0..n {
                let reqs: Vec<String> = (0..i).filter(|j| seed[i * 20 + j]).map(|j| format!("t{j}")).collect();
                g.push((format!("t{i}"), reqs));
            }
            let tg = TaskGraph::new(g.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
            prop_assert!(tg.cycles().is_empty());
            let order = tg.topological().unwrap();
            let pos = |id: &str| order.iter().position(|x| x == id).unwrap();
            for (id, reqs) in &g {
                for r in reqs { prop_assert!(pos(r) < pos(id)); }
            }
        }
    }
}
