//! `switchyard`: the command a person trying Switchyard runs first.
//!
//! `switchyard demo` migrates a real fleet on one machine (see
//! [`demo`]). `switchyard operator` runs the operator exactly as the
//! `switchyard-operator` binary does (the same flags, environment and
//! entry point); the demo starts its operator that way, in a process of
//! its own.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;

#[derive(Parser)]
#[command(
    name = "switchyard",
    about = "Switchyard: migrate a P2P fleet from libp2p to iroh, one safe step at a time"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate a real fleet from libp2p to iroh on this machine, with its
    /// application traffic, live analysis and the dashboard; no cluster
    /// needed.
    Demo(demo::DemoArgs),
    /// The operator, as `switchyard-operator` runs it.
    #[command(hide = true)]
    Operator(Box<switchyard_operator::config::Args>),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo(args) => demo::main(args).await,
        Command::Operator(args) => {
            if let Err(e) = end_with_parent() {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            operator(*args).await
        }
    }
}

/// Set by the demo on the operator it starts: the demo's process id.
pub const DEMO_PID_ENV: &str = "SWITCHYARD_DEMO_PID";

/// When the demo started this operator ([`DEMO_PID_ENV`]), end with it:
/// the kernel sends SIGTERM when the demo dies, even by SIGKILL, which
/// leaves it no chance to stop its children. (The signal follows the
/// thread that spawned us; the demo spawns from its runtime's threads,
/// which live as long as it.) A demo already gone is an error.
fn end_with_parent() -> Result<(), String> {
    let Ok(raw) = std::env::var(DEMO_PID_ENV) else {
        return Ok(());
    };
    let pid: i32 = raw
        .parse()
        .map_err(|_| format!("{DEMO_PID_ENV}={raw:?} is not a process id; unset it"))?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| format!("asking to end with the demo (prctl): {e}"))?;
    // Set after a race: the demo may have died before the line above, and
    // then this process was handed to another parent already.
    if nix::unistd::getppid().as_raw() != pid {
        return Err(format!(
            "the demo that started this operator (pid {pid}) is gone"
        ));
    }
    Ok(())
}

async fn operator(args: switchyard_operator::config::Args) -> ExitCode {
    match switchyard_operator::main_with(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
