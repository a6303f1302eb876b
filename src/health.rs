//! `freshgate health`: the container's health check. It asks the local
//! admin listener's `/healthz` and exits 0 on a 200.
//!
//! It finds the admin listener the way `run` does, except that it never
//! validates the config file: a bad edit that the running process rejected
//! (and keeps serving without) must not make the container look unhealthy
//! and get it restarted into the bad file. So the address comes from
//! `FRESHGATE_ADMIN_LISTEN` when set (the image sets it), else `admin.listen`
//! read leniently from the file, else the default.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// How long the check waits for an answer (Docker's default timeout is 30 s,
/// the image's HEALTHCHECK says 3 s).
const TIMEOUT: Duration = Duration::from_secs(2);

/// The admin address to check: `env` (`FRESHGATE_ADMIN_LISTEN`), else the
/// file's `admin.listen`, else 127.0.0.1:9090; an unspecified address
/// (0.0.0.0, [::]) is reached on loopback.
pub fn admin_address(env: Option<&str>, file: Option<&Path>) -> Result<SocketAddr, String> {
    let from_file = || -> Option<String> {
        let text = std::fs::read_to_string(file?).ok()?;
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
        doc.get("admin")?
            .get("listen")?
            .as_str()
            .map(str::to_string)
    };
    let text = env
        .map(str::to_string)
        .or_else(from_file)
        .unwrap_or_else(|| crate::config::DEFAULT_ADMIN_LISTEN.to_string());
    let mut addr: SocketAddr = text
        .parse()
        .map_err(|e| format!("admin address {text:?}: {e}"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// GET `/healthz` on `admin` (with the admin token, in case `/healthz` is
/// not among `admin.open`).
pub fn check(admin: SocketAddr, token: Option<&str>) -> Result<(), String> {
    let url = format!("http://{admin}/healthz");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        // Never through an HTTP(S)_PROXY from the environment: the admin
        // listener is local, and the token must not go to a proxy.
        .proxy(None)
        .build()
        .into();
    let mut req = agent.get(&url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_then_the_file_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.yaml");
        std::fs::write(&file, "admin:\n  listen: 0.0.0.0:9191\n").unwrap();
        let at = |env, file| admin_address(env, file).unwrap().to_string();
        assert_eq!(at(Some("127.0.0.1:7000"), Some(&*file)), "127.0.0.1:7000");
        assert_eq!(
            at(None, Some(&*file)),
            "127.0.0.1:9191",
            "0.0.0.0 via loopback"
        );
        assert_eq!(at(Some("[::]:7001"), None), "[::1]:7001");
        assert_eq!(at(None, None), "127.0.0.1:9090");
        // A file the running process rejected still gives its address, and
        // one that is not YAML at all gives the default.
        std::fs::write(&file, "admin:\n  listen: 0.0.0.0:9292\nroutes: [oops\n").unwrap();
        assert_eq!(at(None, Some(&*file)), "127.0.0.1:9090");
        std::fs::write(&file, "admin:\n  listen: 0.0.0.0:9292\nroutes: 5\n").unwrap();
        assert_eq!(at(None, Some(&*file)), "127.0.0.1:9292");
        assert!(admin_address(Some("nope"), None).is_err());
    }
}
