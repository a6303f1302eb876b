//! Alerts: thresholds from the `monitoring:` section, evaluated over a recent
//! window of this replica's traffic, with a bounded history.
//!
//! The default thresholds are the app team's rollout guide's: critical when
//! the hit rate is below 30%, P95 above 2 s or the error rate above 5%;
//! warning when the hit rate is below 70%, the average above 200 ms or the
//! error rate above 1%. `deploy/prometheus/alerts.yml` has the same rules
//! for Prometheus users. Rate alerts need `min_requests` in the window, so an
//! idle replica is not "critical" because of three misses at night.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use serde::Serialize;

use super::series::Stat;
pub use crate::config::{default_thresholds, Metric, MonitoringConfig, Severity, Threshold};
use crate::time::rfc3339;

/// Alerts kept in the history (active and cleared).
const HISTORY: usize = 200;

/// Traffic over the alert window.
#[derive(Debug, Default, Clone)]
pub struct Window {
    /// Every proxied request, merged (count, errors, latency).
    pub all: Stat,
    pub hits: u64,
    pub misses: u64,
}

impl Window {
    pub fn hit_rate(&self) -> Option<f64> {
        let lookups = self.hits + self.misses;
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.all.count > 0).then(|| self.all.errors as f64 / self.all.count as f64)
    }
}

/// Conditions that are not thresholds on traffic.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// Redis is configured and has been unusable for a few seconds for any
    /// reason but a rollout (`RedisTier::unusable_for`: unreachable, breaker
    /// open, outage being cleared, invalidations owed, heartbeat old, rules
    /// it will not settle): requests pass through.
    pub redis_down: bool,
    /// Redis is usable, but for `RULES_MIXED_ALERT_AFTER` replicas have been
    /// heard running other rules (`RedisTier::rules_mixed_for`): every
    /// replica passes reads through until they agree. Not `redis_down`:
    /// Redis is fine, and a rollout that never ends is a replica left on
    /// other rules.
    pub rules_mixed: bool,
    /// The last config reload was rejected (the old config keeps serving).
    pub reload_failed: Option<String>,
}

/// A condition that holds now: (name, severity, message, value, threshold).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub name: &'static str,
    pub severity: Severity,
    pub message: String,
    pub value: f64,
    pub threshold: f64,
}

/// Every condition that holds, the most severe per metric.
pub fn evaluate(cfg: &MonitoringConfig, w: &Window, state: &State) -> Vec<Condition> {
    let mut out: BTreeMap<Metric, Condition> = BTreeMap::new();
    let window = humantime::format_duration(cfg.window);
    for t in &cfg.thresholds {
        let (value, breached, message) = match t.metric {
            Metric::HitRate => {
                let Some(v) = w
                    .hit_rate()
                    .filter(|_| w.hits + w.misses >= cfg.min_requests)
                else {
                    continue;
                };
                (
                    v,
                    v < t.value,
                    format!(
                        "hit rate {:.1}% is below {:.0}% over the last {window}",
                        v * 100.0,
                        t.value * 100.0
                    ),
                )
            }
            Metric::ErrorRate => {
                let Some(v) = w.error_rate().filter(|_| w.all.count >= cfg.min_requests) else {
                    continue;
                };
                (
                    v,
                    v > t.value,
                    format!(
                        "error rate {:.1}% is above {:.1}% over the last {window}",
                        v * 100.0,
                        t.value * 100.0
                    ),
                )
            }
            Metric::P95 | Metric::Average => {
                if w.all.count < cfg.min_requests {
                    continue;
                }
                let (v, what) = if t.metric == Metric::P95 {
                    (w.all.quantile_ms(0.95) / 1000.0, "P95 response time")
                } else {
                    (w.all.mean_ms() / 1000.0, "average response time")
                };
                (
                    v,
                    v > t.value,
                    format!(
                        "{what} {:.0} ms is above {:.0} ms over the last {window}",
                        v * 1000.0,
                        t.value * 1000.0
                    ),
                )
            }
        };
        if !breached {
            continue;
        }
        let c = Condition {
            name: t.metric.name(),
            severity: t.severity,
            message,
            value,
            threshold: t.value,
        };
        match out.get(&t.metric) {
            Some(old) if old.severity >= c.severity => {}
            _ => {
                out.insert(t.metric, c);
            }
        }
    }
    let mut list: Vec<Condition> = out.into_values().collect();
    if state.redis_down {
        list.push(Condition {
            name: "redis_down",
            severity: Severity::Error,
            message: "Redis is unreachable: requests pass through to the app uncached".into(),
            value: 1.0,
            threshold: 1.0,
        });
    }
    if state.rules_mixed {
        list.push(Condition {
            name: "rules_mixed",
            severity: Severity::Warning,
            message: "replicas run different rules (a rollout, or a replica left on other \
                      rules): every replica passes reads through to the app and writes \
                      invalidate everything until they agree"
                .into(),
            value: 1.0,
            threshold: 1.0,
        });
    }
    if let Some(err) = &state.reload_failed {
        list.push(Condition {
            name: "config_reload_failed",
            severity: Severity::Warning,
            message: format!("the last config reload was rejected (old config serving): {err}"),
            value: 1.0,
            threshold: 1.0,
        });
    }
    list
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub id: u64,
    pub name: &'static str,
    pub severity: Severity,
    pub message: String,
    pub value: f64,
    pub threshold: f64,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub raised_at: SystemTime,
    #[serde(serialize_with = "ser_opt_time")]
    pub cleared_at: Option<SystemTime>,
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

/// Active alerts and the history of raised and cleared ones.
#[derive(Debug, Default)]
pub struct Alerts {
    next_id: u64,
    /// By (name, severity): a change of severity clears one alert and raises another.
    active: BTreeMap<(&'static str, Severity), Alert>,
    /// Newest first.
    history: VecDeque<Alert>,
}

impl Alerts {
    /// Apply the conditions that hold now: raise new alerts, refresh the
    /// values of active ones, clear the rest. Returns (raised, cleared).
    pub fn apply(&mut self, now: SystemTime, conditions: Vec<Condition>) -> (usize, usize) {
        let mut raised = 0;
        let mut keep = BTreeMap::new();
        for c in conditions {
            let key = (c.name, c.severity);
            let alert = match self.active.remove(&key) {
                Some(mut a) => {
                    a.message = c.message;
                    a.value = c.value;
                    a
                }
                None => {
                    raised += 1;
                    self.next_id += 1;
                    let a = Alert {
                        id: self.next_id,
                        name: c.name,
                        severity: c.severity,
                        message: c.message,
                        value: c.value,
                        threshold: c.threshold,
                        raised_at: now,
                        cleared_at: None,
                    };
                    tracing::warn!(alert = a.name, severity = ?a.severity, "{}", a.message);
                    self.history.push_front(a.clone());
                    self.history.truncate(HISTORY);
                    a
                }
            };
            keep.insert(key, alert);
        }
        let cleared = self.active.len();
        for (_, a) in std::mem::replace(&mut self.active, keep) {
            tracing::info!(alert = a.name, severity = ?a.severity, "alert cleared");
            if let Some(h) = self.history.iter_mut().find(|h| h.id == a.id) {
                h.cleared_at = Some(now);
            }
        }
        (raised, cleared)
    }

    /// Active alerts, most severe first.
    pub fn active(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.active.values().cloned().collect();
        v.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
        v
    }

    pub fn history(&self) -> Vec<Alert> {
        self.history.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn window(hits: u64, misses: u64, ms: u64, errors: u64) -> Window {
        let mut all = Stat::default();
        for i in 0..hits + misses {
            all.observe(ms * 1000, i < errors);
        }
        Window { all, hits, misses }
    }

    #[test]
    fn mixed_rules_are_a_warning_of_their_own_not_redis_down() {
        let cfg = MonitoringConfig::default();
        let state = State {
            rules_mixed: true,
            ..State::default()
        };
        let got: Vec<_> = evaluate(&cfg, &window(90, 10, 10, 0), &state)
            .iter()
            .map(|c| (c.name, c.severity))
            .collect();
        assert_eq!(got, [("rules_mixed", Severity::Warning)]);
    }

    #[test]
    fn default_thresholds_follow_the_rollout_guide() {
        let cfg = MonitoringConfig::default();
        let ok = evaluate(&cfg, &window(90, 10, 10, 0), &State::default());
        assert!(ok.is_empty(), "{ok:?}");
        let low = evaluate(&cfg, &window(50, 50, 10, 0), &State::default());
        assert_eq!(low.len(), 1);
        assert_eq!(
            (low[0].name, low[0].severity),
            ("hit_rate", Severity::Warning)
        );
        let very_low = evaluate(&cfg, &window(20, 80, 10, 0), &State::default());
        assert_eq!(very_low[0].severity, Severity::Critical);
        let slow = evaluate(&cfg, &window(90, 10, 2600, 10), &State::default());
        let names: Vec<_> = slow.iter().map(|c| (c.name, c.severity)).collect();
        assert!(names.contains(&("p95", Severity::Critical)), "{names:?}");
        assert!(names.contains(&("average", Severity::Warning)), "{names:?}");
        assert!(
            names.contains(&("error_rate", Severity::Critical)),
            "{names:?}"
        );
        // Too little traffic: no rate alerts.
        assert!(evaluate(&cfg, &window(1, 9, 10, 0), &State::default()).is_empty());
    }

    #[test]
    fn raise_refresh_clear_and_history() {
        let mut alerts = Alerts::default();
        let cfg = MonitoringConfig::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let low = evaluate(&cfg, &window(50, 50, 10, 0), &State::default());
        assert_eq!(alerts.apply(t0, low.clone()), (1, 0));
        assert_eq!(alerts.apply(t0, low), (0, 0));
        assert_eq!(alerts.active().len(), 1);
        assert_eq!(alerts.apply(t0 + Duration::from_secs(60), vec![]), (0, 1));
        assert!(alerts.active().is_empty());
        let h = alerts.history();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].cleared_at, Some(t0 + Duration::from_secs(60)));
    }
}
