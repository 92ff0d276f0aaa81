//! The control socket: `<spool>/control.sock`, through which `ringmx queue retry|delete` ask the
//! running delivery stage to act, and the one-shot [`request`] those commands send.
//!
//! Protocol: connect, send one line, read one line back, the server closes.
//!
//! ```text
//!   retry ID      ->  ok N          deferred recipients of message ID are due now
//!   retry all     ->  ok N          the same for every queued message (N: messages)
//!   delete ID     ->  ok N          message ID deleted (N: recipients it still had)
//!   (anything)    ->  err TEXT      unknown id, bad request, stage busy…
//! ```
//!
//! The socket lives in the spool directory (beside the default stats socket), mode 0660 like
//! it: whoever may read the spool's statistics may also retry and delete. It exists only while
//! a server with routes runs: the delivery stage binds it in [`bind`] (a stale file left by a
//! crash is removed, one that a running server answers on is an error) and serves it on its
//! own tokio runtime ([`serve`]); the file is removed when the [`ControlSocket`] is dropped
//! (only if it is still ours). This module parses and answers; what a retry or a delete does
//! to the queue and the journal is the stage's ([`super::stage`]).

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::spool::id::MessageId;

/// The control socket's file name inside the spool directory.
pub const CONTROL_NAME: &str = "control.sock";
/// Permissions of the socket file: owner and group may control the queue.
pub const SOCKET_MODE: u32 = 0o660;
/// Longest request line read (`delete ` and a 16-digit id are 23 bytes).
const MAX_REQUEST: u64 = 128;
/// How long the server waits for the request line, and for the stage's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections served at once; more are answered `err busy`.
const MAX_CLIENTS: usize = 16;
/// How long [`request`] waits for the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest answer line [`request`] reads.
const MAX_ANSWER: u64 = 4096;

/// The control socket's path for the spool `dir`.
pub fn control_path(dir: &Path) -> PathBuf {
    dir.join(CONTROL_NAME)
}

/// What the operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Make the deferred recipients of one message (`None`: of every message) due now.
    Retry(Option<MessageId>),
    /// Delete a message: its unfinished recipients are never delivered.
    Delete(MessageId),
    /// Fail a message's pending recipients now, with a DSN to its sender.
    Bounce(MessageId),
}

impl Command {
    /// Parses a request line.
    ///
    /// # Errors
    /// The line is not a request; the text says why.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_ascii_whitespace();
        let (verb, arg) = (words.next(), words.next());
        if words.next().is_some() {
            return Err("too many words".into());
        }
        let id = |a: &str| {
            a.parse::<MessageId>()
                .map_err(|_| format!("{a:?} is not a message id"))
        };
        match (verb, arg) {
            (Some("retry"), Some("all")) => Ok(Self::Retry(None)),
            (Some("retry"), Some(a)) => Ok(Self::Retry(Some(id(a)?))),
            (Some("delete"), Some(a)) => Ok(Self::Delete(id(a)?)),
            (Some("bounce"), Some(a)) => Ok(Self::Bounce(id(a)?)),
            _ => Err("expected retry ID, retry all, delete ID or bounce ID".into()),
        }
    }

    /// The request line (without the line end).
    pub fn line(&self) -> String {
        match self {
            Self::Retry(None) => "retry all".into(),
            Self::Retry(Some(id)) => format!("retry {id}"),
            Self::Delete(id) => format!("delete {id}"),
            Self::Bounce(id) => format!("bounce {id}"),
        }
    }
}

/// Why the stage refused a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The message is not queued (delivered, deleted, or never spooled).
    NotQueued(MessageId),
    /// Something else (e.g. the journal could not record a deletion).
    Other(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotQueued(id) => write!(f, "no message {id} in the queue"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// A command on its way to the stage, with where the answer goes (the count of messages
/// retried, or of recipients deleted).
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// The answer.
    pub reply: oneshot::Sender<Result<usize, Refusal>>,
}

/// The bound control socket. Dropping it removes the socket file if it is still ours.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    /// Device and inode of the file we bound, to remove only our own.
    file_id: Option<(u64, u64)>,
    listener: Option<UnixListener>,
}

/// Binds `<dir>/control.sock` (mode 0660), removing a stale file left by a crashed server.
///
/// # Errors
/// Another server answers on it, something that is not a socket is in the way, or binding
/// failed (the message names the path).
pub fn bind(dir: &Path) -> io::Result<ControlSocket> {
    let path = control_path(dir);
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    match std::fs::symlink_metadata(&path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "control socket path {} exists and is not a socket; remove it",
                    path.display()
                ),
            ));
        }
        Ok(_) => {
            if UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "control socket {} is in use by another running server",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(&path).map_err(ctx)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx(e)),
    }
    let listener = UnixListener::bind(&path).map_err(ctx)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(ctx)?;
    listener.set_nonblocking(true).map_err(ctx)?;
    let file_id = std::fs::symlink_metadata(&path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    Ok(ControlSocket {
        path,
        file_id,
        listener: Some(listener),
    })
}

impl ControlSocket {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket, for [`serve`] (once; the file stays with `self`).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.listener.take();
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.file_id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Accepts control connections on `listener` (from [`ControlSocket::take_listener`]) and
/// passes their commands to the stage over `to_stage`. Runs on the stage's `LocalSet` until the
/// stage stops (the task is dropped with it). Must be called inside the stage's runtime.
pub async fn serve(listener: UnixListener, to_stage: UnboundedSender<Request>) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("control socket: {e}");
            return;
        }
    };
    let clients = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let busy = clients.get() >= MAX_CLIENTS;
        clients.set(clients.get() + 1);
        let (clients, to_stage) = (clients.clone(), to_stage.clone());
        tokio::task::spawn_local(async move {
            if let Err(e) = answer(stream, busy, &to_stage).await {
                tracing::debug!("control client: {e}");
            }
            clients.set(clients.get() - 1);
        });
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    busy: bool,
    to_stage: &UnboundedSender<Request>,
) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let answer = if busy {
        "err busy: too many control connections; try again".to_string()
    } else {
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(r.take(MAX_REQUEST));
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(_)) => execute(&line, to_stage).await,
            Ok(Err(e)) => format!("err bad request: {e}"),
            Err(_) => "err no request line".to_string(),
        }
    };
    w.write_all(answer.as_bytes()).await?;
    w.write_all(b"\n").await?;
    w.shutdown().await
}

async fn execute(line: &str, to_stage: &UnboundedSender<Request>) -> String {
    let command = match Command::parse(line.trim_end_matches(['\r', '\n'])) {
        Ok(c) => c,
        Err(e) => return format!("err bad request: {e}"),
    };
    let (tx, rx) = oneshot::channel();
    if to_stage.send(Request { command, reply: tx }).is_err() {
        return "err the delivery stage is stopping".into();
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
        Ok(Ok(Ok(n))) => format!("ok {n}"),
        Ok(Ok(Err(refusal))) => format!("err {refusal}"),
        Ok(Err(_)) => "err the delivery stage is stopping".into(),
        Err(_) => "err the delivery stage did not answer in time".into(),
    }
}

/// Why [`request`] failed.
#[derive(Debug)]
pub enum ControlError {
    /// No socket, or nobody answers on it: no server with routes runs on this spool.
    NotRunning(PathBuf),
    /// The server refused the command (the text is its reason).
    Refused(String),
    /// Talking to the socket failed.
    Io(PathBuf, io::Error),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRunning(p) => write!(
                f,
                "the server is not running (no control socket answers at {}); start `ringmx serve` with a route, or use --spool",
                p.display()
            ),
            Self::Refused(s) => f.write_str(s),
            Self::Io(p, e) => write!(f, "control socket {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for ControlError {}

/// Sends `command` to the server whose spool is `dir` and returns its count (messages retried,
/// or recipients deleted).
///
/// # Errors
/// [`ControlError`]: no server, a refusal, or an I/O error.
pub fn request(dir: &Path, command: Command) -> Result<usize, ControlError> {
    let path = control_path(dir);
    let io_err = |e: io::Error| ControlError::Io(path.clone(), e);
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning(path));
        }
        Err(e) => return Err(io_err(e)),
    };
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io_err)?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(io_err)?;
    s.write_all(format!("{}\n", command.line()).as_bytes())
        .map_err(io_err)?;
    let mut line = String::new();
    BufReader::new((&s).take(MAX_ANSWER))
        .read_line(&mut line)
        .map_err(io_err)?;
    let line = line.trim_end();
    if let Some(n) = line.strip_prefix("ok ") {
        return n.parse().map_err(|_| {
            ControlError::Io(
                path.clone(),
                io::Error::other(format!("unexpected answer {line:?}")),
            )
        });
    }
    match line.strip_prefix("err ") {
        Some(why) => Err(ControlError::Refused(why.to_string())),
        None if line.is_empty() => Err(ControlError::Io(
            path.clone(),
            io::Error::other("the server closed without answering"),
        )),
        None => Err(ControlError::Io(
            path.clone(),
            io::Error::other(format!("unexpected answer {line:?}")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let id = MessageId::new(1, 0, 7);
        assert_eq!(Command::parse("retry all"), Ok(Command::Retry(None)));
        let line = format!("retry {id}");
        assert_eq!(Command::parse(&line), Ok(Command::Retry(Some(id))));
        assert_eq!(
            Command::parse(&Command::Delete(id).line()),
            Ok(Command::Delete(id))
        );
        assert!(Command::parse("retry").is_err());
        assert!(Command::parse("delete all").is_err());
        assert!(Command::parse("retry xyz").is_err());
        assert!(Command::parse("flush").is_err());
        assert!(Command::parse("retry all now").is_err());
    }

    #[test]
    fn bind_replaces_a_stale_socket_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = control_path(dir.path());
        drop(UnixListener::bind(&path).unwrap());
        let s = bind(dir.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert_eq!(
            bind(dir.path()).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(s);
        assert!(!path.exists());
        assert!(matches!(
            request(dir.path(), Command::Retry(None)),
            Err(ControlError::NotRunning(_))
        ));
        std::fs::write(&path, b"").unwrap();
        assert_eq!(
            bind(dir.path()).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
    }
}
