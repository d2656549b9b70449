//! Disk isolators in the cgroup v2 VM, whose kernel has XFS and ext4 project quotas (the
//! host's has neither): run with `scripts/vm-test -p cairn-isolators --test disk_vm`. On the
//! host every test here prints why it skips.
//!
//! Each test makes a 300 MB filesystem image in the guest's `/tmp` (tmpfs), loop-mounts it with
//! `prjquota`, and has a workload process (busybox `dd`) write past a container's 20 MiB.

mod disk_support;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_api::{ContainerId, Reason};
use cairn_isolators::disk::{
    directory_project, DuIsolator, DuOptions, QuotaIsolator, QuotaOptions,
};
use cairn_isolators::{ContainerLimits, Isolator, RecoveredContainer};
use cairn_testsupport::vm::in_vm;
use cairn_testsupport::ServiceDir;
use disk_support::{assert_close, dd, make_image, run, LoopFs, MIB};

fn require_vm(test: &str) -> bool {
    if !in_vm() {
        eprintln!(
            "skipping {test}: runs in the cgroup v2 VM \
             (scripts/vm-test -p cairn-isolators --test disk_vm)"
        );
    }
    in_vm()
}

fn limits(disk: u64) -> ContainerLimits {
    ContainerLimits {
        disk_bytes: Some(disk),
        ..ContainerLimits::default()
    }
}

/// `(used KiB, hard limit KiB)` of every project `xfs_quota` reports on `mount` (`-f` for
/// ext4, which xfs_quota treats as a foreign filesystem).
fn project_report(mount: &Path, foreign: bool) -> HashMap<u32, (u64, u64)> {
    let mut cmd = Command::new("xfs_quota");
    if foreign {
        cmd.arg("-f");
    }
    let out = run(cmd.args(["-x", "-c", "report -p -n -N -b"]).arg(mount));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.strip_prefix('#')?.parse().ok()?;
            let used = fields.next()?.parse().ok()?;
            let _soft = fields.next()?;
            let hard = fields.next()?.parse().ok()?;
            Some((id, (used, hard)))
        })
        .collect()
}

/// Asserts no project in `ids` has a limit left.
fn assert_no_limits(mount: &Path, foreign: bool, ids: std::ops::RangeInclusive<u32>) {
    let report = project_report(mount, foreign);
    for id in ids {
        let hard = report.get(&id).map_or(0, |(_, hard)| *hard);
        assert_eq!(hard, 0, "project {id} still has a limit: {report:?}");
    }
}

#[test]
fn vm_xfs_project_quota_stops_writes_and_recovers() {
    if !require_vm("vm_xfs_project_quota_stops_writes_and_recovers") {
        return;
    }
    let scratch = ServiceDir::new("disk-xfs");
    let image = scratch.path().join("xfs.img");
    // mkfs.xfs refuses filesystems under 300 MB unless told it is a test filesystem.
    make_image(
        &image,
        300 * MIB,
        Command::new("mkfs.xfs")
            .args(["-q", "-f"])
            .env("TEST_DIR", "1")
            .env("TEST_DEV", "1")
            .env("QA_CHECK_FS", "1"),
    );
    let fs = LoopFs::new(&image, "xfs", &scratch.path().join("mnt"), Some("prjquota"));
    let mnt = fs.mount.target.clone();
    let work_dir = mnt.join("sandboxes");
    fs::create_dir(&work_dir).unwrap();
    let ids = 100..=102;
    let options = QuotaOptions {
        project_ids: ids.clone(),
        ..QuotaOptions::default()
    };

    let quota = QuotaIsolator::new(&work_dir, options.clone()).unwrap();
    assert_eq!(quota.fs_type(), "xfs");
    assert_eq!(
        quota.watch_interval(),
        None,
        "no kill by default: no polling"
    );
    let (c1, c2) = (ContainerId::new("c1"), ContainerId::new("c2"));
    quota.prepare(&c1, &limits(20 * MIB)).unwrap();
    let project = quota.project_of(&c1).unwrap();
    let sandbox = work_dir.join("c1");
    assert_eq!(directory_project(&sandbox).unwrap(), (project, true));

    // The workload cannot write 40 MiB into 20 MiB.
    let (ok, err) = dd(&sandbox.join("big"), 40, None);
    assert!(!ok, "writing 40 MiB under a 20 MiB project quota succeeded");
    assert!(err.contains("No space left on device"), "{err}");
    let size = fs::metadata(sandbox.join("big")).unwrap().len();
    assert!((19 * MIB..=20 * MIB).contains(&size), "wrote {size} bytes");
    let stats = quota.usage(&c1).unwrap();
    let used = stats.disk_used_bytes.unwrap();
    assert_close("xfs project usage", used, 20 * MIB, 3);
    assert_eq!(stats.disk_limit_bytes, Some(20 * MIB));
    assert_eq!(
        project_report(&mnt, false).get(&project).unwrap().1,
        20 * 1024
    );
    assert_eq!(
        quota.watch(&c1).unwrap(),
        None,
        "hard quota: no kill by default"
    );
    println!(
        "xfs: dd stopped at {size} bytes ({err:?}); usage {used} of {}",
        20 * MIB
    );

    // c2 will be an orphan after the restart below.
    quota.prepare(&c2, &limits(5 * MIB)).unwrap();
    let orphan_project = quota.project_of(&c2).unwrap();
    assert_ne!(orphan_project, project);
    fs::write(work_dir.join("c2/f"), vec![1u8; MIB as usize]).unwrap();
    drop(quota);

    // A restarted agent with kill_on_exceed recovers c1's project from its directory, reports
    // DISK for it, and releases the orphan.
    let quota = QuotaIsolator::new(
        &work_dir,
        QuotaOptions {
            kill_on_exceed: true,
            watch_interval: Duration::from_secs(1),
            ..options
        },
    )
    .unwrap();
    quota
        .recover(&[RecoveredContainer {
            id: c1.clone(),
            limits: limits(20 * MIB),
        }])
        .unwrap();
    assert_eq!(quota.project_of(&c1), Some(project));
    assert_eq!(quota.project_of(&c2), None);
    assert_eq!(directory_project(&work_dir.join("c2")).unwrap(), (0, false));
    assert_eq!(
        project_report(&mnt, false)
            .get(&orphan_project)
            .map(|p| p.1),
        Some(0)
    );
    assert_eq!(quota.watch_interval(), Some(Duration::from_secs(1)));
    let limitation = quota.watch(&c1).unwrap().expect("usage at the limit");
    assert_eq!(limitation.reason, Reason::ContainerLimitationDisk);
    assert!(
        limitation.message.contains(&(20 * MIB).to_string()),
        "{}",
        limitation.message
    );
    assert_eq!(quota.watch(&c1).unwrap(), None, "reported once");

    // Cleanup removes the limit and the attribute; the files keep charging the project, so
    // its id is not handed out again until the sandbox is gone.
    quota.cleanup(&c1).unwrap();
    quota.cleanup(&c1).unwrap();
    quota.cleanup(&c2).unwrap();
    assert_eq!(directory_project(&sandbox).unwrap(), (0, false));
    assert!(
        sandbox.join("big").exists(),
        "the sandbox is the containerizer's"
    );
    let c3 = ContainerId::new("c3");
    quota.prepare(&c3, &limits(MIB)).unwrap();
    let third = quota.project_of(&c3).unwrap();
    assert!(third != project && third != orphan_project);
    let err = quota
        .prepare(&ContainerId::new("c4"), &limits(MIB))
        .unwrap_err();
    assert!(err.to_string().contains("no free project id"), "{err}");
    quota.cleanup(&ContainerId::new("c4")).unwrap();
    fs::remove_dir_all(&sandbox).unwrap();
    // XFS releases a removed inode's blocks in the background (deferred inactivation).
    nix::unistd::sync();
    let freed = cairn_testsupport::wait_until(Duration::from_secs(10), || {
        project_report(&mnt, false).get(&project).map_or(0, |p| p.0) == 0
    });
    assert!(
        freed,
        "project {project} still charged after its sandbox was removed"
    );
    quota
        .prepare(&ContainerId::new("c4"), &limits(MIB))
        .unwrap();
    assert_eq!(quota.project_of(&ContainerId::new("c4")), Some(project));
    for c in ["c3", "c4"] {
        quota.cleanup(&ContainerId::new(c)).unwrap();
    }
    assert_no_limits(&mnt, false, ids);
    let report = project_report(&mnt, false);
    assert_eq!(report.get(&project).map_or(0, |p| p.0), 0, "{report:?}");
    drop(quota);
    fs.teardown();
}

#[test]
fn vm_ext4_project_quota_stops_unprivileged_writes() {
    if !require_vm("vm_ext4_project_quota_stops_unprivileged_writes") {
        return;
    }
    let scratch = ServiceDir::new("disk-ext4");
    let image = scratch.path().join("ext4.img");
    make_image(
        &image,
        300 * MIB,
        Command::new("mkfs.ext4").args(["-q", "-F", "-O", "quota,project"]),
    );
    let fs = LoopFs::new(
        &image,
        "ext4",
        &scratch.path().join("mnt"),
        Some("prjquota"),
    );
    let mnt = fs.mount.target.clone();
    let work_dir = mnt.join("sandboxes");
    fs::create_dir(&work_dir).unwrap();
    let ids = 5000..=5010;
    let quota = QuotaIsolator::new(
        &work_dir,
        QuotaOptions {
            project_ids: ids.clone(),
            kill_on_exceed: true,
            ..QuotaOptions::default()
        },
    )
    .unwrap();
    assert_eq!(quota.fs_type(), "ext4");
    let c1 = ContainerId::new("c1");
    quota.prepare(&c1, &limits(20 * MIB)).unwrap();
    let project = quota.project_of(&c1).unwrap();
    let sandbox = work_dir.join("c1");
    assert_eq!(directory_project(&sandbox).unwrap(), (project, true));
    // ext4 (VFS quota) exempts CAP_SYS_RESOURCE: the workload runs as nobody, without it.
    fs::set_permissions(&sandbox, fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, err) = dd(&sandbox.join("big"), 40, Some(65534));
    assert!(!ok, "writing 40 MiB under a 20 MiB project quota succeeded");
    assert!(err.contains("quota exceeded"), "{err}");
    let size = fs::metadata(sandbox.join("big")).unwrap().len();
    assert!((19 * MIB..=20 * MIB).contains(&size), "wrote {size} bytes");
    let stats = quota.usage(&c1).unwrap();
    let used = stats.disk_used_bytes.unwrap();
    assert_close("ext4 project usage", used, 20 * MIB, 3);
    assert_eq!(stats.disk_limit_bytes, Some(20 * MIB));
    // ext4 stops short of a limit that is not a multiple of its blocks: still "reached".
    let limitation = quota
        .watch(&c1)
        .unwrap()
        .expect("kill_on_exceed: usage at the limit");
    assert_eq!(limitation.reason, Reason::ContainerLimitationDisk);
    println!("ext4: {}", limitation.message);
    println!(
        "ext4: dd stopped at {size} bytes ({err:?}); usage {used} of {}",
        20 * MIB
    );

    quota.cleanup(&c1).unwrap();
    quota.cleanup(&c1).unwrap();
    assert_eq!(directory_project(&sandbox).unwrap(), (0, false));
    assert_no_limits(&mnt, true, ids);
    drop(quota);
    fs.teardown();
}

#[test]
fn vm_du_reports_disk_limitation() {
    if !require_vm("vm_du_reports_disk_limitation") {
        return;
    }
    let scratch = ServiceDir::new("disk-du");
    let du = DuIsolator::new(scratch.path(), DuOptions::default());
    let id = ContainerId::new("c1");
    du.prepare(&id, &limits(20 * MIB)).unwrap();
    fs::create_dir(scratch.path().join("c1")).unwrap();
    let (ok, err) = dd(&scratch.path().join("c1/big"), 40, None);
    assert!(ok, "{err}");
    let limitation = du.watch(&id).unwrap().expect("40 MiB is over 20 MiB");
    assert_eq!(limitation.reason, Reason::ContainerLimitationDisk);
    let used = du.usage(&id).unwrap().disk_used_bytes.unwrap();
    assert_close("disk/du usage", used, 40 * MIB, 3);
    println!("du: {}", limitation.message);
    du.cleanup(&id).unwrap();
}
