//! Prometheus metrics of the engine: runs started and finished per workflow (and
//! final status), how long finished runs took, and the store's flushes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowLabels {
    pub workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunEndLabels {
    pub workflow: String,
    pub status: &'static str,
}

fn run_histogram() -> Histogram {
    // 1 ms .. ~9 h
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

pub struct EngineMetrics {
    pub runs_started: Family<WorkflowLabels, Counter>,
    /// Runs a previous server left unfinished, continued by this one (they
    /// were counted as started by the server that started them).
    pub runs_resumed: Family<WorkflowLabels, Counter>,
    pub runs_finished: Family<RunEndLabels, Counter>,
    pub run_seconds: Family<WorkflowLabels, Histogram, fn() -> Histogram>,
    /// Flushes of the store to disk (each serves every run waiting then).
    pub store_flushes: Counter,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            runs_started: Family::default(),
            runs_resumed: Family::default(),
            runs_finished: Family::default(),
            run_seconds: Family::new_with_constructor(run_histogram),
            store_flushes: Counter::default(),
        }
    }
}

impl EngineMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fusion_runs_started",
            "Workflow runs started, by workflow",
            self.runs_started.clone(),
        );
        registry.register(
            "fusion_runs_resumed",
            "Workflow runs a previous server left unfinished, continued by this one, by workflow",
            self.runs_resumed.clone(),
        );
        registry.register(
            "fusion_runs_finished",
            "Workflow runs finished, by workflow and final status",
            self.runs_finished.clone(),
        );
        registry.register(
            "fusion_run_seconds",
            "Duration of finished runs, by workflow",
            self.run_seconds.clone(),
        );
        registry.register(
            "fusion_store_flushes",
            "Flushes of the run store to disk; one serves every run waiting for it",
            self.store_flushes.clone(),
        );
    }
}
