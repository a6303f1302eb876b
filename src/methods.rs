//! Which methods the app may execute for one request: the one it sent,
//! upper-cased as apps route it, any method an override header or the
//! `_method` parameter names, and whether its body may name any (a POST),
//! so that a write is matched against every rule it might be. Read once per
//! request, into [`crate::canonical::Canonical::methods`].

use http::{HeaderName, Method};
use pingora::http::RequestHeader;

/// How a request can name another method than its own (the
/// `method_override:` section).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MethodOverride {
    /// Header names, e.g. `x-http-method-override` (parsed once: every
    /// request looks them up).
    pub headers: Vec<HeaderName>,
    /// The query (and form body) parameter, e.g. `_method`.
    pub param: Option<String>,
}

/// The headers method-override middleware (Express, Rails, Laravel,
/// Symfony, ASP.NET) reads by default.
pub const USUAL_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

impl Default for MethodOverride {
    fn default() -> MethodOverride {
        MethodOverride {
            headers: USUAL_OVERRIDE_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            param: Some("_method".into()),
        }
    }
}

/// The methods the app may execute for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Methods {
    /// The request line's method.
    pub sent: Method,
    /// Methods named by override headers or the query parameter.
    pub overrides: Vec<Method>,
    /// A POST (its body may name any method, and freshgate does not read
    /// bodies), a request that names too many methods to list, or a write
    /// whose method no rule can name (WebDAV's `MOVE`, `COPY`, …): every
    /// write rule may apply.
    pub any_method: bool,
    /// It named more methods than are listed (`overrides` is cut short):
    /// one of the others may be a `MOVE`.
    pub unlisted: bool,
}

impl Methods {
    /// A request that names no other method.
    pub fn only(sent: Method) -> Methods {
        Methods {
            sent,
            overrides: Vec::new(),
            any_method: false,
            unlisted: false,
        }
    }

    /// Whether the app may change data for this request: then it is never
    /// served from (nor stored in) the cache, and it invalidates.
    pub fn is_write(&self) -> bool {
        self.any_method || is_unsafe(&self.sent) || self.overrides.iter().any(is_unsafe)
    }

    /// Whether the app may take it as a WebDAV `MOVE` or `COPY` (RFC 4918
    /// §9.8, §9.9), the methods whose `Destination` names a resource they
    /// create or replace: named by the method line or an override, or
    /// among more overrides than are listed.
    pub fn may_move(&self) -> bool {
        is_move(&upper_case(&self.sent)) || self.unlisted || self.overrides.iter().any(is_move)
    }

    /// Whether a rule for `methods` (empty: every write) may apply.
    pub fn may_be_any_of(&self, methods: &[Method]) -> bool {
        methods.is_empty()
            || self.any_method
            || methods.contains(&self.sent)
            || self.overrides.iter().any(|m| methods.contains(m))
    }
}

/// Methods that may change data (RFC 9110 §9.2.1 "unsafe").
pub fn is_unsafe(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::CONNECT
    )
}

/// The methods the app may execute for `req`.
pub fn read(req: &RequestHeader, policy: &MethodOverride) -> Methods {
    let mut m = Methods::only(req.method.clone());
    // Methods are case-sensitive (RFC 9110 §9.1), but apps that route by
    // method upper-case it first (Werkzeug, Django, Symfony), and browsers
    // send `fetch(url, {method: "patch"})` as typed: `patch` is matched as
    // the PATCH it becomes. (`sent` stays as sent: `get` is not a read.)
    let named = upper_case(&req.method);
    if named != req.method {
        m.overrides.push(named.clone());
    }
    m.any_method = may_be_any_write(&named);
    let mut listed = true;
    for name in &policy.headers {
        for v in req.headers.get_all(name) {
            listed &= push_method(&mut m.overrides, v.as_bytes());
        }
    }
    if let Some(param) = &policy.param {
        // Without `%` or `+` a name is spelled as it reads: a query that
        // does not contain the parameter's name cannot name it.
        let may_name = |q: &&str| q.contains(['%', '+']) || q.contains(param.as_str());
        if let Some(q) = req.uri.query().filter(may_name) {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                if k == param.as_str() {
                    listed &= push_method(&mut m.overrides, v.as_bytes());
                }
            }
        }
        // The body may name one: a form (Rails, Symfony), JSON (Laravel
        // reads `_method` from a JSON body), or a body without a content
        // type (Rack reads it as a form). freshgate does not read bodies.
        m.any_method |= named == Method::POST;
    }
    m.unlisted = !listed;
    if !listed || m.overrides.iter().any(may_be_any_write) {
        m.any_method = true;
    }
    m
}

/// A method that may change data but that no rule can name (WebDAV's
/// `MOVE`, `COPY`, `PROPPATCH`, `LOCK`, any unknown one): every write rule
/// may apply. Not the extensions defined as safe (`PROPFIND`, `REPORT`,
/// `SEARCH`, `QUERY`): still writes of their own path (freshgate does not
/// cache them), without purging what every rule names each time a client
/// polls with them.
fn may_be_any_write(m: &Method) -> bool {
    is_unsafe(m)
        && !RULE_METHODS.contains(m)
        && !matches!(m.as_str(), "PROPFIND" | "REPORT" | "SEARCH" | "QUERY")
}

/// WebDAV's `MOVE` and `COPY`, which write where `Destination` says.
fn is_move(m: &Method) -> bool {
    matches!(m.as_str(), "MOVE" | "COPY")
}

/// The methods invalidation rules name (`on:`).
pub const RULE_METHODS: [Method; 4] = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

/// `m` in upper case (the same method when it is already).
fn upper_case(m: &Method) -> Method {
    let name = m.as_str();
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return m.clone();
    }
    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).unwrap_or_else(|_| m.clone())
}

/// Overrides listed at most; a request that names more may be anything
/// (and costs no more to match).
pub(crate) const MAX_OVERRIDES: usize = 16;

/// Every method a header or parameter value may name: middleware differs
/// on lists (Express takes the first of `DELETE, PUT`), so take them all.
/// False once the request names more than [`MAX_OVERRIDES`].
fn push_method(out: &mut Vec<Method>, raw: &[u8]) -> bool {
    for name in String::from_utf8_lossy(raw).split(',') {
        let name = name.trim().to_ascii_uppercase();
        if let Ok(method) = Method::from_bytes(name.as_bytes()) {
            if !out.contains(&method) {
                if out.len() == MAX_OVERRIDES {
                    return false;
                }
                out.push(method);
            }
        }
    }
    true
}
