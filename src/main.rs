//! The `sonde` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use sonde::agent::{self, signals, Origin};
use sonde::config::{self, Config, ConfigError};
use sonde::http::{Site, SiteError, DEFAULT_TELEMETRY_PATH};
use sonde::web::{WebConfig, WebConfigError};
use sonde::{listing, loader, probes, system};

/// Blocks the signals the agent handles before `main` runs, and before any
/// thread exists: a SIGTERM in the first milliseconds waits for the agent
/// to take it (see `agent::signals`) instead of killing it.
#[used]
#[link_section = ".init_array"]
static BLOCK_SIGNALS_EARLY: extern "C" fn() = {
    extern "C" fn block() {
        signals::block();
    }
    block
};

/// Exit status for bad input (config, usage), as clap uses for usage errors.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Parser)]
#[command(name = "sonde", version, about = "eBPF probes in the Linux kernel, exported as Prometheus metrics")]
struct Cli {
    /// error, warn, info, debug or trace (RUST_LOG, if set, takes precedence)
    #[arg(long, global = true, visible_alias = "log.level", default_value = "info", env = "SONDE_LOG_LEVEL")]
    log_level: String,
    /// text or json (`--log.format`, the exporters' spelling, works too)
    #[arg(
        long,
        global = true,
        visible_alias = "log.format",
        value_enum,
        default_value_t = LogFormat::Text,
        env = "SONDE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Each flag also has the spelling Prometheus exporters share
/// (`--web.listen-address`, `--config.file`, ...) beside sonde's own.
#[derive(clap::Args, Clone)]
struct RunArgs {
    /// YAML config file (default: the embedded default config)
    #[arg(long, short, visible_alias = "config.file", env = "SONDE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve /metrics on, overriding the config's `listen`
    #[arg(long, visible_alias = "web.listen-address", env = "SONDE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Path to serve the metrics on
    #[arg(long = "web.telemetry-path", default_value = DEFAULT_TELEMETRY_PATH, env = "SONDE_TELEMETRY_PATH")]
    telemetry_path: String,
    /// Web config file: TLS, client certificates and basic auth, in the format Prometheus exporters share
    #[arg(long = "web.config.file", env = "SONDE_WEB_CONFIG_FILE")]
    web_config_file: Option<PathBuf>,
    /// Validate the config (and the web config, if given) and exit, as `sonde check` does
    #[arg(long = "config.check")]
    config_check: bool,
    /// Exit with an error if any probe fails to load or attach
    #[arg(long)]
    strict: bool,
    /// Keep the kernel's BPF run-time statistics on while running
    #[arg(long)]
    bpf_stats: bool,
    /// Drop every capability once the probes are attached (a reload can then no longer load probes)
    #[arg(long)]
    drop_capabilities: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Load the configured probes and serve their metrics (the default)
    Run(RunArgs),
    /// Validate a config; with --attach also load and attach every probe, then detach
    Check {
        /// YAML config file (default: the embedded default config)
        #[arg(long, short, visible_alias = "config.file", env = "SONDE_CONFIG")]
        config: Option<PathBuf>,
        /// Also validate this web config file (TLS and basic auth)
        #[arg(long = "web.config.file", env = "SONDE_WEB_CONFIG_FILE")]
        web_config_file: Option<PathBuf>,
        #[arg(long)]
        attach: bool,
    },
    /// List the probes, the hook each would use on this kernel and why the others were skipped
    Probes {
        /// Also list the probes this config defines, and list built-in ones as it configures them
        #[arg(long, short, visible_alias = "config.file", env = "SONDE_CONFIG")]
        config: Option<PathBuf>,
        /// Also write sonde's and libbpf's diagnostics from the trial loads to standard error
        #[arg(long, short)]
        verbose: bool,
        #[arg(long, short, value_enum, default_value_t = ListingFormat::Text)]
        output: ListingFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ListingFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // The listing is the output: the trial loads' logs would interleave
        // with it on a terminal, so they are written only when asked for.
        Some(Command::Probes { verbose: false, .. }) => {}
        Some(Command::Probes { verbose: true, .. }) => init_logging("debug", cli.log_format),
        _ => init_logging(&cli.log_level, cli.log_format),
    }
    if !matches!(cli.command, None | Some(Command::Run(_))) {
        signals::unblock();
    }
    let result = match cli.command {
        Some(Command::Run(args)) => run_or_check(args),
        None => run_or_check(cli.run),
        // `sonde -c FILE check` names the file before the subcommand
        Some(Command::Check { config, web_config_file, attach }) => {
            check(config.or(cli.run.config), web_config_file.or(cli.run.web_config_file), attach)
        }
        Some(Command::Probes { config, output, .. }) => list_probes(config.or(cli.run.config), output),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if err.is::<ConfigError>() || err.is::<WebConfigError>() || err.is::<SiteError>() {
                eprintln!("sonde: {err}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            eprintln!("sonde: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error at `level`, unless RUST_LOG says otherwise. Colour
/// only on a terminal: `docker logs`, journald and files get plain text.
fn init_logging(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    agent::load_config(path)
}

/// `sonde [run]`, or with `--config.check`, `sonde check`.
fn run_or_check(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.config_check {
        signals::unblock();
        return check(args.config, args.web_config_file, false);
    }
    run(args)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Read before any probe is loaded: a bad web config stops the agent
    // before it touches the kernel.
    let site = Site::new(&args.telemetry_path, load_web_config(args.web_config_file.as_ref())?)?;
    let config = load_config(args.config.as_ref())?;
    let origin = Origin {
        path: args.config,
        listen: args.listen,
        strict: args.strict,
        bpf_stats: args.bpf_stats,
        drop_capabilities: args.drop_capabilities,
    };
    agent::run(config, origin, site)?;
    Ok(ExitCode::SUCCESS)
}

fn load_web_config(path: Option<&PathBuf>) -> Result<WebConfig, WebConfigError> {
    match path {
        Some(path) => WebConfig::load(path),
        None => Ok(WebConfig::none()),
    }
}

fn check(path: Option<PathBuf>, web_config: Option<PathBuf>, attach: bool) -> anyhow::Result<ExitCode> {
    if let Some(web_config) = &web_config {
        WebConfig::load(web_config)?;
        println!("{}: ok (web config)", web_config.display());
    }
    let config = load_config(path.as_ref())?;
    let origin = path.map(|p| p.display().to_string()).unwrap_or_else(|| config::DEFAULT_CONFIG_NAME.into());
    let names: Vec<&str> = config.probes.iter().map(|p| p.name()).collect();
    println!("{origin}: ok ({} probe(s): {})", names.len(), names.join(", "));
    if attach && !agent::check_attach(&config)? {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn list_probes(path: Option<PathBuf>, format: ListingFormat) -> anyhow::Result<ExitCode> {
    // Routes libbpf's prints into the log (or nowhere), off the terminal.
    loader::verifier_log::install();
    // A config given is read first: a bad one is an error before any trial
    // load. Without one, only the built-in probes, each with its defaults.
    let config = load_config(path.as_ref())?;
    let configured = if path.is_some() { config.probes.as_slice() } else { &[] };
    let can_test = system::has_bpf_privileges() && system::prepare().is_ok();
    let ctx = loader::LoadContext::new(config.ring_buffer.clone(), config.series_limit);
    let registry = probes::Registry::builtin();
    let listing = listing::collect(&registry, &config.metric_prefix, configured, can_test.then_some(&ctx));
    match format {
        ListingFormat::Text => print!("{}", listing::render_text(&listing)),
        ListingFormat::Json => println!("{}", serde_json::to_string_pretty(&listing)?),
    }
    Ok(ExitCode::SUCCESS)
}
