//! The command line (clap derive). Flags override the config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "freshgate",
    version,
    about = "A caching reverse proxy that never serves a stale read after a write"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in front of an app.
    Run(RunOpts),
    /// Validate a config file: exit 0 if it is good, 1 with file:line:column and reason if not.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show what a request does to the cache: the rules it matches, the tags
    /// and route families it invalidates, and why.
    /// Example: freshgate explain -c freshgate.yaml 'PATCH /studio/api/scenes/42'
    Explain {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// `METHOD /path` (a bare path means GET).
        request: String,
    },
    /// Exit 0 if the local freshgate's admin `/healthz` answers 200 (the
    /// container's health check). The address: FRESHGATE_ADMIN_LISTEN, else
    /// `admin.listen` in the config file, else 127.0.0.1:9090.
    Health {
        #[arg(short, long, value_name = "FILE", env = "FRESHGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of the config file (for YAML language servers:
    /// `# yaml-language-server: $schema=...` at the top of a config).
    Schema,
    /// Run the bundled demo app with freshgate in front of it.
    Demo(DemoOpts),
    /// Fill the cache through a running freshgate, from a URL list, a
    /// sitemap, or a route pattern with an id range; prints progress and a
    /// summary (warmed, already cached, uncacheable, failed).
    /// Example: freshgate warm --pattern '/studio/api/scenes/[id]' --ids 1..500
    Warm(WarmOpts),
    /// Report on a running freshgate from its admin API: hit rate by route,
    /// top misses, top invalidating writes, unmatched writes, alerts and
    /// recommendations.
    Analyze {
        /// The admin listener's URL.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// 1h, 6h, 24h, 7d or 30d.
        #[arg(long, value_name = "RANGE", default_value = "24h",
              value_parser = ["1h", "6h", "24h", "7d", "30d"])]
        time_range: String,
        /// Bearer token, when the admin listener requires one (the read token is enough).
        #[arg(
            long,
            value_name = "TOKEN",
            env = "FRESHGATE_ADMIN_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["list", "sitemap", "pattern"])))]
pub struct WarmOpts {
    /// freshgate's listener.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A file of URLs or paths, one per line (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub list: Option<PathBuf>,
    /// A sitemap.xml: a file, or an http:// URL (on the app).
    #[arg(long, value_name = "FILE_OR_URL")]
    pub sitemap: Option<String>,
    /// A route pattern with one parameter, e.g. /studio/api/scenes/[id].
    #[arg(long, value_name = "PATTERN", requires = "ids")]
    pub pattern: Option<String>,
    /// The ids for --pattern: FIRST..LAST (inclusive).
    #[arg(long, value_name = "RANGE")]
    pub ids: Option<String>,
    /// The Host clients send (part of the cache key) [default: the --url's].
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// The scheme clients use: https behind a TLS load balancer.
    #[arg(long, value_name = "SCHEME", value_parser = ["http", "https"])]
    pub scheme: Option<String>,
    /// Requests in flight at most.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,
    /// Requests per second at most (0: no limit).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(Debug, Args)]
pub struct RunOpts {
    /// Config file (YAML). Without one, built-in defaults apply.
    #[arg(short, long, value_name = "FILE", env = "FRESHGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve clients on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR", env = "FRESHGATE_LISTEN")]
    pub listen: Option<String>,
    /// The app, as http://HOST:PORT [default: http://127.0.0.1:3000].
    #[arg(long, value_name = "URL", env = "FRESHGATE_UPSTREAM")]
    pub upstream: Option<String>,
    /// Redis URL for the shared tier (otherwise: embedded in-process store).
    #[arg(long, value_name = "URL", env = "FRESHGATE_REDIS")]
    pub redis: Option<String>,
    /// Timeout of every Redis operation, e.g. 100ms [default: 100ms].
    #[arg(long, value_name = "DURATION", env = "FRESHGATE_REDIS_TIMEOUT", value_parser = crate::config::parse_duration)]
    pub redis_timeout: Option<std::time::Duration>,
    /// Cache key namespace, e.g. the app's build id: a new one starts on a
    /// clean cache (overrides `cache.namespace`).
    #[arg(long, value_name = "NAME", env = "FRESHGATE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Admin listener address [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR", env = "FRESHGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Reload the config when its file changes (with a config file, SIGHUP
    /// reloads it either way).
    #[arg(long, value_name = "BOOL", env = "FRESHGATE_WATCH", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct DemoOpts {
    #[command(flatten)]
    pub run: RunOpts,
    /// Run only the demo app (no proxy), on --origin-listen.
    #[arg(long)]
    pub origin_only: bool,
    /// Where the demo app listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    pub origin_listen: SocketAddr,
    /// Artificial latency of every demo app response, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 20)]
    pub delay_ms: u64,
}
