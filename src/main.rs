//! The `cutover` command line: run, check, demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cutover::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Blue/green traffic-switching proxy"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file.
        #[arg(short, long, env = "CUTOVER_CONFIG", default_value = "cutover.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0, or print every problem and exit 1.
    Check {
        /// Configuration file.
        #[arg(short, long, env = "CUTOVER_CONFIG", default_value = "cutover.toml")]
        config: PathBuf,
    },
    /// Start sample blue and green backends and the proxy in front of them.
    Demo {
        /// Port of the proxy on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Check { config } = &cli.command {
        return check(config);
    }
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Demo { port } => demo(port),
        Command::Check { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match cutover::config::read(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(path: &Path) -> anyhow::Result<()> {
    // Read once up front for the thread count; the server reads it again.
    let (_, config) = cutover::config::read(path)?;
    runtime(config.runtime.threads)?.block_on(cutover::run(path, |_| {}))?;
    Ok(())
}

fn demo(port: u16) -> anyhow::Result<()> {
    runtime(0)?.block_on(async {
        let blue = cutover::demo::sample_backend("blue").await?;
        let green = cutover::demo::sample_backend("green").await?;
        let dir = tempfile::Builder::new()
            .prefix("cutover-demo-")
            .tempdir()
            .context("cannot create a directory for the demo configuration")?;
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, cutover::demo::config_text(port, blue, green))
            .with_context(|| format!("cannot write {}", path.display()))?;
        cutover::run(&path, |_| {
            println!("{}", cutover::demo::instructions(port, &path));
        })
        .await?;
        Ok(())
    })
}
