//! The `guard` command: parses the command line, installs the crypto provider and logging, runs
//! one library function per subcommand, and turns the outcome into an exit code
//! (0 ok, 1 runtime failure, 2 bad usage or configuration).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Exactly one rustls provider is compiled in; installing it up front keeps any library that
    // asks for the process default from panicking.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("guard: error: {}", failure.message());
            ExitCode::from(failure.code())
        }
    }
}
