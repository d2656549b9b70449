//! `cairn run --image` of an image that only a registry has, against `cairn dev`: the agent
//! pulls it and `cairn run` shows the pull's progress, then the task's output. A real
//! registry (Debian's docker-registry) behind a loopback proxy that slows every answer, so
//! the pull lasts long enough to be seen (a local pull is over in milliseconds).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_testsupport::images::TestImages;
use cairn_testsupport::registry::Registry;
use cairn_testsupport::{require_root, wait_until};

/// Forwards loopback connections to `target`, at most `bytes_per_sec` toward the client.
/// Threads end with their connections; the listener thread with the test process.
fn slow_proxy(target: String, bytes_per_sec: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pipe(c2, s2, usize::MAX));
            std::thread::spawn(move || pipe(server, client, bytes_per_sec));
        }
    });
    addr
}

fn pipe(mut from: TcpStream, mut to: TcpStream, bytes_per_sec: usize) {
    let chunk = (bytes_per_sec / 20).clamp(1, 64 * 1024);
    let mut buf = vec![0; chunk];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if bytes_per_sec != usize::MAX {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn cairn_run_shows_the_pull_then_the_output() {
    if !require_root("cli_dev_pull") {
        return;
    }
    let registry = Registry::start();
    let pushed = TestImages::get().push_to(&registry, None);
    // ~1.3 MB of layers at 400 KiB/s: a few seconds of pull.
    let proxy = slow_proxy(registry.addr().to_string(), 400 * 1024);
    let image = pushed.multi.reference.replacen(registry.addr(), &proxy, 1);

    let out = tempfile::tempdir().unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "dev",
            "--port",
            "0",
            "--agent-port",
            "0",
            "--insecure-registry",
            &proxy,
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(out.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = || std::fs::read_to_string(out.path().join("stdout")).unwrap_or_default();
    let up = wait_until(Duration::from_secs(60), || {
        stdout().contains("\nCtrl-C stops it")
    });
    let master = stdout()
        .lines()
        .find_map(|l| l.trim().strip_prefix("master: ").map(str::to_string));

    let run = up.then(|| {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args([
                "run",
                "--master",
                master.as_deref().unwrap(),
                "--image",
                &image,
            ])
            .args(["--", "echo", "pulled and ran"])
            .output()
            .unwrap()
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(dev.id()).unwrap()).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let stopped = dev.wait().unwrap();
    let dev_err = std::fs::read_to_string(out.path().join("stderr")).unwrap_or_default();
    assert!(up, "cairn dev did not come up:\n{}\n{dev_err}", stdout());
    let run = run.unwrap();
    let (run_out, run_err) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{run_out}\n{run_err}\n{dev_err}");
    assert!(run_out.contains("pulled and ran"), "{run_out}\n{run_err}");
    // Not a terminal: plain lines, one per change in finished layers, then a summary.
    assert!(
        run_err.contains(&format!("pulling {image}: ")),
        "no progress line in:\n{run_err}"
    );
    assert!(
        run_err.contains(&format!("pulled {image} (3 layers, ")),
        "no summary line in:\n{run_err}"
    );
    assert!(stopped.success(), "cairn dev exited {stopped}:\n{dev_err}");
}
