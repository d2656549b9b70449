//! The cgroup v2 VM runner, booted for real with busybox-static as the guest binary (busybox
//! dispatches on argv[0], which the runner sets to the host file name). Each test is one boot,
//! about 5 s under TCG.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use cairn_testsupport::vm::{self, GuestFile, VmError, VmOptions, VmOutcome};
use cairn_testsupport::{require_command, require_root, ServiceDir};

const BUSYBOX: &str = "/bin/busybox";

fn can_boot(test: &str) -> bool {
    require_root(test) && require_command(test, "qemu-system-x86_64")
}

/// Runs busybox with `args` in the VM; removes the console log kept for a non-zero status.
fn boot(args: &[&str], opts: &VmOptions) -> VmOutcome {
    let outcome = vm::run(Path::new(BUSYBOX), args, opts).expect("run busybox in the VM");
    eprintln!(
        "status {}, boot {:.1} s, total {:.1} s; output:\n{}",
        outcome.status,
        outcome.boot.as_secs_f64(),
        outcome.elapsed.as_secs_f64(),
        outcome.output
    );
    if let Some(log) = &outcome.console_log {
        fs::remove_file(log).expect("remove the kept console log");
    }
    outcome
}

fn sh(script: &str) -> VmOutcome {
    boot(&["sh", "-c", script], &VmOptions::default())
}

/// Runs the `cairn-vm-run` binary, keeping its console logs in `dir`.
fn cli(dir: &ServiceDir, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-vm-run"))
        .args(args)
        .env("CAIRN_TEST_TMP", dir.path())
        .output()
        .expect("run cairn-vm-run");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn vm_exit_status_zero() {
    if !can_boot("vm_exit_status_zero") {
        return;
    }
    let outcome = sh("exit 0");
    assert_eq!(outcome.status, 0);
    assert!(outcome.console_log.is_none());
}

#[test]
fn vm_cli_streams_output_and_exits_with_the_status() {
    if !can_boot("vm_cli_streams_output_and_exits_with_the_status") {
        return;
    }
    let dir = ServiceDir::new("vm-cli");
    let out = cli(
        &dir,
        &[
            BUSYBOX,
            "sh",
            "-c",
            "echo to stdout; echo to stderr >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "to stdout\nto stderr\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited with 3") && stderr.contains("console log"),
        "{stderr}"
    );
}

#[test]
fn vm_signal_death_is_128_plus_the_signal() {
    if !can_boot("vm_signal_death_is_128_plus_the_signal") {
        return;
    }
    // 137 has bit 7 set, which only the console marker carries (isa-debug-exit keeps 7 bits).
    assert_eq!(sh("kill -9 $$").status, 137);
}

#[test]
fn vm_args_env_and_files_reach_the_guest() {
    if !can_boot("vm_args_env_and_files_reach_the_guest") {
        return;
    }
    let dir = ServiceDir::new("vm-files");
    let file = dir.path().join("hello.txt");
    fs::write(&file, "hello from the host").unwrap();
    let opts = VmOptions {
        files: vec![GuestFile::parse(&format!("{}:/data/", file.display())).unwrap()],
        env: vec![("CAIRN_VM_TEST".into(), "x 'y' $z".into())],
        ..VmOptions::default()
    };
    let script = r#"printf '[%s]' "$@"; echo; cat /data/hello.txt; echo; echo "$CAIRN_IN_VM|$CAIRN_VM_TEST|$PWD""#;
    let args = [
        "sh",
        "-c",
        script,
        "argv0",
        "a b",
        "it's",
        "$HOME",
        "--test-threads=1",
        "",
    ];
    let outcome = boot(&args, &opts);
    assert_eq!(outcome.status, 0);
    assert_eq!(
        outcome.output,
        "[a b][it's][$HOME][--test-threads=1][]\nhello from the host\n1|x 'y' $z|/tmp\n"
    );
}

#[test]
fn vm_cgroup2_has_memory_cpu_pids_io() {
    if !can_boot("vm_cgroup2_has_memory_cpu_pids_io") {
        return;
    }
    let outcome = sh("f=/sys/fs/cgroup/cgroup.controllers; cat $f; \
         for c in memory cpu pids io; do grep -qw $c $f || exit 1; done");
    assert_eq!(outcome.status, 0, "{}", outcome.output);
    for controller in ["memory", "cpu", "pids", "io"] {
        assert!(
            outcome.output.split_whitespace().any(|c| c == controller),
            "{}",
            outcome.output
        );
    }
}

#[test]
fn vm_modules_and_quota_tools_work() {
    if !can_boot("vm_modules_and_quota_tools_work") {
        return;
    }
    let outcome = sh(r#"set -e
        for m in loop xfs ext4 quota_v2; do grep -q "^$m " /proc/modules; done
        test -e /dev/loop-control
        chattr 2>&1 | grep -q Usage; lsattr -V -d / 2>&1 | grep -q '^lsattr'; mkfs.ext4 -V 2>/dev/null
        truncate -s 300M /tmp/xfs.img; mkfs.xfs -q /tmp/xfs.img
        mkdir /mnt/x; mount -o loop,prjquota /tmp/xfs.img /mnt/x
        xfs_quota -x -c 'state -p' /mnt/x | grep -q 'Enforcement: ON'
        umount /mnt/x; echo ok"#);
    assert_eq!((outcome.status, outcome.output.as_str()), (0, "ok\n"));
}

#[test]
fn vm_timeout_kills_qemu() {
    if !can_boot("vm_timeout_kills_qemu") {
        return;
    }
    let dir = ServiceDir::new("vm-timeout");
    let out = cli(&dir, &["--timeout", "2", BUSYBOX, "sleep", "600"]);
    assert_eq!(out.status.code(), Some(124));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not finish within 2 s"), "{stderr}");
}

#[test]
fn vm_kernel_panic_is_an_error() {
    if !can_boot("vm_kernel_panic_is_an_error") {
        return;
    }
    let err = vm::run(
        Path::new(BUSYBOX),
        &["sh", "-c", "echo c >/proc/sysrq-trigger"],
        &VmOptions::default(),
    )
    .expect_err("a kernel panic gives no status");
    match err.get_ref().and_then(|e| e.downcast_ref::<VmError>()) {
        Some(VmError::KernelPanic { log }) => fs::remove_file(log).unwrap(),
        _ => panic!("expected a kernel panic, got {err}"),
    }
}
