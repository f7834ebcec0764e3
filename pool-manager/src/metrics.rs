//! Prometheus metrics of the router and the pools: requests and their latency
//! per function and status, cold starts by where the instance came from, and the
//! instances per environment and state (refreshed when scraped).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub function: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ColdStartLabels {
    pub function: String,
    /// `pool` (a warm generic instance) or `spawn` (a new process).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub environment: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExitLabels {
    pub environment: String,
    /// `stopped` (by Fusion), `out_of_memory`, `exited` (by itself: a crash,
    /// a signal) or `vanished`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvironmentLabels {
    pub environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// `succeeded`, `cached` or `failed`.
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

pub struct PoolMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    pub cold_starts: Family<ColdStartLabels, Counter>,
    pub cold_start_seconds: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    pub instances: Family<InstanceLabels, Gauge>,
    pub abandoned: Family<FunctionLabels, Counter>,
    pub instance_exits: Family<ExitLabels, Counter>,
    pub start_failures: Family<EnvironmentLabels, Counter>,
    pub builds: Family<BuildLabels, Counter>,
    /// Requests in line for capacity, per function (refreshed when scraped).
    pub waiting: Family<FunctionLabels, Gauge>,
    /// Connections a function took over with a 101 (WebSockets), open now.
    pub websockets: Family<FunctionLabels, Gauge>,
    /// Packages removed because nothing used them, and their bytes.
    pub packages_pruned: Counter,
    pub package_bytes_pruned: Counter,
}

impl Default for PoolMetrics {
    fn default() -> Self {
        PoolMetrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            cold_starts: Family::default(),
            cold_start_seconds: Family::new_with_constructor(latency_histogram),
            instances: Family::default(),
            abandoned: Family::default(),
            instance_exits: Family::default(),
            start_failures: Family::default(),
            builds: Family::default(),
            waiting: Family::default(),
            websockets: Family::default(),
            packages_pruned: Counter::default(),
            package_bytes_pruned: Counter::default(),
        }
    }
}

impl PoolMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fusion_function_requests",
            "Requests sent to functions, by function and HTTP status",
            self.requests.clone(),
        );
        registry.register(
            "fusion_function_request_seconds",
            "Time until a function's response headers, including any cold start",
            self.request_seconds.clone(),
        );
        registry.register(
            "fusion_cold_starts",
            "Instances specialized for a function, by source (pool or spawn)",
            self.cold_starts.clone(),
        );
        registry.register(
            "fusion_cold_start_seconds",
            "Time to get a specialized instance when none was free",
            self.cold_start_seconds.clone(),
        );
        registry.register(
            "fusion_instances",
            "Running instances by environment and state",
            self.instances.clone(),
        );
        registry.register(
            "fusion_function_requests_abandoned",
            "Requests whose caller went away before the function answered; each \
             holds its instance until the function does (or its timeout passes)",
            self.abandoned.clone(),
        );
        registry.register(
            "fusion_instance_exits",
            "Instances that ended, by environment and reason: stopped (by Fusion), \
             out_of_memory, exited (by themselves: a crash or a signal) or vanished",
            self.instance_exits.clone(),
        );
        registry.register(
            "fusion_instance_start_failures",
            "Instances that failed to start, by environment",
            self.start_failures.clone(),
        );
        registry.register(
            "fusion_package_builds",
            "Package builds that ended, by outcome (succeeded, cached, failed)",
            self.builds.clone(),
        );
        registry.register(
            "fusion_function_requests_waiting",
            "Requests waiting in line for an instance of a function at its max scale, \
             served in the order they came",
            self.waiting.clone(),
        );
        registry.register(
            "fusion_function_websockets_open",
            "Connections a function took over with a 101 (WebSockets) and still \
             holds, each with its instance's lease",
            self.websockets.clone(),
        );
        registry.register(
            "fusion_packages_pruned",
            "Packages (functions' code) removed because no function, package or \
             instance used them any more",
            self.packages_pruned.clone(),
        );
        registry.register(
            "fusion_package_bytes_pruned",
            "Bytes of the packages removed because nothing used them",
            self.package_bytes_pruned.clone(),
        );
    }
}

/// One function's request series, taken from the families once and kept with
/// the function's pool, so that a request neither copies nor hashes its labels.
#[derive(Debug, Default)]
pub struct FunctionMetrics {
    seconds: OnceLock<Histogram>,
    /// The request counter per status seen so far (a handful).
    codes: RwLock<Vec<(u16, Counter)>>,
    /// How many failed calls the function's log says, one line each.
    pub failure_lines: FailureLines,
}

/// The lines of failed calls a function's log takes: at most `PER_SECOND` a
/// second; the rest are counted and said with the next line, so a storm of
/// 5xx answers neither fills the log (pushing out what the function wrote)
/// nor costs a write each.
#[derive(Debug, Default)]
pub struct FailureLines {
    second: AtomicU64,
    listed: AtomicU64,
    held: AtomicU64,
}

impl FailureLines {
    pub const PER_SECOND: u64 = 10;

    /// Whether a failure in `second` (any count of seconds) gets its line:
    /// then with how many were held back before it.
    pub fn admit(&self, second: u64) -> Option<u64> {
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.listed.store(0, Ordering::Relaxed);
        }
        if self.listed.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl FunctionMetrics {
    /// Requests answered so far, and how many of them with a 5xx. One whose
    /// caller went away unanswered (499) is neither: a caller's own short
    /// timeout says nothing of the function (a canary reads these).
    pub fn request_counts(&self) -> (u64, u64) {
        let codes = self.codes.read().unwrap_or_else(|p| p.into_inner());
        codes
            .iter()
            .filter(|(code, _)| *code != crate::router::CLIENT_CLOSED)
            .fold((0, 0), |(all, failed), (code, counter)| {
                let n = counter.get();
                (all + n, failed + if *code >= 500 { n } else { 0 })
            })
    }

    /// Counts one request of `function` answered with `code` after `seconds`.
    pub fn record(&self, m: &PoolMetrics, function: &str, code: u16, seconds: f64) {
        self.seconds
            .get_or_init(|| {
                let labels = FunctionLabels {
                    function: function.to_string(),
                };
                // Its abandoned-requests and WebSockets series, at 0 from
                // the first request.
                drop(m.abandoned.get_or_create(&labels));
                drop(m.websockets.get_or_create(&labels));
                m.request_seconds.get_or_create(&labels).clone()
            })
            .observe(seconds);
        let known = self
            .codes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, counter)| counter.inc());
        if known.is_none() {
            let counter = m
                .requests
                .get_or_create(&RequestLabels {
                    function: function.to_string(),
                    code,
                })
                .clone();
            counter.inc();
            let mut codes = self.codes.write().unwrap_or_else(|p| p.into_inner());
            if !codes.iter().any(|(c, _)| *c == code) {
                codes.push((code, counter));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FailureLines;

    /// Ten lines a second; what is held back is said with the next line.
    #[test]
    fn failure_lines_are_held_to_ten_a_second() {
        let lines = FailureLines::default();
        let first: Vec<Option<u64>> = (0..13).map(|_| lines.admit(100)).collect();
        assert_eq!(first[..10], [Some(0); 10]);
        assert_eq!(first[10..], [None; 3]);
        assert_eq!(
            lines.admit(101),
            Some(3),
            "the next second's first says the three"
        );
        assert_eq!(lines.admit(101), Some(0));
    }
}
