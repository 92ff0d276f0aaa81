//! The `ringmx` binary: parse the command line, build the configuration, run, exit.
//!
//! Errors are printed as one line, `ringmx: <message>`, with exit status 1; nothing here panics.

use std::fmt::Display;
use std::process::ExitCode;

use clap::Parser;
use ringmx::cli::{Cli, Command};
use ringmx::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            ringmx::server::init_logging();
            match Config::load(&args) {
                Ok(config) => done(ringmx::server::run(config)),
                Err(e) => fail(e),
            }
        }
        Command::CheckConfig(args) => match Config::load(&args) {
            Ok(config) => {
                println!("config ok: {}", config.summary());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Stats(args) => done(ringmx::stats::socket::run_client(&args)),
        Command::Spool(args) => ringmx::spool::tool::run(args),
    }
}

fn done<E: Display>(res: Result<(), E>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: impl Display) -> ExitCode {
    eprintln!("ringmx: {e}");
    ExitCode::FAILURE
}
