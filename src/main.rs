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
            let log = ringmx::server::init_logging();
            let res = match Config::load(&args) {
                Ok(config) => ringmx::server::run(config).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            // Flush the log lines before the final error line.
            drop(log);
            done(res)
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
