//! The `cachet` command line.

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
    #[command(subcommand)]
    command: Command,
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
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            daemon,
            upgrade,
            demo_origin,
        } => config::load(&config)
            .map_err(anyhow::Error::from)
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
        server::load_policy(&engine, tenant, None)
            .map_err(|e| anyhow::anyhow!("tenant {:?}: {e:#}", tenant.name))?;
    }
    println!("{}: ok ({} tenants)", path.display(), config.tenants.len());
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CACHET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
