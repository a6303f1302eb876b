//! Wall-clock time as freshgate writes it: RFC 3339 for people and JSON,
//! seconds or milliseconds since the Unix epoch for counters, buckets and
//! Redis. A leaf: it imports nothing from the crate. (The invalidation clock
//! in `store::clock` is a logical clock, not this.)

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-11-30T01:27:06.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `#[serde(serialize_with = ...)]` for a `SystemTime` as RFC 3339.
pub fn serialize_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// Whole seconds since the epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Seconds since the epoch with their fraction, as Prometheus timestamps are.
pub fn unix_secs_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Whole seconds since the epoch, now.
pub fn now_secs() -> u64 {
    unix_secs(SystemTime::now())
}

/// Milliseconds since the epoch, now.
pub fn now_millis() -> u64 {
    unix_millis(SystemTime::now())
}

/// Milliseconds since the epoch (0 before it).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_formats_agree() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_466_026_123);
        assert_eq!(rfc3339(t), "2025-11-30T01:27:06.123Z");
        assert_eq!(unix_secs(t), 1_764_466_026);
        assert_eq!(unix_millis(t), 1_764_466_026_123);
        assert!((unix_secs_f64(t) - 1_764_466_026.123).abs() < 1e-3);
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!((unix_secs(before), unix_millis(before)), (0, 0));
    }
}
