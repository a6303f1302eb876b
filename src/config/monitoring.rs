//! The validated `monitoring:` section: alert thresholds and what the admin
//! API keeps, and their validation. Schema-side types: `monitor` reads
//! them, config never reads `monitor`.

use std::time::Duration;

use serde::Serialize;

use super::schema::{Dur, RawLevels, RawMonitoring};

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

pub(super) fn validate_monitoring(
    raw: RawMonitoring,
    problem: &mut impl FnMut(&str, String),
) -> MonitoringConfig {
    let d = MonitoringConfig::default();
    let mut m = MonitoringConfig {
        window: raw.window.map_or(d.window, |x| x.0),
        evaluate_every: raw.evaluate_every.map_or(d.evaluate_every, |x| x.0),
        min_requests: raw.min_requests.unwrap_or(d.min_requests),
        operations: raw.operations.unwrap_or(d.operations),
        thresholds: Vec::new(),
    };
    if m.window < Duration::from_secs(1) {
        problem(
            "monitoring.window",
            "monitoring.window must be at least 1s".into(),
        );
    }
    if m.evaluate_every < Duration::from_millis(100) {
        problem(
            "monitoring.evaluate_every",
            "monitoring.evaluate_every must be at least 100ms".into(),
        );
    }
    if m.operations > 100_000 {
        problem(
            "monitoring.operations",
            "monitoring.operations must be at most 100000 (it is kept in memory)".into(),
        );
    }
    let a = raw.alerts;
    let fraction = |l: RawLevels<f64>| (l.critical, l.error, l.warning);
    let seconds = |l: RawLevels<Dur>| {
        (
            l.critical.map(|d| d.0.as_secs_f64()),
            l.error.map(|d| d.0.as_secs_f64()),
            l.warning.map(|d| d.0.as_secs_f64()),
        )
    };
    let given = [
        (Metric::HitRate, a.hit_rate.map(fraction)),
        (Metric::P95, a.p95.map(seconds)),
        (Metric::Average, a.average.map(seconds)),
        (Metric::ErrorRate, a.error_rate.map(fraction)),
    ];
    for (metric, levels) in given {
        let Some((critical, error, warning)) = levels else {
            m.thresholds.extend(
                default_thresholds()
                    .into_iter()
                    .filter(|t| t.metric == metric),
            );
            continue;
        };
        for (severity, key, value) in [
            (Severity::Critical, "critical", critical),
            (Severity::Error, "error", error),
            (Severity::Warning, "warning", warning),
        ] {
            let Some(value) = value else { continue };
            let is_rate = matches!(metric, Metric::HitRate | Metric::ErrorRate);
            if is_rate && !(0.0..=1.0).contains(&value) {
                problem(
                    &format!("monitoring.alerts.{}.{key}", metric.name()),
                    format!(
                        "monitoring.alerts.{}: {value} is not a fraction between 0 and 1 (0.7 means 70%)",
                        metric.name()
                    ),
                );
            }
            m.thresholds.push(Threshold {
                metric,
                severity,
                value,
            });
        }
    }
    m
}
