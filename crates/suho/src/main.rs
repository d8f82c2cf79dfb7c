//! `suho`: the command line. It only parses arguments, loads the configuration, sets up
//! telemetry and hands over to the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "suho",
    version,
    about = "A multi-tenant AI trading platform: market data on NATS, user events on Kafka."
)]
struct Cli {
    /// Configuration file (default: $SUHO_CONFIG, else ./suho.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The local Kafka, NATS and PostgreSQL.
    Stack {
        #[command(subcommand)]
        action: StackAction,
    },
    /// Print the effective configuration (secrets redacted).
    Config,
}

#[derive(Subcommand)]
enum StackAction {
    /// Install what is missing, start what is not running, wait until ready.
    Up,
    /// Stop the stack of this directory.
    Down,
    /// Show what runs.
    Status,
    /// Install what is missing, start nothing.
    Install,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("suho: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = suho_config::Config::load(cli.config.as_deref())?;
    suho_telemetry::init_tracing(&config.telemetry.log_format, &config.telemetry.log_filter);
    match cli.command {
        Command::Stack { action } => stack(&config, action),
        Command::Config => {
            println!("{config:#?}");
            Ok(())
        }
    }
}

fn stack(config: &suho_config::Config, action: StackAction) -> anyhow::Result<()> {
    let spec = suho_stack::StackSpec::from_config(config)?;
    match action {
        StackAction::Install => {
            suho_stack::install(&spec)?;
        }
        StackAction::Up => {
            let tools = suho_stack::install(&spec)?;
            let started = suho_stack::start(&spec, &tools)?;
            for p in &started.started {
                println!("{:<9} started (pid {})", p.service.name(), p.pid);
            }
            for s in &started.reused {
                println!("{:<9} already running", s.name());
            }
        }
        StackAction::Down => {
            let stopped = suho_stack::stop(&spec);
            if stopped.is_empty() {
                println!("nothing was running");
            }
            for s in stopped {
                println!("{:<9} stopped", s.name());
            }
        }
        StackAction::Status => {
            for s in suho_stack::status(&spec) {
                let state = match (s.pid, s.listening) {
                    (Some(pid), true) => format!("running (pid {pid})"),
                    (Some(pid), false) => format!("starting or stuck (pid {pid}, port closed)"),
                    (None, true) => "port in use by another process".to_string(),
                    (None, false) => "stopped".to_string(),
                };
                println!("{:<9} 127.0.0.1:{:<5} {state}", s.service.name(), s.port);
            }
        }
    }
    Ok(())
}
