//! Successful writes that no invalidation rule matched (`GET
//! /api/unmatched-writes`): where stale data comes from.

use http::Method;

/// Writes that matched no invalidation rule, grouped by method and path
/// shape (ids folded to `:id`), for `GET /api/unmatched-writes`. Bounded: the
/// least recently seen shape is dropped when a new one does not fit.
#[derive(Debug, Default)]
pub struct UnmatchedWrites {
    seen: parking_lot::Mutex<std::collections::HashMap<String, Unmatched>>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unmatched {
    pub method: String,
    /// The path with id-like segments replaced by `:id`.
    pub shape: String,
    /// The cache route rule the path falls under, if any.
    pub route: Option<String>,
    pub count: u64,
    pub example: String,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub last_seen: std::time::SystemTime,
}

/// Shapes kept at most.
const UNMATCHED_KEPT: usize = 200;

impl UnmatchedWrites {
    pub fn note(&self, method: &Method, path: &str, route: Option<&str>) {
        let shape = path_shape(path);
        let key = format!("{method} {shape}");
        let now = std::time::SystemTime::now();
        let mut seen = self.seen.lock();
        if !seen.contains_key(&key) && seen.len() >= UNMATCHED_KEPT {
            if let Some(oldest) = seen
                .iter()
                .min_by_key(|(_, u)| u.last_seen)
                .map(|(k, _)| k.clone())
            {
                seen.remove(&oldest);
            }
        }
        let e = seen.entry(key).or_insert_with(|| Unmatched {
            method: method.to_string(),
            shape,
            route: None,
            count: 0,
            example: String::new(),
            last_seen: now,
        });
        e.count += 1;
        e.route = route.map(str::to_string);
        e.example = path.to_string();
        e.last_seen = now;
    }

    /// Most frequent first.
    pub fn list(&self) -> Vec<Unmatched> {
        let mut v: Vec<Unmatched> = self.seen.lock().values().cloned().collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.shape.cmp(&b.shape)));
        v
    }
}

/// `/studio/api/scenes/42/write` → `/studio/api/scenes/:id/write`: numbers,
/// UUIDs and long hex or base64-ish tokens are ids.
fn path_shape(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let id_like = (!seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()))
                || (seg.len() >= 16
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    && seg.bytes().any(|b| b.is_ascii_digit()));
            if id_like {
                ":id"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_fold_ids_and_counts_add_up() {
        assert_eq!(path_shape("/a/42/b"), "/a/:id/b");
        assert_eq!(
            path_shape("/p/3f2a9c1e-1b2c-4d5e-8f90-123456789abc"),
            "/p/:id"
        );
        assert_eq!(path_shape("/studio/api/scenes"), "/studio/api/scenes");
        let u = UnmatchedWrites::default();
        u.note(&Method::POST, "/a/1/like", None);
        u.note(&Method::POST, "/a/2/like", Some("a"));
        u.note(&Method::DELETE, "/b/9", None);
        let l = u.list();
        assert_eq!(l[0].shape, "/a/:id/like");
        assert_eq!(l[0].count, 2);
        assert_eq!(l[0].example, "/a/2/like");
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn bounded() {
        let u = UnmatchedWrites::default();
        for i in 0..(UNMATCHED_KEPT + 50) {
            u.note(&Method::POST, &format!("/x{i}"), None);
        }
        assert_eq!(u.list().len(), UNMATCHED_KEPT);
    }
}
