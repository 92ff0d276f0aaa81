//! `ringmx check-config`: check a configuration the way `serve` would, print a summary, exit.
//!
//! Only the front end: the checks are [`crate::config::Config::load`]'s. Opens no sockets.

use std::process::ExitCode;

use crate::config::{Config, ServeArgs};

/// Loads and checks the configuration; prints `config ok: …` or the error.
pub fn run(args: &ServeArgs) -> ExitCode {
    match Config::load(args) {
        Ok(config) => {
            println!("config ok: {}", config.summary());
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(e),
    }
}
