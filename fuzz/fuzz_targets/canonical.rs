//! Key canonicalisation: any request target and Host either is refused or
//! yields a canonical form that is a fixed point (the canonical path, sent
//! again, means the same request) and a key, without a panic.
#![no_main]

use freshgate::canonical::{self, Canonical, PathPolicy};
use freshgate::methods::MethodOverride;
use freshgate::{cachekey, host};
use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;

fuzz_target!(|input: (&[u8], &str, &str)| {
    let (target, host_header, cookie) = input;
    let Ok(mut req) = RequestHeader::build("GET", target, None) else {
        return;
    };
    let _ = req.append_header("host", host_header);
    let _ = req.append_header("cookie", cookie);
    if !canonical::target_is_usable(&req) {
        return;
    }
    let Ok(h) = host::of_request(&req, "http", "app") else {
        return;
    };
    // A normalised host normalises to itself.
    assert_eq!(host::normalize(h.as_str(), "http").as_ref(), Ok(&h));
    let policy = PathPolicy::default();
    let c = Canonical::new(&req, &policy, &MethodOverride::default());
    let _ = cachekey::primary(&req, &c, "http", &h, None);
    let _ = cachekey::cookie(&req, "session");
    // Forwarding the canonical target and reading it again changes nothing.
    let again_target = c.forward_target(&req);
    if let Ok(again) = RequestHeader::build("GET", again_target.as_bytes(), None) {
        let c2 = Canonical::new(&again, &policy, &MethodOverride::default());
        assert_eq!(c2.path, c.path, "target {again_target:?}");
        assert_eq!(c2.route, c.route);
    }
});
