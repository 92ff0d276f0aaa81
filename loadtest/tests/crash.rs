//! The no-loss check at small scale: runs `loadtest/crash-test.sh --quick` (ringmx killed with
//! `kill -9` under load, restarted, spool exported, every acknowledged message checked byte for
//! byte) with the `ringmx` binary of the same build.
//!
//! `cargo test --workspace` builds that binary (the ringmx package's own tests need it); with
//! `cargo test -p loadtest` alone it may be missing, and the test says so and passes. It also
//! passes with a message where the kernel refuses io_uring, like the server's own tests.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

/// The quick crash test takes about 10 s; allow for a slow, busy machine.
const LIMIT: Duration = Duration::from_secs(180);

#[test]
fn kill_9_loses_no_acknowledged_mail() {
    let source = common::source();
    let Some(ringmx) = common::ringmx() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("crash-test.sh");
    // Output goes to files: a pipe nobody reads could fill up and stall the script. They go in
    // Cargo's scratch directory for this package's tests (under `target/`).
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out_path = tmp.join(format!("smtp-source-crash-{}.out", std::process::id()));
    let err_path = tmp.join(format!("smtp-source-crash-{}.err", std::process::id()));
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("--quick")
        .env("RINGMX", &ringmx)
        .env("SMTP_SOURCE", source)
        // Port 0: the script takes the port the kernel gives the first server and restarts on it.
        .env("PORT", "0")
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run crash-test.sh");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > LIMIT {
            // The script's own trap stops its server on TERM.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            panic!("crash-test.sh --quick took more than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    // On failure the script prints server logs; keep the message readable.
    let err: String = err
        .chars()
        .rev()
        .take(4000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert!(status.success(), "crash-test failed:\n{out}\n{err}");
    assert!(out.contains("crash-test: PASS"), "{out}");
    // Both rounds acknowledged mail before the kill or after the restart, and verified it.
    let verified: Vec<&str> = out.lines().filter(|l| l.contains("verify:")).collect();
    assert_eq!(verified.len(), 2, "{out}");
    for line in verified {
        assert!(
            line.contains(" 0 lost, 0 duplicated, 0 mismatched"),
            "{line}"
        );
        assert!(
            !line.contains("verify: 0 acked"),
            "something was acknowledged: {line}"
        );
    }
}
