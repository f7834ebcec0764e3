//! The triggers' figures on `/metrics`: time triggers' firings by outcome
//! (counted as they end), and each message-queue trigger's messages by
//! outcome, its redeliveries and whether it consumes, read from its status at
//! each scrape (counted since the server started, as every counter is).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::mqt::State;
use crate::Triggers;

/// A time trigger's firings that ended, by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FiringLabels {
    /// The trigger (`name`, or `namespace/name` outside `default`).
    pub trigger: String,
    /// `succeeded` or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    trigger: String,
    outcome: &'static str,
}

/// Reads the message-queue triggers' statuses at each scrape.
pub struct MqtCollector(Arc<Triggers>);

impl MqtCollector {
    pub fn new(triggers: Arc<Triggers>) -> MqtCollector {
        MqtCollector(triggers)
    }
}

impl std::fmt::Debug for MqtCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MqtCollector")
    }
}

impl Collector for MqtCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A store that cannot be read now has no figures to give.
        let Ok(views) = self.0.mqt.list() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "fusion_mqtrigger_messages",
            "Messages a message-queue trigger settled since the server started, by outcome: succeeded (answered 2xx, the answer published), failed (no 2xx after its retries, reported), unpublished (an outcome that could not be published)",
            None,
            MetricType::Counter,
        )?;
        for v in &views {
            let s = &v.status;
            for (outcome, n) in [
                ("succeeded", s.succeeded),
                ("failed", s.failed),
                ("unpublished", s.unpublished),
            ] {
                let labels = OutcomeLabels {
                    trigger: v.trigger.key(),
                    outcome,
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "fusion_mqtrigger_redeliveries",
            "Messages NATS delivered to a message-queue trigger again (an earlier delivery not acked in time, or handed back) since the server started",
            None,
            MetricType::Counter,
        )?;
        for v in &views {
            let labels = TriggerLabels {
                trigger: v.trigger.key(),
            };
            ConstCounter::new(v.status.redelivered).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "fusion_mqtrigger_consuming",
            "1 while a message-queue trigger consumes (state running), 0 while it connects or is in error (its status says why)",
            None,
            MetricType::Gauge,
        )?;
        for v in &views {
            let labels = TriggerLabels {
                trigger: v.trigger.key(),
            };
            let up = i64::from(v.status.state == State::Running);
            ConstGauge::new(up).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
