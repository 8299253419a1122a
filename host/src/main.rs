//! The `cachet` command line.

mod admin_client;
mod allocator;
mod build_plugin;
mod dev_loop;
mod huge_text;
mod scaffold;

use cachet::config;
use cachet::policy::{LoadedPlugin, PolicyEngine, ALLOWED_IMPORTS};
use cachet::server::{self, ServeOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cachet",
    version,
    about = "Caching HTTP reverse proxy with WebAssembly cache policies"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Detach and run in the background.
        #[arg(long, short)]
        daemon: bool,
        /// Take over the listeners of a running cachet (graceful binary upgrade).
        #[arg(long, short)]
        upgrade: bool,
        /// Also start the built-in demo origin on this address (for trying cachet out).
        #[arg(long, value_name = "ADDR")]
        demo_origin: Option<std::net::SocketAddr>,
    },
    /// Load a plugin exactly as `serve` would and report what it imports and exports.
    Check {
        /// The plugin component (.wasm).
        plugin: PathBuf,
    },
    /// Validate a configuration file and the plugins it names, then exit.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show a running cachet's tenants, plugins and cache (admin listener).
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running cachet to re-check its config and plugins now.
    Reload {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove a URL (or every entry with a surrogate key) from a running cachet.
    Purge {
        #[arg(long, short)]
        config: PathBuf,
        /// The URL as clients request it, e.g. http://www.example.com/app.css
        /// (with --tag: only that URL's tenant; without a URL, tags are purged in every tenant)
        #[arg(required_unless_present = "tags")]
        url: Option<String>,
        /// Mark stale instead of removing (served stale while it revalidates).
        #[arg(long)]
        soft: bool,
        /// Purge entries carrying this surrogate key (repeatable) instead of one URL.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Make a tenant's shadow plugin its live plugin, after the checks of a reload.
    Promote {
        #[arg(long, short)]
        config: PathBuf,
        /// The tenant whose shadow_plugin goes live.
        tenant: String,
        /// Promote only if the shadow is still this version (its sha256, from `cachet status`):
        /// a reload may have replaced the one whose counts were judged.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Dry-run a request in a running cachet: tenant, plugin decision, key, stored entry.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// The URL as clients request it, e.g. http://www.example.com/app.css
        url: String,
        /// A request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Build a policy crate as a component (wasm32-unknown-unknown, no WASI), load it as
    /// `serve` would and run its self-test vectors.
    Build {
        /// The crate's folder (default: the current one).
        dir: Option<PathBuf>,
        /// Where to write NAME.wasm (default: TARGET_DIR/cachet/).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Build a policy crate, publish it where a tenant's `plugin =` points, and rebuild on
    /// every saved change: the running proxy hot-reloads each good build, and a failed one
    /// leaves the last good version serving.
    Dev {
        /// The crate's folder (default: the current one).
        dir: Option<PathBuf>,
        /// The component's path: the `plugin =` of the tenant being developed.
        #[arg(long)]
        out: PathBuf,
    },
    /// Wrap a core module built with wit-bindgen into a policy component.
    Componentize {
        /// The core module (.wasm from wasm32-unknown-unknown).
        input: PathBuf,
        /// Where to write the component.
        output: PathBuf,
    },
    /// Write a new plugin crate (policy, unit test, build command) to start from.
    NewPlugin {
        /// Crate name, e.g. my-policy.
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The cachet SDK folder to depend on (default: the checkout this
        /// binary was built in, found from its location, else the published crate).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before logging starts its thread: nothing else may run while the code moves.
    let text_pages = matches!(cli.command, Command::Serve { .. })
        .then(huge_text::move_text_to_huge_pages)
        .flatten();
    init_logging(cli.log_format);
    if let Some(line) = text_pages {
        tracing::info!("{line}");
    }
    let result = match cli.command {
        Command::Serve {
            config,
            daemon,
            upgrade,
            demo_origin,
        } => std::path::absolute(&config)
            .map_err(|e| anyhow::anyhow!("resolving {}: {e}", config.display()))
            // Absolute from here on: a daemon runs in `/`, and a reload rereads the same file.
            .and_then(|path| config::load(&path).map_err(anyhow::Error::from))
            .and_then(|config| {
                let options = ServeOptions {
                    daemon,
                    upgrade,
                    demo_origin,
                };
                server::serve(config, options)
            }),
        Command::Check { plugin } => check(&plugin),
        Command::Validate { config } => validate(&config),
        Command::Status { config, json } => {
            load_config(&config).and_then(|c| admin_client::status(&c, json))
        }
        Command::Reload { config } => load_config(&config).and_then(|c| admin_client::reload(&c)),
        Command::Purge {
            config,
            url,
            soft,
            tags,
        } => load_config(&config).and_then(|c| {
            admin_client::purge(
                &c,
                &admin_client::PurgeRequest {
                    url: url.as_deref(),
                    soft,
                    tags: &tags,
                },
            )
        }),
        Command::Promote {
            config,
            tenant,
            sha256,
        } => {
            load_config(&config).and_then(|c| admin_client::promote(&c, &tenant, sha256.as_deref()))
        }
        Command::Explain {
            config,
            url,
            headers,
            json,
        } => load_config(&config).and_then(|c| admin_client::explain(&c, &url, &headers, json)),
        Command::NewPlugin { name, dir, sdk } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            scaffold::SdkSource::find(sdk.as_deref())
                .and_then(|sdk| scaffold::new_plugin(&name, &dir, &sdk))
                .map(|()| {
                    println!("created {} — test and build it with:", dir.display());
                    println!("  cargo test --manifest-path {}/Cargo.toml", dir.display());
                    println!("  cachet build {}", dir.display());
                })
        }
        Command::Build { dir, out_dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            build_plugin::build(&dir, out_dir.as_deref()).map(drop)
        }
        Command::Dev { dir, out } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            dev_loop::run(&dir, &out)
        }
        Command::Componentize { input, output } => build_plugin::componentize_file(&input, &output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cachet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let engine = PolicyEngine::new(1)?;
    let plugin = LoadedPlugin::load(&engine, path)?;
    plugin.run_self_tests(&engine)?;
    let info = &plugin.info;
    println!("plugin:   {}", info.path.display());
    println!("sha256:   {}", info.sha256);
    println!("size:     {} bytes", info.size_bytes);
    println!("contract: cachet:policy@{}", plugin.contract_version());
    println!("state:    {}", info.state_reset.describe());
    println!(
        "compile:  {:.1} ms",
        info.compile_time.as_secs_f64() * 1000.0
    );
    println!("exports:");
    for name in &info.exports {
        println!("  {name}");
    }
    println!(
        "imports (all on the host's allow-list of {}):",
        ALLOWED_IMPORTS.len()
    );
    for name in &info.imports {
        println!("  {name}");
    }
    println!("self-test: passed");
    println!("ok");
    Ok(())
}

fn validate(path: &std::path::Path) -> anyhow::Result<()> {
    let config = config::load(path)?;
    let engine = PolicyEngine::new(1)?;
    for tenant in &config.tenants {
        server::load_policy(&engine, tenant, None)?;
        server::load_shadow(&engine, tenant, None)?;
    }
    let certificates = cachet::tls::CertStore::load(&config)?;
    let warnings = cachet::tls::coverage::warnings(&config, &certificates.current())
        .into_iter()
        .chain(config::warnings(&config));
    for warning in warnings {
        println!("warning: {warning}");
    }
    for tenant in config.tenants.iter().filter(|t| !t.upstream_tls.verify) {
        println!(
            "warning: tenant {:?}: tls_verify = false, its origins' certificates are not checked",
            tenant.name
        );
    }
    println!("{}: ok ({} tenants)", path.display(), config.tenants.len());
    Ok(())
}

fn load_config(path: &std::path::Path) -> anyhow::Result<config::Config> {
    Ok(config::load(path)?)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CACHET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or a collector gets
    // plain text (and the escape codes cost formatting time on every line).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(cachet::log_writer::QueuedStderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    cachet::access_log::format_lines_here(matches!(format, LogFormat::Json));
}
