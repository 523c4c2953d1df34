//! `kubectl switchyard`: the kubectl plugin (see [`switchyard_operator::cli`]).

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = switchyard_operator::cli::Cli::parse();
    match switchyard_operator::cli::main(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
