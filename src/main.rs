//! The `cutover` command line: run, check, demo, ctl.

mod ctl;

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
        /// Start from the file's weights, ignoring overrides in the state file.
        #[arg(long)]
        ignore_state: bool,
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
        /// Port of the admin API on 127.0.0.1.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Port of the TLS-passthrough (layer 4, routed by SNI) listener on 127.0.0.1.
        #[arg(long, default_value_t = 8443)]
        tls_port: u16,
        /// Port of the https listener (TLS terminated by the proxy) on 127.0.0.1.
        #[arg(long, default_value_t = 8444)]
        https_port: u16,
    },
    /// Talk to a running proxy's admin API.
    Ctl(Box<ctl::CtlArgs>),
    /// A sample backend for the demo (run by `demo`).
    #[command(hide = true)]
    SampleBackend {
        #[arg(long)]
        pool: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Ctl(args) => match ctl::main(*args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::SampleBackend { pool } => {
            logging::init(cli.log_format);
            sample_backend(pool)
        }
        Command::Run {
            config,
            ignore_state,
        } => {
            logging::init(cli.log_format);
            run(&config, ignore_state)
        }
        Command::Demo {
            port,
            admin_port,
            tls_port,
            https_port,
        } => {
            logging::init(cli.log_format);
            demo(cutover::demo::Ports {
                port,
                admin_port,
                tls_port,
                https_port,
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<cutover::config::ConfigError>() {
                Some(config) => config.lines().iter().for_each(|l| eprintln!("error: {l}")),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Validates the file, then reads every TLS file it names: each must
/// exist, parse, and (for a pair) have a key that matches its certificate.
fn check(path: &Path) -> ExitCode {
    let config = match cutover::config::read(path) {
        Ok((_, config)) => config,
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    match cutover::tls::Material::load(&config) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.errors {
                eprintln!("{}: {error}", path.display());
            }
            ExitCode::FAILURE
        }
    }
}

/// The data plane's runtime: `threads` workers, or one per core when 0.
fn data_plane(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder
        .thread_name("cutover-data")
        .enable_all()
        .build()
        .context("cannot start the data-plane runtime")
}

/// Raises the soft limit on open files to the hard one, as a server that
/// holds many sockets must: the usual soft default (1024) would cap a tcp
/// listener at about 170 spliced connections (six descriptors each). Only
/// the administrator can raise the hard limit (`LimitNOFILE`, `ulimit -Hn`).
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    // `None` is "unlimited", which the kernel does not take for open files.
    let (Some(before), Some(most)) = (limit.current, limit.maximum) else {
        return;
    };
    if before >= most {
        return;
    }
    limit.current = Some(most);
    match setrlimit(Resource::Nofile, limit) {
        Ok(()) => tracing::debug!(before, after = most, "open-file limit raised"),
        Err(e) => tracing::warn!(before, error = %e, "cannot raise the open-file limit"),
    }
}

/// Runs `main` on a control-plane runtime on this thread, beside a data-plane
/// runtime of its own threads, so a saturated data plane cannot starve the
/// admin API, reloads or signals.
fn with_runtimes(
    threads: usize,
    main: impl AsyncFnOnce(tokio::runtime::Handle) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    raise_open_file_limit();
    let data = data_plane(threads)?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control-plane runtime")?;
    let result = control.block_on(main(data.handle().clone()));
    data.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn run(path: &Path, ignore_state: bool) -> anyhow::Result<()> {
    // Read once up front for the thread count; the server reads it again.
    let (_, config) = cutover::config::read(path)?;
    with_runtimes(config.runtime.threads, async |data_plane| {
        let options = cutover::server::Options {
            ignore_state,
            data_plane,
        };
        cutover::run(path, options, |_| {}).await?;
        Ok(())
    })
}

fn demo(ports: cutover::demo::Ports) -> anyhow::Result<()> {
    with_runtimes(0, async |data_plane| {
        let blue = cutover::demo::spawn_sample("blue")
            .await
            .context("cannot start the blue sample backend")?;
        let green = cutover::demo::spawn_sample("green")
            .await
            .context("cannot start the green sample backend")?;
        let dir = tempfile::Builder::new()
            .prefix("cutover-demo-")
            .tempdir()
            .context("cannot create a directory for the demo configuration")?;
        let path = dir.path().join("cutover.toml");
        cutover::demo::write_proxy_cert(dir.path())
            .map_err(|e| anyhow::anyhow!("cannot write the demo's certificate: {e}"))?;
        std::fs::write(
            &path,
            cutover::demo::config_text(ports, dir.path(), &blue, &green),
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        let options = cutover::server::Options {
            ignore_state: false,
            data_plane,
        };
        cutover::run(&path, options, |started| {
            println!(
                "{}",
                cutover::demo::instructions(ports, started.admin, &path, &blue, &green)
            );
        })
        .await?;
        Ok(())
    })
}

fn sample_backend(pool: String) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(cutover::demo::serve_sample(pool.into()))
        .context("sample backend failed")
}
