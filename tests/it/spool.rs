//! Spool integration tests: the tools through the real binary, torn tails at every byte, a
//! SIGKILL crash of a child writing through the real writer, and a full filesystem.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ringmx::buffers::{BufferConfig, BufferPool};
use ringmx::spool::frame::{self, Kind, HEADER_LEN};
use ringmx::spool::reader::{self, DamageKind};
use ringmx::spool::segment::{self, Step, Walker};
use ringmx::spool::{EnvelopeRecord, Spool, SpoolConfig, SpoolError, SyncPolicy};

const HOST: &str = "mx.test";

fn envelope(rcpts: &[&str]) -> EnvelopeRecord {
    EnvelopeRecord {
        client_ip: "198.51.100.4".parse().unwrap(),
        received_us: frame::unix_us(SystemTime::now()),
        helo: "client.example".into(),
        esmtp: true,
        mail_from: "sender@example.org".into(),
        declared_size: None,
        body_8bitmime: false,
        smtputf8: false,
        rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
        tls: None,
    }
}

/// A deterministic message of about `len` bytes: headers, blank line, CRLF lines.
fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut v = format!("From: <s@example.org>\r\nSubject: message {seed}\r\n\r\n").into_bytes();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        for _ in 0..70 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(b'!' + (x % 90) as u8);
        }
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// The client's bytes of a stored message: what follows our Received: header.
fn client_part(stored: &[u8]) -> &[u8] {
    assert!(stored.starts_with(b"Received: from client.example ([198.51.100.4])\r\n\tby mx.test"));
    let end = stored
        .windows(8)
        .position(|w| w == b" +0000\r\n")
        .expect("date ends the Received: header")
        + 8;
    &stored[end..]
}

/// Writes messages one at a time (deterministic layout) and closes the spool.
fn write_messages(dir: &Path, sync: SyncPolicy, msgs: &[(Vec<&str>, Vec<u8>)]) -> Vec<String> {
    let mut cfg = SpoolConfig::new(dir, 0, HOST);
    cfg.sync = sync;
    tokio_uring::start(async {
        let spool = Spool::open(cfg, BufferPool::register(BufferConfig::default()))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for (rcpts, b) in msgs {
            let mut w = spool.begin(&envelope(rcpts));
            for c in b.chunks(16 * 1024) {
                w.push(c);
                w.flush().await.unwrap();
            }
            ids.push(w.commit().await.unwrap());
        }
        spool.close().await.unwrap();
        ids
    })
}

fn ringmx(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn spool_tools_ls_cat_export_check() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let gbk = b"From: <cn@example.cn>\r\nSubject: =?GBK?B?xOO6ww==?=\r\n\r\nni hao\r\n".to_vec();
    let big = body(7, 200_000);
    let msgs = vec![
        (vec!["a@example.test"], gbk.clone()),
        (vec!["b@example.test", "c@example.test"], big.clone()),
    ];
    let ids = write_messages(&dir, SyncPolicy::None, &msgs);
    let d = dir.to_str().unwrap();

    let (code, out, err) = ringmx(&["spool", "--spool", d, "ls"]);
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with(&ids[0]), "{text}");
    assert!(lines[0].ends_with("\t你好"), "decoded GBK subject: {text}");
    assert!(lines[0].contains("\t198.51.100.4\t"), "{text}");
    assert!(
        lines[0].contains("\t<sender@example.org>\t<a@example.test>\t"),
        "{text}"
    );
    assert!(
        lines[1].contains("<b@example.test>,<c@example.test>"),
        "{text}"
    );
    assert!(lines[1].ends_with("\tmessage 7"), "{text}");

    let (code, out, _) = ringmx(&["spool", "ls", "--json", "--spool", d]);
    assert_eq!(code, 0);
    let first: serde_json::Value =
        serde_json::from_slice(out.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["subject"], "你好");
    assert_eq!(first["id"], ids[0].as_str());

    for (id, (_, b)) in ids.iter().zip(&msgs) {
        let (code, out, err) = ringmx(&["spool", "--spool", d, "cat", id]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(client_part(&out), &b[..], "cat is byte-exact");
    }
    let (code, _, err) = ringmx(&["spool", "--spool", d, "cat", "0000000000000"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("ringmx spool: 0000000000000: no committed message"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    let (code, _, err) = ringmx(&["spool", "--spool", "/nonexistent/spool", "ls"]);
    assert_eq!(code, 1);
    assert!(err.contains("no such spool directory"), "{err}");
    let (code, _, _) = ringmx(&["spool", "export", "--spool", d]);
    assert_eq!(code, 2, "usage error without a target");

    // Export, incrementally.
    let eml = tmp.path().join("eml");
    let e = eml.to_str().unwrap();
    let (code, out, err) = ringmx(&["spool", "--spool", d, "export", "--eml", e]);
    assert_eq!(code, 0, "{err}");
    assert!(
        String::from_utf8_lossy(&out).starts_with("exported 2 new"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    for (id, (_, b)) in ids.iter().zip(&msgs) {
        let f = fs::read(eml.join(format!("{id}.eml"))).unwrap();
        assert_eq!(client_part(&f), &b[..]);
    }
    let (_, out, _) = ringmx(&["spool", "--spool", d, "export", "--eml", e]);
    assert!(String::from_utf8_lossy(&out).starts_with("exported 0 new message(s), 0 already"));
    // A new message, then the rerun exports exactly it.
    let more = write_messages(
        &dir,
        SyncPolicy::None,
        &[(vec!["d@example.test"], body(9, 500))],
    );
    let (_, out, _) = ringmx(&["spool", "--spool", d, "export", "--eml", e]);
    assert!(
        String::from_utf8_lossy(&out).starts_with("exported 1 new"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(eml.join(format!("{}.eml", more[0])).exists());
    // Lost progress file: files already there are recognised, not rewritten.
    fs::remove_file(eml.join(".ringmx-export.json")).unwrap();
    let (_, out, _) = ringmx(&["spool", "--spool", d, "export", "--eml", e]);
    assert!(String::from_utf8_lossy(&out).starts_with("exported 0 new message(s), 3 already"));

    let md = tmp.path().join("Maildir");
    let m = md.to_str().unwrap();
    let (code, _, err) = ringmx(&["spool", "--spool", d, "export", "--maildir", m]);
    assert_eq!(code, 0, "{err}");
    let names: Vec<String> = fs::read_dir(md.join("new"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3);
    assert!(
        fs::read_dir(md.join("tmp")).unwrap().next().is_none(),
        "tmp/ is empty"
    );
    // A mail reader moves one to cur/ with flags; a rerun without progress must not redeliver.
    let moved = &names[0];
    fs::rename(
        md.join("new").join(moved),
        md.join("cur").join(format!("{moved}:2,S")),
    )
    .unwrap();
    fs::remove_file(md.join(".ringmx-export.json")).unwrap();
    let (_, out, _) = ringmx(&["spool", "--spool", d, "export", "--maildir", m]);
    assert!(String::from_utf8_lossy(&out).starts_with("exported 0 new message(s), 3 already"));

    let (code, out, _) = ringmx(&["spool", "--spool", d, "check"]);
    assert_eq!(code, 0);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("total: 2 segment(s),")
            && text.contains("3 committed, 0 aborted, 0 incomplete, 0 torn tail(s)"),
        "{text}"
    );
    let (code, out, _) = ringmx(&["spool", "--spool", d, "check", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["committed"], 3);
    assert_eq!(v["corrupt"], 0);
}

/// Frame boundaries of a segment: (offset, kind, id).
fn frames(path: &Path) -> Vec<(u64, Kind, u64)> {
    let mut w = Walker::open(path).unwrap();
    let mut v = Vec::new();
    while let Step::Frame { offset, header, .. } = w.next_step().unwrap() {
        v.push((offset, header.kind, header.id));
    }
    v
}

#[test]
fn spool_torn_tail_at_every_byte_keeps_exactly_the_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let msgs = vec![
        (vec!["a@x"], body(1, 300)),
        (vec!["b@x"], body(2, 40_000)),
        (vec!["c@x"], body(3, 700)),
    ];
    write_messages(&src, SyncPolicy::None, &msgs);
    let (_, seg) = segment::list_segments(&src).unwrap().remove(0);
    let name = seg.file_name().unwrap().to_owned();
    let bytes = fs::read(&seg).unwrap();
    let layout = frames(&seg);
    let boundaries: Vec<u64> = layout
        .iter()
        .map(|f| f.0)
        .chain([bytes.len() as u64])
        .collect();
    // Each message is committed once its Commit frame is whole.
    let commit_ends: Vec<(u64, u64)> = layout
        .iter()
        .enumerate()
        .filter(|(_, f)| f.1 == Kind::Commit)
        .map(|(i, f)| (boundaries[i + 1], f.2))
        .collect();
    assert_eq!(commit_ends.len(), 3);
    // Cut anywhere from the start of the second message's Commit frame to the end.
    let second_commit = layout
        .iter()
        .filter(|f| f.1 == Kind::Commit)
        .nth(1)
        .unwrap()
        .0;
    let work = tmp.path().join("cut");
    fs::create_dir(&work).unwrap();
    let path = work.join(&name);
    let mut cuts = 0;
    for cut in second_commit..=bytes.len() as u64 {
        fs::write(&path, &bytes[..cut as usize]).unwrap();
        let want: Vec<u64> = commit_ends
            .iter()
            .filter(|(end, _)| *end <= cut)
            .map(|c| c.1)
            .collect();
        let got: Vec<u64> = reader::read_spool(&work)
            .unwrap()
            .iter()
            .map(|m| m.id.0)
            .collect();
        assert_eq!(got, want, "cut at {cut}");
        let check = reader::check_spool(&work).unwrap();
        assert!(check.is_ok(), "cut at {cut}: {check:?}");
        let at_boundary = boundaries.contains(&cut);
        assert_eq!(
            check.torn_tails == 1,
            !at_boundary,
            "cut at {cut}: {check:?}"
        );
        if !at_boundary {
            let d = check.segments[0].damage.as_ref().unwrap();
            assert_eq!(d.kind, DamageKind::TornTail);
            assert_eq!(d.offset, *boundaries.iter().rfind(|b| **b < cut).unwrap());
        }
        // Recovery cuts the tail and seals; the same messages remain, and check is clean.
        if cut % 7 == 0 || !at_boundary && cut % 3 == 0 {
            let rec = segment::recover(&work, 0, u64::MAX / 2).unwrap();
            assert_eq!(rec.next_seq, 2);
            let after = reader::check_spool(&work).unwrap();
            assert!(
                after.is_ok() && after.torn_tails == 0 && after.segments[0].sealed,
                "cut {cut}: {after:?}"
            );
            let again: Vec<u64> = reader::read_spool(&work)
                .unwrap()
                .iter()
                .map(|m| m.id.0)
                .collect();
            assert_eq!(again, want);
        }
        cuts += 1;
    }
    assert!(cuts > 100);
}

#[test]
fn spool_check_tells_crash_gaps_from_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let ids = write_messages(
        &dir,
        SyncPolicy::None,
        &[(vec!["a@x"], body(1, 300)), (vec!["b@x"], body(2, 300))],
    );
    let (_, seg) = segment::list_segments(&dir).unwrap().remove(0);
    let layout = frames(&seg);
    let second_env = layout
        .iter()
        .filter(|f| f.1 == Kind::Envelope)
        .nth(1)
        .unwrap()
        .0 as usize;
    let mut bytes = fs::read(&seg).unwrap();
    // Zero the second message's first write, as if it was in flight at a crash: unsealed file.
    let sealed = bytes.clone();
    let seal_len = HEADER_LEN + frame::SealRecord::LEN;
    bytes.truncate(bytes.len() - seal_len);
    let mut gap = bytes.clone();
    gap[second_env..second_env + 100].fill(0);
    let mut tail = Vec::new();
    frame::encode_frame(Kind::Abort, 1, b"", &mut tail);
    gap.extend_from_slice(&tail);
    fs::write(&seg, &gap).unwrap();
    let r = reader::check_spool(&dir).unwrap();
    assert!(r.is_ok() && r.crash_gaps == 1, "{r:?}");
    assert_eq!(reader::read_spool(&dir).unwrap().len(), 1);
    let d = dir.to_str().unwrap();
    assert_eq!(ringmx(&["spool", "--spool", d, "check"]).0, 0);
    // The same damage in a sealed segment is corruption: exit 1.
    let mut bad = sealed;
    bad[second_env + 30] ^= 0x55;
    fs::write(&seg, &bad).unwrap();
    let r = reader::check_spool(&dir).unwrap();
    assert!(!r.is_ok() && r.corrupt == 1, "{r:?}");
    let (code, out, _) = ringmx(&["spool", "--spool", d, "check"]);
    assert_eq!(code, 1);
    assert!(String::from_utf8_lossy(&out).contains("CORRUPT"));
    // The first message is still readable.
    let msgs = reader::read_spool(&dir).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].id.to_string(), ids[0]);
}

const CRASH_ENV: &str = "RINGMX_SPOOL_CRASH_CHILD";

/// Not a test on its own: the child process of `spool_crash_kill9_keeps_acked`. It writes
/// messages with 16 concurrent writers through the real writer (group commit) and prints
/// `ACK <id> <seed> <len>` after each commit resolves, until it is killed.
#[test]
#[ignore = "child process of spool_crash_kill9_keeps_acked"]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    tokio_uring::start(async move {
        let pool = BufferPool::register(BufferConfig::default());
        let mut cfg = SpoolConfig::new(&dir, 0, HOST);
        cfg.segment_size = 2 << 20;
        let spool = Spool::open(cfg, pool).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let spool = spool.clone();
            tasks.push(tokio_uring::spawn(async move {
                for i in 0.. {
                    let seed = t * 1_000_000 + i;
                    let len =
                        [200, 3000, 70_000, 150_000][(seed % 4) as usize] + (seed % 1000) as usize;
                    let b = body(seed, len);
                    let mut w = spool.begin(&envelope(&["r@x"]));
                    for c in b.chunks(16 * 1024) {
                        w.push(c);
                        w.flush().await.unwrap();
                    }
                    let id = w.commit().await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {id} {seed} {len}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn spool_crash_kill9_keeps_acked() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("spool");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spool::crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ENV, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader_thread = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ACK ") && tx.send(line).is_err() {
                break;
            }
        }
    });
    // Kill it mid-stream: after enough acks, or 4 s after the first one (starting the child
    // can take long on a loaded machine; at most 30 s are given to that).
    let spawned = Instant::now();
    let mut first_ack: Option<Instant> = None;
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let out_of_time = match first_ack {
            Some(t) => t.elapsed() >= Duration::from_secs(4),
            None => spawned.elapsed() >= Duration::from_secs(30),
        };
        if out_of_time {
            break;
        }
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(20)) {
            first_ack.get_or_insert_with(Instant::now);
            acked.push(l);
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader_thread.join().unwrap();
    acked.extend(rx.try_iter());
    assert!(
        acked.len() >= 20,
        "the child acknowledged only {} messages",
        acked.len()
    );

    // Reopen through the writer (runs recovery), then read.
    tokio_uring::start(async {
        let spool = Spool::open(
            SpoolConfig::new(&dir, 0, HOST),
            BufferPool::heap_only(BufferConfig::default()),
        )
        .await
        .unwrap();
        spool.close().await.unwrap();
    });
    let stored: HashMap<String, _> = reader::read_spool(&dir)
        .unwrap()
        .into_iter()
        .map(|m| (m.id.to_string(), m))
        .collect();
    for line in &acked {
        let f: Vec<&str> = line.split(' ').collect();
        let (id, seed, len): (&str, u64, usize) =
            (f[1], f[2].parse().unwrap(), f[3].parse().unwrap());
        let m = stored
            .get(id)
            .unwrap_or_else(|| panic!("acked message {id} lost"));
        assert_eq!(
            client_part(&m.read_data().unwrap()),
            &body(seed, len)[..],
            "{id} byte-exact"
        );
    }
    let check = reader::check_spool(&dir).unwrap();
    assert!(
        check.is_ok() && check.torn_tails == 0 && check.crash_gaps == 0,
        "{check:?}"
    );
    assert!(check.committed as usize >= acked.len());
    eprintln!(
        "crash test: {} acked before SIGKILL, {} committed on disk, {} incomplete cut or skipped",
        acked.len(),
        check.committed,
        check.incomplete
    );
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A tmpfs of `size` (e.g. `2m`) mounted at `<tmp>/small`, unmounted on drop; `None` (and a
/// SKIPPED line naming `test`) where mounting is not allowed (not root).
fn small_tmpfs(tmp: &Path, size: &str, test: &str) -> Option<(PathBuf, Mount)> {
    let mnt = tmp.join("small");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();
    if !matches!(mounted, Ok(s) if s.success()) {
        eprintln!("SKIPPED {test}: cannot mount a tmpfs (needs root)");
        return None;
    }
    Some((mnt.clone(), Mount(mnt)))
}

#[test]
fn spool_enospc_fails_commit_and_resumes_after_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((mnt, _mount)) = small_tmpfs(
        tmp.path(),
        "2m",
        "spool_enospc_fails_commit_and_resumes_after_space_is_freed",
    ) else {
        return;
    };
    let filler = mnt.join("filler");
    fs::write(&filler, vec![7u8; 600 * 1024]).unwrap();
    let dir = mnt.join("spool");
    let (acked, err, resumed) = tokio_uring::start(async {
        let spool = Spool::open(
            SpoolConfig::new(&dir, 0, HOST),
            BufferPool::register(BufferConfig::default()),
        )
        .await
        .unwrap();
        let mut acked = Vec::new();
        let mut err = None;
        for seed in 0..100u64 {
            let b = body(seed, 100_000);
            let mut w = spool.begin(&envelope(&["r@x"]));
            let mut failed = None;
            for c in b.chunks(16 * 1024) {
                w.push(c);
                if let Err(e) = w.flush().await {
                    failed = Some(e);
                }
            }
            match (failed, w.commit().await) {
                (None, Ok(id)) => acked.push((id, seed)),
                (Some(e), Err(_)) | (None, Err(e)) => {
                    err = Some(e);
                    break;
                }
                (Some(e), Ok(id)) => panic!("{id} committed after a failed flush: {e}"),
            }
        }
        // Still full: later messages fail too, without a new file for each attempt.
        let files = || segment::list_segments(&dir).unwrap().len();
        let (before, created) = (files(), spool.stats().segments);
        for i in 0..20 {
            let mut w = spool.begin(&envelope(&["r@x"]));
            w.push(&body(1000 + i, 100_000));
            let still = w.commit().await;
            assert!(matches!(still, Err(SpoolError::NoSpace)), "{still:?}");
        }
        assert!(
            files() <= before + 1,
            "{before} -> {} segment files",
            files()
        );
        let churn = spool.stats().segments - created;
        assert!(
            churn <= 1,
            "{churn} segments created while the disk was full"
        );
        fs::remove_file(&filler).unwrap();
        let mut w = spool.begin(&envelope(&["r@x"]));
        w.push(&body(2000, 100_000));
        let resumed = w
            .commit()
            .await
            .expect("writing resumes once space is freed");
        let st = spool.stats();
        assert!(st.write_errors >= 1, "{st:?}");
        spool.close().await.unwrap();
        (acked, err, resumed)
    });
    assert!(matches!(err, Some(SpoolError::NoSpace)), "{err:?}");
    assert!(
        acked.len() >= 5,
        "{} messages fit before the disk was full",
        acked.len()
    );
    let stored: HashMap<String, _> = reader::read_spool(&dir)
        .unwrap()
        .into_iter()
        .map(|m| (m.id.to_string(), m))
        .collect();
    for (id, seed) in &acked {
        let m = stored.get(id).unwrap_or_else(|| panic!("acked {id} lost"));
        assert_eq!(
            client_part(&m.read_data().unwrap()),
            &body(*seed, 100_000)[..]
        );
    }
    assert_eq!(
        client_part(&stored[&resumed].read_data().unwrap()),
        &body(2000, 100_000)[..]
    );
    assert_eq!(
        stored.len(),
        acked.len() + 1,
        "no failed message is returned as mail"
    );
    let check = reader::check_spool(&dir).unwrap();
    assert!(check.is_ok(), "{check:?}");
}

/// On a full disk the delivery journal can still record outcomes (its reserve): only those
/// records let the stage delete finished segments and give the space back.
#[test]
fn journal_appends_on_a_full_disk_from_its_reserve() {
    use ringmx::spool::id::MessageId;
    use ringmx::spool::journal::{read_journal, DeliveryRecord, Journal, RecordKind};
    let tmp = tempfile::tempdir().unwrap();
    let Some((mnt, _mount)) = small_tmpfs(
        tmp.path(),
        "4m",
        "journal_appends_on_a_full_disk_from_its_reserve",
    ) else {
        return;
    };
    let (mut journal, old) = Journal::open(&mnt).unwrap();
    assert!(old.is_empty());
    // Fill the disk to the last byte.
    let mut filler = fs::File::create(mnt.join("filler")).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let full = loop {
        if let Err(e) = filler.write_all(&chunk).and_then(|()| filler.sync_all()) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    loop {
        if filler.write_all(&[7u8; 512]).is_err() {
            break;
        }
    }
    // 2,000 records of about 100 bytes: well inside the reserve.
    let records: Vec<DeliveryRecord> = (0..2000u32)
        .map(|i| DeliveryRecord {
            kind: RecordKind::Delivered,
            id: MessageId(u64::from(i)),
            rcpt: 0,
            at_us: 1,
            next_us: 0,
            attempts: 1,
            code: 250,
            reply: "250 2.0.0 Ok: queued as 4ABC".into(),
        })
        .collect();
    for batch in records.chunks(100) {
        journal.append(batch).unwrap();
    }
    drop(journal);
    assert_eq!(read_journal(&mnt).unwrap().records.len(), records.len());
}
