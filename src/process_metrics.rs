//! The server process's own metrics on `/metrics`, named as every Prometheus
//! client names them (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds` ...), read from `/proc` at each scrape, and
//! `fusion_build_info`: what dashboards and alerts written for any service
//! expect (a leak, an fd limit near, a restart, a version rolled out).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads the process's figures at each scrape.
#[derive(Debug)]
pub struct ProcessCollector {
    /// The backend instances run on, a label of `fusion_build_info`.
    backend: &'static str,
}

impl ProcessCollector {
    pub fn new(backend: &'static str) -> ProcessCollector {
        ProcessCollector { backend }
    }
}

/// Writes one gauge, when the system told its value.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<u64>,
) -> Result<(), std::fmt::Error> {
    let Some(v) = value else { return Ok(()) };
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = metrics_process::collector::collect();
        if let Some(cpu) = m.cpu_seconds_total {
            let c = ConstCounter::new(cpu);
            // The encoder adds the counter's `_total`.
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                c.metric_type(),
            )?)?;
        }
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            m.open_fds,
        )?;
        gauge(
            &mut encoder,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            m.max_fds,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            m.virtual_memory_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            m.resident_memory_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            m.start_time_seconds,
        )?;
        gauge(
            &mut encoder,
            "process_threads",
            "Number of OS threads in the process.",
            m.threads,
        )?;
        let info = ConstGauge::new(1i64);
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("backend", self.backend),
        ];
        let mut family = encoder.encode_descriptor(
            "fusion_build_info",
            "The server's version and the backend its instances run on (always 1).",
            None,
            info.metric_type(),
        )?;
        info.encode(family.encode_family(&labels)?)
    }
}
