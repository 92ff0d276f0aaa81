//! The stats unix socket: a small side thread that answers one snapshot per connection, and the
//! one-shot [`query`] that `ringmx stats` sends.
//!
//! Protocol: connect, optionally send one line (`text`, `json` or `prometheus`; nothing or an
//! empty line means text), read the answer until the server closes. The socket file is created
//! with mode 0660, a stale file left by a crashed server is removed at start-up, and the file is
//! removed again when the [`StatsServer`] is dropped (only if it is still ours: not if it was
//! deleted, or replaced by another server's, meanwhile). Stopping never depends on the file:
//! the thread's blocking `accept` is woken by shutting the listening socket down. This module does not compute statistics;
//! it asks the [`Registry`] for a snapshot.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::format::Format;
use super::Registry;

/// Permissions of the socket file: owner and group may read stats.
pub const SOCKET_MODE: u32 = 0o660;
/// How long the server waits for the request line before answering in text.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the server lets a client take to read the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request line read (the longest valid one is `prometheus`).
const MAX_REQUEST: u64 = 64;

/// A running stats socket. Dropping it stops the thread and removes the socket file.
#[derive(Debug)]
pub struct StatsServer {
    path: PathBuf,
    /// Device and inode of the socket file we bound, to remove only our own file.
    file_id: Option<(u64, u64)>,
    /// The listening socket (a second handle), shut down to wake the thread's `accept`.
    listener: UnixListener,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Why the stats socket could not be set up.
#[derive(Debug)]
pub enum StatsError {
    /// Another process answers on this socket.
    InUse(PathBuf),
    /// Something that is not a socket is in the way.
    NotASocket(PathBuf),
    /// bind/chmod/remove failed.
    Io(PathBuf, io::Error),
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse(p) => write!(
                f,
                "stats socket {} is in use by another running server (stop it, or choose another --stats/--spool)",
                p.display()
            ),
            Self::NotASocket(p) => write!(
                f,
                "stats socket path {} exists and is not a socket; remove it or choose another --stats",
                p.display()
            ),
            Self::Io(p, e) => write!(f, "stats socket {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for StatsError {}

impl StatsServer {
    /// Binds `path` (removing a stale socket file first) and starts the answering thread.
    ///
    /// # Errors
    /// [`StatsError`] when the path is taken or cannot be bound.
    pub fn start(path: &Path, registry: Arc<Registry>) -> Result<Self, StatsError> {
        remove_stale(path)?;
        let listener = UnixListener::bind(path).map_err(|e| StatsError::Io(path.into(), e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| StatsError::Io(path.into(), e))?;
        let file_id = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let waker = listener
            .try_clone()
            .map_err(|e| StatsError::Io(path.into(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ringmx-stats".into())
                .spawn(move || serve(&listener, &registry, &stop))
                .map_err(|e| StatsError::Io(path.into(), e))?
        };
        Ok(Self {
            path: path.to_path_buf(),
            file_id,
            listener: waker,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept (it fails with EINVAL); the thread sees the flag and
        // returns. Connecting to the path instead would hang here forever if the file had
        // been deleted or replaced meanwhile.
        if socket2::SockRef::from(&self.listener)
            .shutdown(std::net::Shutdown::Both)
            .is_err()
        {
            let _ = UnixStream::connect(&self.path);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.file_id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn remove_stale(path: &Path) -> Result<(), StatsError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StatsError::Io(path.into(), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(StatsError::NotASocket(path.into()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(StatsError::InUse(path.into())),
        Err(_) => std::fs::remove_file(path).map_err(|e| StatsError::Io(path.into(), e)),
    }
}

fn serve(listener: &UnixListener, registry: &Registry, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, registry) {
                    tracing::debug!("stats client: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("stats socket accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(stream: UnixStream, registry: &Registry) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut line = String::new();
    let mut reader = BufReader::new((&stream).take(MAX_REQUEST));
    match reader.read_line(&mut line) {
        Ok(_) => {}
        // No request within the timeout: the client wants the default.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            line.clear()
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => line.clear(),
        Err(e) => return Err(e),
    }
    let mut w = &stream;
    match Format::from_request(&line) {
        Some(f) => w.write_all(f.render(&registry.snapshot()).as_bytes())?,
        None => w.write_all(b"error: unknown format; send text, json or prometheus\n")?,
    }
    w.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}

/// Asks the server at `path` for one snapshot in `format`.
///
/// # Errors
/// Connect/read errors, with the socket path in the message.
pub fn query(path: &Path, format: Format) -> io::Result<String> {
    let ctx = |e: io::Error| {
        let hint = if matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        ) {
            " (is `ringmx serve` running? see --stats)"
        } else {
            ""
        };
        io::Error::new(
            e.kind(),
            format!("stats socket {}: {e}{hint}", path.display()),
        )
    };
    let mut s = UnixStream::connect(path).map_err(ctx)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(ctx)?;
    s.write_all(format.request().as_bytes()).map_err(ctx)?;
    s.write_all(b"\n").map_err(ctx)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(ctx)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SyncPolicy;

    #[test]
    fn serves_all_formats_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.sock");
        // A stale socket file (nobody listening) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let reg = Arc::new(Registry::new(1, SyncPolicy::Group));
        super::super::ReactorStats::inc(&reg.reactor(0).unwrap().counters.messages_accepted);
        let server = StatsServer::start(&path, reg).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);

        assert!(query(&path, Format::Text)
            .unwrap()
            .contains("messages     accepted 1"));
        let json: serde_json::Value =
            serde_json::from_str(&query(&path, Format::Json).unwrap()).unwrap();
        assert_eq!(json["total"]["counters"]["messages_accepted"], 1);
        assert!(query(&path, Format::Prometheus)
            .unwrap()
            .contains("ringmx_messages_accepted_total{reactor=\"0\"} 1"));

        // A client that sends nothing gets text after the request timeout.
        let mut s = UnixStream::connect(&path).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("ringmx "), "{out}");

        // A second server on the same path is refused while the first runs.
        let reg2 = Arc::new(Registry::new(1, SyncPolicy::Group));
        assert!(matches!(
            StatsServer::start(&path, reg2),
            Err(StatsError::InUse(_))
        ));

        drop(server);
        assert!(!path.exists());
        assert!(query(&path, Format::Text)
            .unwrap_err()
            .to_string()
            .contains("is `ringmx serve` running"));
    }

    #[test]
    fn stops_even_when_its_socket_file_was_removed_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.sock");
        let reg = Arc::new(Registry::new(1, SyncPolicy::Group));
        // Removed (e.g. the spool directory was deleted under a running server).
        let server = StatsServer::start(&path, reg.clone()).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(server);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("dropping the stats server hung");
        // Replaced by another server's socket: stop, and leave the other's file alone.
        let server = StatsServer::start(&path, reg).unwrap();
        std::fs::remove_file(&path).unwrap();
        let other = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(server);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("dropping the stats server hung");
        assert!(path.exists(), "the other server's socket was removed");
        drop(other);
    }

    #[test]
    fn refuses_to_remove_a_regular_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let reg = Arc::new(Registry::new(1, SyncPolicy::Group));
        assert!(matches!(
            StatsServer::start(f.path(), reg),
            Err(StatsError::NotASocket(_))
        ));
        assert!(f.path().exists());
    }
}
