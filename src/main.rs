//! The `ringmx` binary: parse the command line and dispatch.

use std::process::ExitCode;

use clap::Parser;
use ringmx::cli::{Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Spool(args) => ringmx::spool::tool::run(args),
    }
}
