//! The `ringmx` binary: parse the command line and hand it to [`ringmx::cmd`], which runs the
//! subcommand and returns the exit code.
//!
//! Errors are printed as one line, `ringmx: <message>`, with exit status 1; nothing here panics.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ringmx::cmd::run(ringmx::cmd::parse())
}
