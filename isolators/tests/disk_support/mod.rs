//! Test scaffolding for the disk isolators: filesystem images on loop devices, mounts, and a
//! writer process, each owned by a guard that undoes it by path when dropped (also on panic).
//! Works with util-linux on the host and busybox in the VM.
#![allow(dead_code, clippy::missing_panics_doc)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

pub const MIB: u64 = 1 << 20;

/// Runs `cmd`, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Loop devices (`/dev/loopN`) backed by `image`, from `/sys/block/loop*/loop/backing_file`.
pub fn loops_backing(image: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let image = fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim_end_matches('\n')) == image)
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect()
}

/// Whether anything is mounted at `path` (by `/proc/self/mountinfo`).
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| Path::new(&mp.replace("\\040", " ")) == path)
}

/// A loop device attached to an image file; detached by device path on drop if it still
/// backs that image.
#[derive(Debug)]
pub struct LoopDevice {
    pub dev: PathBuf,
    image: PathBuf,
}

impl LoopDevice {
    /// Attaches `image` to the first free loop device (`losetup -f`, then `losetup DEV IMG`,
    /// the two steps both util-linux and busybox have; retried when another test raced us).
    pub fn attach(image: &Path) -> Self {
        for _ in 0..10 {
            let out = run(Command::new("losetup").arg("-f"));
            let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let ok = Command::new("losetup")
                .arg(&dev)
                .arg(image)
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Self {
                    dev,
                    image: image.to_path_buf(),
                };
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("no free loop device for {}", image.display());
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if loops_backing(&self.image).contains(&self.dev) {
            let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        }
    }
}

/// A mount at a directory it created; unmounted (by path) and the directory removed on drop.
#[derive(Debug)]
pub struct Mount {
    pub target: PathBuf,
}

impl Mount {
    pub fn new(fs_type: &str, source: &Path, target: &Path, options: Option<&str>) -> Self {
        fs::create_dir_all(target).expect("create mount point");
        let mut cmd = Command::new("mount");
        cmd.arg("-t").arg(fs_type);
        if let Some(options) = options {
            cmd.arg("-o").arg(options);
        }
        run(cmd.arg(source).arg(target));
        Self {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for _ in 0..50 {
            if !is_mounted(&self.target) {
                break;
            }
            let _ = Command::new("umount").arg(&self.target).status();
            if is_mounted(&self.target) {
                thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = fs::remove_dir(&self.target);
    }
}

/// An empty image file of `size` bytes (sparse), made into a filesystem by `mkfs`.
pub fn make_image(path: &Path, size: u64, mkfs: &mut Command) {
    let file = fs::File::create(path).expect("create image");
    file.set_len(size).expect("size image");
    drop(file);
    run(mkfs.arg(path));
}

/// A filesystem image, its loop device and its mount, torn down in that reverse order.
#[derive(Debug)]
pub struct LoopFs {
    // Field order is drop order: unmount first, then detach.
    pub mount: Mount,
    pub dev: LoopDevice,
    pub image: PathBuf,
}

impl LoopFs {
    pub fn new(image: &Path, fs_type: &str, target: &Path, options: Option<&str>) -> Self {
        let dev = LoopDevice::attach(image);
        let mount = Mount::new(fs_type, &dev.dev, target, options);
        Self {
            mount,
            dev,
            image: image.to_path_buf(),
        }
    }

    /// Unmounts and detaches now, and asserts nothing is left.
    pub fn teardown(self) {
        let (target, image) = (self.mount.target.clone(), self.image.clone());
        drop(self);
        assert!(!is_mounted(&target), "{} still mounted", target.display());
        // `losetup -d` only marks a busy device for detach (autoclear); the kernel lets go once
        // the last reference, e.g. a lazily finishing unmount, is gone. Give it a moment.
        cairn_testsupport::wait_until(Duration::from_secs(10), || loops_backing(&image).is_empty());
        assert!(
            loops_backing(&image).is_empty(),
            "loop devices still attached to {}: {:?}",
            image.display(),
            loops_backing(&image)
        );
    }
}

/// Writes `mib` MiB of zeros to `path` with `dd` in a child process (the workload), as
/// `uid` when given; returns whether dd succeeded and its stderr.
pub fn dd(path: &Path, mib: u64, uid: Option<u32>) -> (bool, String) {
    let mut cmd = Command::new("dd");
    cmd.arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fsync");
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("spawn dd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts `actual` is within `percent` % of `expected`.
pub fn assert_close(what: &str, actual: u64, expected: u64, percent: u64) {
    let diff = actual.abs_diff(expected);
    assert!(
        diff * 100 <= expected * percent,
        "{what}: {actual} is not within {percent}% of {expected}"
    );
}
