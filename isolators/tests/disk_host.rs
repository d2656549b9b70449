//! Disk isolators on the host: `disk/du` on a loop-mounted ext4, and `disk/quota`'s detection,
//! which must refuse with a clear reason (the host kernel has no XFS/ext4 project quotas; the
//! enforcement tests run in the VM, `disk_vm.rs`).

mod disk_support;

use std::fs;
use std::process::Command;
use std::time::Duration;

use cairn_api::{ContainerId, Reason};
use cairn_isolators::disk::{DuIsolator, DuOptions, QuotaIsolator, QuotaOptions};
use cairn_isolators::{ContainerLimits, Isolator, IsolatorError, RecoveredContainer};
use cairn_testsupport::{require_command, require_root, ServiceDir};
use disk_support::{assert_close, dd, make_image, LoopFs, Mount, MIB};

fn limits(disk: u64) -> ContainerLimits {
    ContainerLimits {
        disk_bytes: Some(disk),
        ..ContainerLimits::default()
    }
}

#[test]
fn du_lifecycle_on_a_temp_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let du = DuIsolator::new(tmp.path(), DuOptions::default());
    let id = ContainerId::new("c1");
    assert_eq!(du.name(), "disk/du");
    assert_eq!(du.watch_interval(), Some(Duration::from_secs(15)));
    // Unknown containers: cleanup and watch succeed, the others name the container.
    du.cleanup(&id).unwrap();
    assert_eq!(du.watch(&id).unwrap(), None);
    assert!(du.usage(&id).unwrap_err().to_string().contains("c1"));
    assert!(du.isolate(&id, 1).is_err());
    assert!(du.prepare(&ContainerId::new("../x"), &limits(MIB)).is_err());

    du.prepare(&id, &limits(MIB)).unwrap();
    assert!(du.prepare(&id, &limits(MIB)).is_err(), "prepared twice");
    du.isolate(&id, 1).unwrap();
    // No sandbox yet: nothing used.
    let stats = du.usage(&id).unwrap();
    assert_eq!(
        (stats.disk_used_bytes, stats.disk_limit_bytes),
        (Some(0), Some(MIB))
    );
    fs::create_dir(tmp.path().join("c1")).unwrap();
    fs::write(tmp.path().join("c1/f"), vec![7u8; 2 * MIB as usize]).unwrap();
    // A bigger limit: no limitation.
    du.update(&id, &limits(8 * MIB)).unwrap();
    assert_eq!(du.watch(&id).unwrap(), None);
    du.update(&id, &limits(MIB)).unwrap();
    let limitation = du.watch(&id).unwrap().expect("over the limit");
    assert_eq!(limitation.reason, Reason::ContainerLimitationDisk);
    assert_eq!(du.watch(&id).unwrap(), None, "reported once");
    du.cleanup(&id).unwrap();
    du.cleanup(&id).unwrap();
    assert!(du.usage(&id).is_err());
    assert!(
        tmp.path().join("c1/f").exists(),
        "the sandbox is the containerizer's"
    );

    // Recovery tracks the containers again.
    du.recover(&[RecoveredContainer {
        id: id.clone(),
        limits: limits(MIB),
    }])
    .unwrap();
    assert!(du.usage(&id).unwrap().disk_used_bytes.unwrap() >= 2 * MIB);
}

#[test]
fn du_root_limitation_on_loop_ext4_with_usage_and_limit() {
    if !require_root("du_root_limitation_on_loop_ext4_with_usage_and_limit")
        || !require_command(
            "du_root_limitation_on_loop_ext4_with_usage_and_limit",
            "mkfs.ext4",
        )
    {
        return;
    }
    let scratch = ServiceDir::new("disk-du");
    let image = scratch.path().join("ext4.img");
    make_image(
        &image,
        128 * MIB,
        Command::new("mkfs.ext4").args(["-q", "-F"]),
    );
    let fs = LoopFs::new(&image, "ext4", &scratch.path().join("mnt"), None);
    let work_dir = fs.mount.target.join("sandboxes");
    fs::create_dir(&work_dir).unwrap();

    let du = DuIsolator::new(
        &work_dir,
        DuOptions {
            interval: Duration::from_secs(1),
            max_concurrent_walks: 1,
        },
    );
    let id = ContainerId::new("c-du");
    du.prepare(&id, &limits(20 * MIB)).unwrap();
    let sandbox = work_dir.join("c-du");
    fs::create_dir(&sandbox).unwrap();

    // Below the limit: no limitation.
    let (ok, err) = dd(&sandbox.join("small"), 10, None);
    assert!(ok, "dd: {err}");
    assert_eq!(du.watch(&id).unwrap(), None);

    // Another filesystem mounted in the sandbox and a hard link are not counted (du -x, inodes
    // once).
    let inner = Mount::new(
        "tmpfs",
        "tmpfs".as_ref(),
        &sandbox.join("tmpfs"),
        Some("size=16m"),
    );
    fs::write(inner.target.join("f"), vec![1u8; 8 * MIB as usize]).unwrap();
    fs::hard_link(sandbox.join("small"), sandbox.join("small-link")).unwrap();

    // The workload writes 40 MiB in total: DISK, with usage and limit in the message.
    fs::remove_file(sandbox.join("small")).unwrap();
    fs::remove_file(sandbox.join("small-link")).unwrap();
    let (ok, err) = dd(&sandbox.join("big"), 40, None);
    assert!(ok, "dd: {err}");
    let started = std::time::Instant::now();
    let limitation = du.watch(&id).unwrap().expect("40 MiB is over 20 MiB");
    let walk = started.elapsed();
    assert_eq!(limitation.reason, Reason::ContainerLimitationDisk);
    let stats = du.usage(&id).unwrap();
    let used = stats.disk_used_bytes.unwrap();
    assert_close("disk/du usage", used, 40 * MIB, 3);
    assert_eq!(stats.disk_limit_bytes, Some(20 * MIB));
    assert!(
        limitation.message.contains(&used.to_string())
            && limitation.message.contains(&(20 * MIB).to_string()),
        "{}",
        limitation.message
    );
    println!("disk/du: {} (walk {walk:?})", limitation.message);

    du.cleanup(&id).unwrap();
    du.cleanup(&id).unwrap();
    drop(inner);
    fs.teardown();
}

#[test]
fn quota_unsupported_on_a_plain_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let err = QuotaIsolator::new(tmp.path(), QuotaOptions::default()).unwrap_err();
    let message = err.to_string();
    println!("{message}");
    assert!(matches!(err, IsolatorError::Unsupported { .. }), "{err:?}");
    assert!(
        message.contains("disk/quota") && message.contains("prjquota"),
        "{message}"
    );

    let err = QuotaIsolator::new(tmp.path().join("missing"), QuotaOptions::default()).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let err = QuotaIsolator::new(
        tmp.path(),
        QuotaOptions {
            project_ids: 0..=10,
            ..QuotaOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("exclude 0"), "{err}");
}

#[test]
fn quota_root_unsupported_on_host_ext4_and_tmpfs() {
    if !require_root("quota_root_unsupported_on_host_ext4_and_tmpfs")
        || !require_command("quota_root_unsupported_on_host_ext4_and_tmpfs", "mkfs.ext4")
    {
        return;
    }
    let scratch = ServiceDir::new("disk-quota-host");
    let image = scratch.path().join("ext4.img");
    // The host kernel has no CONFIG_QUOTA: it refuses to mount an ext4 made with
    // `-O quota,project` at all ("not built with CONFIG_QUOTA"), so the image is a plain ext4.
    make_image(
        &image,
        64 * MIB,
        Command::new("mkfs.ext4").args(["-q", "-F"]),
    );
    let target = scratch.path().join("mnt");
    let fs = LoopFs::new(&image, "ext4", &target, None);
    let err = QuotaIsolator::new(&fs.mount.target, QuotaOptions::default()).unwrap_err();
    let message = err.to_string();
    println!("{message}");
    assert!(matches!(err, IsolatorError::Unsupported { .. }), "{err:?}");
    assert!(
        message.contains("ext4") && message.contains("prjquota") && message.contains("/dev/loop"),
        "{message}"
    );

    let tmpfs = Mount::new(
        "tmpfs",
        "tmpfs".as_ref(),
        &scratch.path().join("tmpfs"),
        Some("size=1m"),
    );
    let err = QuotaIsolator::new(&tmpfs.target, QuotaOptions::default()).unwrap_err();
    println!("{err}");
    assert!(
        err.to_string().contains("tmpfs") && err.to_string().contains("disk/du"),
        "{err}"
    );
    let tmpfs_target = tmpfs.target.clone();
    drop(tmpfs);
    assert!(!disk_support::is_mounted(&tmpfs_target));
    fs.teardown();
}
