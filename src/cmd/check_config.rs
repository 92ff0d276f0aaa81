//! `ringmx check-config`: check a configuration the way `serve` would, print a summary, exit.
//!
//! Only the front end: the checks are [`crate::config::Config::load`]'s, and for STARTTLS
//! [`crate::server::tls::load_pairs`]'s (unreadable file, key that does not match its
//! certificate, expired certificate: one line, exit 1; expiring within 14 days: a warning),
//! and the recipient table's ([`crate::server::recipients::read_table`]).
//! Opens no sockets.

use std::process::ExitCode;
use std::time::SystemTime;

use crate::config::{Config, ServeArgs};
use crate::server::tls;

/// Loads and checks the configuration; prints `config ok: …` or the error.
pub fn run(args: &ServeArgs) -> ExitCode {
    match Config::load(args) {
        Ok(config) => {
            let mut warnings = Vec::new();
            if let Err(e) = tls::load_pairs(
                config.tls(),
                &tls::provider(),
                SystemTime::now(),
                &mut warnings,
            ) {
                return super::fail(e);
            }
            if let Some(path) = &config.abuse().recipients {
                match crate::server::recipients::read_table(path) {
                    Ok((_, loaded)) => eprintln!("recipient table {}: {loaded}", path.display()),
                    Err(e) => return super::fail(e),
                }
            }
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!("config ok: {}", config.summary());
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(e),
    }
}
