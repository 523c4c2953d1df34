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
        Command::Operator(args) => match switchyard_operator::main_with(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
