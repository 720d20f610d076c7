//! Metric families built per scrape from cached values, and their text
//! exposition through prometheus-client's encoder (names, label escaping,
//! `# HELP`/`# TYPE`, OpenMetrics framing).

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// How Prometheus treats a family's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Goes up and down.
    Gauge,
    /// Only goes up; the exposed name ends in `_total`.
    Counter,
    /// mysqld_exporter exports raw status values untyped; so do we, so
    /// that dashboards' `rate()`s and `irate()`s behave the same.
    Untyped,
}

/// One metric family and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The exposed name (a counter's ends in `_total`).
    pub name: String,
    /// `# HELP` text.
    pub help: String,
    /// Its type.
    pub kind: Kind,
    /// Label pairs and value of each sample.
    pub samples: Vec<(Vec<(String, String)>, f64)>,
}

impl Family {
    /// An empty family.
    pub fn new(name: impl Into<String>, help: impl Into<String>, kind: Kind) -> Family {
        Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    /// A family of one sample.
    pub fn single(
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: f64,
    ) -> Family {
        let mut f = Family::new(name, help, kind);
        f.push(labels, value);
        f
    }

    /// Adds a sample.
    pub fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        self.samples.push((
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        ));
    }

    /// The value of the sample whose labels include all of `labels`.
    pub fn value(&self, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(have, _)| {
                labels
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, v)| *v)
    }
}

#[derive(Debug)]
struct Families(Vec<Family>);

impl prometheus_client::collector::Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let (name, kind) = match f.kind {
                Kind::Gauge => (f.name.as_str(), MetricType::Gauge),
                Kind::Untyped => (f.name.as_str(), MetricType::Unknown),
                Kind::Counter => (
                    f.name.strip_suffix("_total").unwrap_or(&f.name),
                    MetricType::Counter,
                ),
            };
            let encode = |value: f64, sample: MetricEncoder<'_>| match f.kind {
                Kind::Counter => ConstCounter::new(value).encode(sample),
                Kind::Gauge | Kind::Untyped => ConstGauge::new(value).encode(sample),
            };
            let mut family = encoder.encode_descriptor(name, &f.help, None, kind)?;
            match f.samples.as_slice() {
                [(labels, value)] if labels.is_empty() => encode(*value, family)?,
                samples => {
                    for (labels, value) in samples {
                        encode(*value, family.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The text exposition of `families` (a name appearing twice keeps its
/// first family: exposition forbids duplicates).
pub fn render(mut families: Vec<Family>) -> String {
    let mut seen = std::collections::HashSet::new();
    families.retain(|f| seen.insert(f.name.clone()));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot encode metrics");
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_types_labels_and_counter_suffix() {
        let mut commands = Family::new(
            "mysql_global_status_commands_total",
            "Commands.",
            Kind::Counter,
        );
        commands.push(&[("command", "select")], 7.0);
        let text = render(vec![
            Family::single("mysql_up", "Up.", Kind::Gauge, &[], 1.0),
            commands,
            Family::single(
                "mysql_global_status_uptime",
                "Uptime.",
                Kind::Untyped,
                &[],
                42.0,
            ),
            Family::single("mysql_up", "Again.", Kind::Gauge, &[], 0.0),
        ]);
        assert!(text.contains("# TYPE mysql_up gauge\nmysql_up 1"), "{text}");
        assert!(!text.contains("mysql_up 0"), "{text}");
        assert!(
            text.contains("mysql_global_status_commands_total{command=\"select\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mysql_global_status_uptime unknown"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
