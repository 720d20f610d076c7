//! What the coordinator counts as it happens (operations ended, detections
//! decided, reports accepted), as opposed to the gauges a scrape derives
//! from the fleet's state. Counters live as long as the process: summed
//! over both coordinators they give the fleet's totals.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    cluster: String,
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectionLabels {
    cluster: String,
    outcome: String,
}

/// What became of a primary detected dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// A failover started.
    Failover,
    /// Maintenance, automatic failover off, or a flavor that cannot fail over.
    Skipped,
    /// Automatic failover held until `dbfleet ack`.
    Held,
    /// The anti-flap budget was spent (and automatic failover is now held).
    Budget,
    /// The pre-hook vetoed it.
    Vetoed,
    /// The fleet-wide breaker: too many clusters looked dead at once.
    Breaker,
}

impl Detection {
    fn as_str(self) -> &'static str {
        match self {
            Detection::Failover => "failover",
            Detection::Skipped => "skipped",
            Detection::Held => "held",
            Detection::Budget => "budget",
            Detection::Vetoed => "vetoed",
            Detection::Breaker => "breaker",
        }
    }
}

/// Upper bounds of the report-processing histogram, in seconds: accepting
/// a report is memory work (sub-millisecond) unless it registers an agent,
/// which waits for a flushed sled write.
const REPORT_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

/// The coordinator's counters, shared by the failover machinery, the
/// report service and the metrics endpoint.
#[derive(Debug, Clone)]
pub struct Counters {
    operations: Family<OperationLabels, Counter>,
    detections: Family<DetectionLabels, Counter>,
    report_processing: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            operations: Family::default(),
            detections: Family::default(),
            report_processing: Histogram::new(REPORT_BUCKETS),
        }
    }
}

impl Counters {
    /// A failover or switchover of `cluster` ended with `outcome`
    /// (`completed`, `blocked`, `aborted` or `failed`).
    pub fn operation_ended(&self, cluster: &str, kind: &str, outcome: &str) {
        self.operations
            .get_or_create(&OperationLabels {
                cluster: cluster.to_string(),
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// A dead primary of `cluster` was decided upon.
    pub fn detected(&self, cluster: &str, outcome: Detection) {
        self.detections
            .get_or_create(&DetectionLabels {
                cluster: cluster.to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
    }

    /// One report was accepted (or refused) after `took`.
    pub fn report_processed(&self, took: Duration) {
        self.report_processing.observe(took.as_secs_f64());
    }

    /// Adds the counters to a scrape's registry (they share their values).
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "operations",
            "Failovers and switchovers run by this coordinator, by outcome",
            self.operations.clone(),
        );
        registry.register(
            "detections",
            "Primaries detected dead and what this coordinator decided (failover, skipped, held, budget, vetoed, breaker)",
            self.detections.clone(),
        );
        registry.register(
            "report_processing_seconds",
            "Time to validate and accept one agent report",
            self.report_processing.clone(),
        );
    }
}
