//! What happened to one request, in one place: the word `X-Cache` shows,
//! the `result` label of the Prometheus metrics, and the monitor's kind of
//! a request ([`crate::monitor::series::Kind::Request`]) are all this enum.

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Served from the cache (also after a 304 revalidation).
    Hit,
    /// Looked up, not found (or expired), fetched from the app.
    Miss,
    /// Served from the cache after its freshness ran out (app unreachable).
    Stale,
    /// A GET/HEAD that did not use the cache (credentials, route disabled,
    /// store unavailable, or a response that may not be stored).
    Bypass,
    /// Not a cacheable request at all (method); passed through untouched.
    Pass,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Stale,
        Outcome::Bypass,
        Outcome::Pass,
    ];

    /// As `X-Cache` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
            Outcome::Bypass => "BYPASS",
            Outcome::Pass => "PASS",
        }
    }

    /// As metrics and the admin API name it.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
            Outcome::Pass => "pass",
        }
    }

    /// Served from the cache (fresh or stale).
    pub fn from_cache(self) -> bool {
        matches!(self, Outcome::Hit | Outcome::Stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_is_the_header_word_in_lower_case() {
        for o in Outcome::ALL {
            assert_eq!(o.label(), o.as_str().to_ascii_lowercase());
        }
    }
}
