use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use freshgate::app::{self, Demo};
use freshgate::cli::{Cli, Command, RunOpts};
use freshgate::config::{Config, Overrides};
use freshgate::explain;
use freshgate::flags::Flags;
use freshgate::reload;

/// Exit code for a config that cannot be used (BSD `EX_USAGE` is for flags;
/// `check` uses 1 as documented).
const EXIT_BAD_CONFIG: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "info,pingora_core=warn,pingora_proxy=warn,pingora_cache=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: container logs and files
        // get plain text (and NO_COLOR is honoured, https://no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();

    match cli.command {
        Command::Check { config } => match Config::load(Some(&config), &Overrides::default()) {
            Ok(c) => {
                for w in explain::warnings(&c) {
                    eprintln!("{}: warning: {w}", config.display());
                }
                println!(
                    "{}: ok ({} route rules, {} invalidate rules)",
                    config.display(),
                    c.routes.rules().len(),
                    c.invalidation.rules.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Explain { config, request } => {
            let c = match Config::load(Some(&config), &Overrides::default()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            match explain::request(&c, &request) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("freshgate explain: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Analyze {
            admin,
            time_range,
            token,
        } => match freshgate::analyze::fetch(&admin, &time_range, token.as_deref()) {
            Ok(inputs) => {
                print!("{}", freshgate::analyze::report(&inputs));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Warm(opts) => warm(&opts),
        Command::Schema => {
            print!("{}", freshgate::config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Health { config } => {
            let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
            let checked = freshgate::health::admin_address(
                env("FRESHGATE_ADMIN_LISTEN").as_deref(),
                config.as_deref(),
            )
            .and_then(|admin| {
                freshgate::health::check(admin, env("FRESHGATE_ADMIN_TOKEN").as_deref())
            });
            match checked {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(opts) => run(&opts, None),
        Command::Demo(d) => {
            let mut opts = d.run;
            let demo_config = Path::new("config/freshgate.yaml");
            if opts.config.is_none() && !d.origin_only && demo_config.exists() {
                opts.config = Some(demo_config.to_path_buf());
            }
            // The proxy's app is the demo's (no proxy runs with
            // --origin-only: its config's upstream is never used).
            if opts.upstream.is_none() && !d.origin_only {
                opts.upstream = Some(format!("http://{}", d.origin_listen));
            }
            if !d.origin_only {
                print_demo_help(&opts);
            }
            run(
                &opts,
                Some(Demo {
                    listen: d.origin_listen,
                    delay: Duration::from_millis(d.delay_ms),
                    origin_only: d.origin_only,
                }),
            )
        }
    }
}

fn run(opts: &RunOpts, demo: Option<Demo>) -> ExitCode {
    let overrides = Overrides {
        listen: opts.listen.clone(),
        upstream: opts.upstream.clone(),
        redis: opts.redis.clone(),
        redis_timeout: opts.redis_timeout,
        admin_listen: opts.admin_listen.clone(),
        namespace: opts.namespace.clone(),
        // Secrets come from the environment only: arguments show in `ps`.
        admin_token: std::env::var("FRESHGATE_ADMIN_TOKEN").ok(),
        admin_read_token: std::env::var("FRESHGATE_ADMIN_READ_TOKEN").ok(),
    };
    // Before the file is read: an edit or a SIGHUP from then on reloads it,
    // however long the start takes. The demo app alone runs no proxy.
    let origin_only = demo.as_ref().is_some_and(|d| d.origin_only);
    let reload = match &opts.config {
        Some(path) if !origin_only => Some(reload::Triggers::start(path, opts.watch)),
        _ => None,
    };
    let config = match Config::load(opts.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let flags = match Flags::from_env(|name| std::env::var(name).ok()) {
        Ok(f) => f,
        Err(errors) => {
            for e in errors {
                eprintln!("environment: {e}");
            }
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let setup = app::Setup {
        config,
        flags,
        overrides,
        reload,
        demo,
    };
    match app::run(setup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn print_demo_help(opts: &RunOpts) {
    let proxy = opts.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let admin = opts.admin_listen.as_deref().unwrap_or("127.0.0.1:9090");
    eprintln!(
        "\nfreshgate demo: the demo app is behind freshgate on http://{proxy}\n\
         Try, in another terminal:\n\
         \x20 curl -i http://{proxy}/studio/api/scenes/111        # X-Cache: MISS, then HIT on the second call\n\
         \x20 curl -i -X PATCH -d '{{\"text\":\"edited\"}}' http://{proxy}/studio/api/scenes/111\n\
         \x20 curl -i http://{proxy}/studio/api/scenes/111        # the edit, with a new version\n\
         \x20 curl -s http://{admin}/metrics | grep freshgate_requests_total\n"
    );
}

/// `freshgate warm`: exit 0 when nothing failed, 1 when something did, 2
/// when the paths could not be read.
fn warm(opts: &freshgate::cli::WarmOpts) -> ExitCode {
    use freshgate::warm;
    use std::io::IsTerminal;
    // The Host clients use: --host, else the host the list or sitemap
    // names in its URLs, else the --url's own.
    let mut named_host = None;
    let paths = if let Some(file) = &opts.list {
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))
        } else {
            std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))
        };
        text.and_then(|t| {
            named_host = warm::first_authority(t.lines());
            warm::from_list(&t)
        })
    } else if let Some(sitemap) = &opts.sitemap {
        let xml = if sitemap.starts_with("http://") || sitemap.starts_with("https://") {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(std::time::Duration::from_secs(30)))
                .build()
                .into();
            agent
                .get(sitemap)
                .call()
                .and_then(|mut r| r.body_mut().read_to_string())
                .map_err(|e| format!("{sitemap}: {e} (plain http:// only)"))
        } else {
            std::fs::read_to_string(sitemap).map_err(|e| format!("{sitemap}: {e}"))
        };
        xml.and_then(|x| {
            let urls = warm::sitemap_urls(&x)?;
            named_host = warm::first_authority(urls.iter().map(String::as_str));
            urls.iter().map(|u| warm::path_of(u)).collect()
        })
    } else {
        let (pattern, ids) = (opts.pattern.as_deref(), opts.ids.as_deref());
        warm::from_pattern(
            pattern.unwrap_or_default(),
            ids.unwrap_or_default(),
            1_000_000,
        )
    };
    let checked = warm::check_rate(opts.rate).and_then(|rate| {
        if opts.concurrency == 0 || opts.concurrency > warm::MAX_CONCURRENCY {
            Err(format!(
                "--concurrency {}: 1 to {}",
                opts.concurrency,
                warm::MAX_CONCURRENCY
            ))
        } else {
            Ok(rate)
        }
    });
    let (paths, rate) = match (paths, checked) {
        (Ok(p), Ok(rate)) => (p, rate),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("freshgate warm: {e}");
            return ExitCode::from(2);
        }
    };
    let options = warm::Options {
        url: opts.url.clone(),
        host: opts.host.clone().or(named_host),
        scheme: opts.scheme.clone(),
        concurrency: opts.concurrency,
        rate,
        marker: None,
    };
    let stderr = std::io::stderr();
    let tty = stderr.is_terminal();
    let summary = warm::run(&paths, &options, &mut stderr.lock(), tty);
    print!("{}", warm::report(&summary, paths.len()));
    if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
