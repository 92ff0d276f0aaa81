//! The recipient table file (`--recipients FILE`): loading it at start, reloading it on SIGHUP
//! (from [`super::tls::ReloadWatcher`]), and handing each new connection the table in force.
//!
//! The table itself (format, lookup) is [`crate::smtp::RecipientTable`]. Here it sits behind
//! an [`ArcSwap`]: a connection takes the current table once, when it starts (a few atomic
//! operations, no lock), and keeps that snapshot for its whole session; a reload builds the new
//! table off the reactors (on the SIGHUP thread) and swaps it in, so sessions that began before
//! keep the old one and later ones get the new one. A file that cannot be read or parsed
//! leaves the table in force unchanged and is logged with the reason.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::smtp::{RecipientTable, TableError, MAX_RECIPIENT_TABLE_BYTES};

/// Why a recipient table file could not be used. `Display` is one line.
#[derive(Debug)]
pub enum RecipientsError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The file is larger than [`MAX_RECIPIENT_TABLE_BYTES`].
    TooLarge(PathBuf, u64),
    /// A line is malformed.
    Parse(PathBuf, TableError),
}

impl fmt::Display for RecipientsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(p, e) => write!(f, "recipient table {}: {e}", p.display()),
            Self::TooLarge(p, n) => write!(
                f,
                "recipient table {}: {n} bytes is above the limit of {MAX_RECIPIENT_TABLE_BYTES}",
                p.display()
            ),
            Self::Parse(p, e) => write!(f, "recipient table {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for RecipientsError {}

/// What a load found, for the log line.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    /// Entries in the table.
    pub entries: usize,
    /// `@domain` entries among them.
    pub domains: usize,
    /// Heap bytes the table holds.
    pub memory_bytes: usize,
    /// How long reading and building it took.
    pub took: Duration,
}

impl fmt::Display for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} entries ({} @domain), {} KiB, loaded in {} ms",
            self.entries,
            self.domains,
            self.memory_bytes.div_ceil(1024),
            self.took.as_millis()
        )
    }
}

/// Reads and parses the table at `path`.
///
/// # Errors
/// [`RecipientsError`] when the file cannot be read, is too large or has a bad line.
pub fn read_table(path: &Path) -> Result<(RecipientTable, Loaded), RecipientsError> {
    let started = Instant::now();
    let len = std::fs::metadata(path)
        .map_err(|e| RecipientsError::Read(path.to_path_buf(), e))?
        .len();
    if len > MAX_RECIPIENT_TABLE_BYTES as u64 {
        return Err(RecipientsError::TooLarge(path.to_path_buf(), len));
    }
    let text = std::fs::read(path).map_err(|e| RecipientsError::Read(path.to_path_buf(), e))?;
    let table = RecipientTable::from_bytes(text)
        .map_err(|e| RecipientsError::Parse(path.to_path_buf(), e))?;
    let loaded = Loaded {
        entries: table.len(),
        domains: table.domain_entries(),
        memory_bytes: table.memory_bytes(),
        took: started.elapsed(),
    };
    Ok((table, loaded))
}

/// The table file and the table in force.
#[derive(Debug)]
pub struct Recipients {
    path: PathBuf,
    current: ArcSwap<RecipientTable>,
}

impl Recipients {
    /// Loads the table at `path`.
    ///
    /// # Errors
    /// See [`read_table`].
    pub fn load(path: &Path) -> Result<(Arc<Self>, Loaded), RecipientsError> {
        let (table, loaded) = read_table(path)?;
        Ok((
            Arc::new(Self {
                path: path.to_path_buf(),
                current: ArcSwap::from_pointee(table),
            }),
            loaded,
        ))
    }

    /// The table in force now (a snapshot; lock-free).
    pub fn current(&self) -> Arc<RecipientTable> {
        self.current.load_full()
    }

    /// Reads the file again and puts the new table in force; on error the old one stays.
    ///
    /// # Errors
    /// See [`read_table`].
    pub fn reload(&self) -> Result<Loaded, RecipientsError> {
        let (table, loaded) = read_table(&self.path)?;
        self.current.store(Arc::new(table));
        Ok(loaded)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_swaps_and_a_bad_file_keeps_the_old_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rcpts");
        std::fs::write(&path, "a@x.test\n").unwrap();
        let (r, loaded) = Recipients::load(&path).unwrap();
        assert_eq!(loaded.entries, 1);
        let before = r.current();
        assert!(before.accepts("a@x.test", "x.test"));
        std::fs::write(&path, "b@x.test\n@y.test\n").unwrap();
        assert_eq!(r.reload().unwrap().entries, 2);
        let after = r.current();
        assert!(after.accepts("b@x.test", "x.test") && !after.accepts("a@x.test", "x.test"));
        assert!(
            before.accepts("a@x.test", "x.test"),
            "a snapshot does not change"
        );
        std::fs::write(&path, "b@x.test\nbroken line\n").unwrap();
        let e = r.reload().unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(r.current().accepts("b@x.test", "x.test"));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(r.reload(), Err(RecipientsError::Read(..))));
        assert_eq!(r.current().len(), 2);
    }
}
