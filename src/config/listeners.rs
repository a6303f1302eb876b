//! Validation of the `listen`, `admin` and `upstream` settings (file,
//! flags or environment): addresses, and the admin listener's tokens.

use std::net::SocketAddr;

use super::locate::from_file;
use super::schema::RawConfig;
use super::{
    AdminAuth, Overrides, Upstream, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, DEFAULT_UPSTREAM,
};

/// `listen`, `admin` and `upstream`, as given or overridden.
pub(super) struct Listeners {
    pub(super) listen: SocketAddr,
    pub(super) admin_listen: SocketAddr,
    pub(super) admin_auth: AdminAuth,
    pub(super) upstream: Upstream,
}

pub(super) fn validate_listeners(
    raw: &RawConfig,
    ov: &Overrides,
    problem: &mut impl FnMut(&str, String),
) -> Listeners {
    let listen_s = ov
        .listen
        .clone()
        .or(raw.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen = parse_addr(&listen_s, "listen").unwrap_or_else(|m| {
        problem(from_file(&ov.listen, "listen"), m);
        fallback_addr()
    });
    let admin_s = ov
        .admin_listen
        .clone()
        .or(raw.admin.listen.clone())
        .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
    let admin_listen = parse_addr(&admin_s, "admin.listen").unwrap_or_else(|m| {
        problem(from_file(&ov.admin_listen, "admin.listen"), m);
        fallback_addr()
    });
    let admin_auth = AdminAuth {
        token: ov.admin_token.clone().or(raw.admin.token.clone()),
        read_token: ov.admin_read_token.clone().or(raw.admin.read_token.clone()),
        open: raw
            .admin
            .open
            .clone()
            .unwrap_or_else(|| vec!["/healthz".to_string()]),
    };
    for (name, t, given) in [
        ("admin.token", &admin_auth.token, &ov.admin_token),
        (
            "admin.read_token",
            &admin_auth.read_token,
            &ov.admin_read_token,
        ),
    ] {
        if t.as_ref().is_some_and(|t| t.len() < 16) {
            problem(
                from_file(given, name),
                format!("{name} is shorter than 16 characters: use a long random value"),
            );
        }
    }
    if same_socket(listen, admin_listen) {
        problem(
            from_file(&ov.admin_listen, "admin.listen"),
            format!(
                "admin.listen {admin_listen} is where the proxy listens ({listen}): give the \
                 admin listener a port of its own"
            ),
        );
    }
    if !admin_listen.ip().is_loopback() && admin_auth.token.is_none() {
        problem(
            from_file(&ov.admin_listen, "admin.listen"),
            format!(
                "admin.listen {admin_listen} is reachable from other hosts: set admin.token \
                 (or FRESHGATE_ADMIN_TOKEN), or listen on 127.0.0.1"
            ),
        );
    }
    let upstream_s = ov
        .upstream
        .clone()
        .or(raw.upstream.clone())
        .unwrap_or_else(|| DEFAULT_UPSTREAM.into());
    let upstream = parse_upstream(&upstream_s).unwrap_or_else(|m| {
        problem(from_file(&ov.upstream, "upstream"), m);
        Upstream {
            addr: String::new(),
            host: String::new(),
        }
    });

    if upstream_is(listen, &upstream.addr) {
        problem(
            from_file(&ov.upstream, "upstream"),
            format!(
                "upstream {} is where freshgate itself listens ({listen}): every request \
                 would come back to it",
                upstream.addr
            ),
        );
    }

    Listeners {
        listen,
        admin_listen,
        admin_auth,
        upstream,
    }
}

/// Whether two listeners would surely ask for the same socket: the same
/// port, and addresses that are equal (an IPv4-mapped IPv6 address is its
/// IPv4 one) or of one family with one the wildcard. (`[::]` beside an IPv4
/// address meets it only on a dual-stack host: left to the bind at start.)
/// Port 0 asks for any.
pub(crate) fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    a.port() == b.port()
        && a.port() != 0
        && (x == y || (x.is_ipv4() == y.is_ipv4() && (x.is_unspecified() || y.is_unspecified())))
}

/// Whether the app's address `upstream` (`HOST:PORT`) is `listen`'s own
/// socket, for an IP literal or `localhost`.
fn upstream_is(listen: SocketAddr, upstream: &str) -> bool {
    if let Ok(a) = upstream.parse::<SocketAddr>() {
        return same_socket(listen, a);
    }
    let Some(("localhost", port)) = upstream.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|port| {
        same_socket(listen, ([127, 0, 0, 1], port).into())
            || same_socket(listen, (std::net::Ipv6Addr::LOCALHOST, port).into())
    })
}

fn fallback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn parse_addr(s: &str, what: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{what} {s:?} is not an address such as 127.0.0.1:8080"))
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| {
        format!(
            "upstream {s:?} must be an http:// URL (freshgate speaks plain HTTP/1.1 to the app)"
        )
    })?;
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') {
        return Err(format!(
            "upstream {s:?} must be http://HOST:PORT with no path"
        ));
    }
    let addr = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok(Upstream {
        addr,
        host: hostport.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::same_socket;

    #[test]
    fn listeners_on_one_socket_are_found() {
        let t = |a: &str, b: &str| same_socket(a.parse().unwrap(), b.parse().unwrap());
        assert!(t("127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(t("0.0.0.0:8080", "127.0.0.1:8080"));
        assert!(t("127.0.0.1:8080", "0.0.0.0:8080"));
        assert!(t("[::ffff:127.0.0.1]:8080", "127.0.0.1:8080"));
        assert!(t("[::1]:8080", "[::]:8080"));
        // Only on a dual-stack host: the bind at start finds it there.
        assert!(!t("[::]:8080", "127.0.0.1:8080"));
        assert!(!t("127.0.0.1:8080", "127.0.0.1:9090"));
        assert!(!t("127.0.0.1:8080", "127.0.0.2:8080"));
        assert!(!t("0.0.0.0:8080", "[::1]:8080"));
        assert!(!t("127.0.0.1:0", "127.0.0.1:0"));
    }

    #[test]
    fn an_upstream_at_freshgates_own_address_is_found() {
        let t = |listen: &str, up: &str| super::upstream_is(listen.parse().unwrap(), up);
        assert!(t("127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(t("0.0.0.0:8080", "localhost:8080"));
        assert!(t("[::1]:8080", "localhost:8080"));
        assert!(!t("127.0.0.1:8080", "127.0.0.1:3000"));
        assert!(!t("127.0.0.1:8080", "app:8080"));
        assert!(!t("127.0.0.1:8080", "localhost:3000"));
    }
}
