//! The validated `monitoring:` section: alert thresholds and what the admin
//! API keeps. Schema-side types: `monitor` reads them, config never reads
//! `monitor`.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
    Critical,
}

/// What a threshold is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// (hits + stale) / (hits + stale + misses); alerts when *below*.
    HitRate,
    /// 95th percentile of request duration, seconds; alerts when above.
    P95,
    /// Mean request duration, seconds; alerts when above.
    Average,
    /// Share of responses with a 5xx status; alerts when above.
    ErrorRate,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::HitRate => "hit_rate",
            Metric::P95 => "p95",
            Metric::Average => "average",
            Metric::ErrorRate => "error_rate",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub metric: Metric,
    pub severity: Severity,
    pub value: f64,
}

/// The validated `monitoring:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitoringConfig {
    /// Alerts and the `/api/monitoring` summary look at this much recent traffic.
    pub window: Duration,
    pub evaluate_every: Duration,
    pub min_requests: u64,
    /// Recent operations kept for `/api/operations`.
    pub operations: usize,
    pub thresholds: Vec<Threshold>,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            window: Duration::from_secs(300),
            evaluate_every: Duration::from_secs(10),
            min_requests: 20,
            operations: 500,
            thresholds: default_thresholds(),
        }
    }
}

pub fn default_thresholds() -> Vec<Threshold> {
    use Metric::*;
    use Severity::*;
    [
        (HitRate, Critical, 0.30),
        (HitRate, Warning, 0.70),
        (P95, Critical, 2.0),
        (Average, Warning, 0.2),
        (ErrorRate, Critical, 0.05),
        (ErrorRate, Warning, 0.01),
    ]
    .into_iter()
    .map(|(metric, severity, value)| Threshold {
        metric,
        severity,
        value,
    })
    .collect()
}
