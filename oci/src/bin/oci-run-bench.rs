//! Benchmark: container create+start+wait of `/bin/true` from a prepared bundle through
//! `cairn_oci::runtime` (youki's libcontainer), beside `runc run` of the same bundle, in one
//! run. Needs root and `runc` on PATH. Prints a table of medians and p90s.
//!
//! `oci-run-bench [ITERATIONS]` (default 50). Cgroups go below this process's own cgroup and
//! are removed at the end, with every directory the runtimes had to create.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_oci::runtime::{ExitStatus, Output, Runtime, RuntimeConfig};
use cairn_oci::spec::{build_spec, write_bundle, ContainerSettings};
use oci_spec::image::ImageConfiguration;

const WARMUP: usize = 3;

fn main() -> Result<()> {
    let iterations: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("ITERATIONS must be a number")?,
        None => 50,
    };
    ensure!(nix::unistd::geteuid().is_root(), "the benchmark needs root");
    let tmp = std::env::temp_dir().join(format!("cairn-oci-bench-{}", std::process::id()));
    fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let rootfs = tmp.join("rootfs");
    make_rootfs(&rootfs)?;

    let parent = own_deepest_cgroup()?.join(format!("cairn-bench-{}", std::process::id()));
    let created = missing_cgroup_dirs(&parent);
    let result = bench(&tmp, &rootfs, &parent, iterations);
    for dir in created {
        if dir.exists() {
            if let Err(e) = fs::remove_dir(&dir) {
                eprintln!("warning: could not remove cgroup {}: {e}", dir.display());
            }
        }
    }
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn bench(dir: &Path, rootfs: &Path, parent: &Path, iterations: usize) -> Result<()> {
    let runtime = Runtime::new(RuntimeConfig {
        state_root: dir.join("state"),
        cgroup_parent: parent.to_path_buf(),
    })?;
    let settings = ContainerSettings {
        args: Some(vec!["/bin/true".into()]),
        cgroups_path: Some(runtime.cgroup_path_for("bench")),
        ..ContainerSettings::default()
    };
    let image: ImageConfiguration = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))?;
    let bundle = dir.join("bundle");
    write_bundle(&bundle, &build_spec(&image, rootfs, &settings)?)?;
    let runc_root = dir.join("runc");
    fs::create_dir_all(&runc_root)?;

    let mut ours = Vec::new();
    let mut ours_delete = Vec::new();
    let mut runc = Vec::new();
    for i in 0..WARMUP + iterations {
        let (start_wait, with_delete) = run_ours(&runtime, &bundle)?;
        let r = run_runc(&runc_root, &bundle)?;
        if i >= WARMUP {
            ours.push(start_wait);
            ours_delete.push(with_delete);
            runc.push(r);
        }
    }

    println!(
        "container start of /bin/true (busybox rootfs), {iterations} runs after {WARMUP} warm-up"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "runtime", "median ms", "p90 ms", "vs runc"
    );
    let runc_median = percentile(&mut runc, 50);
    for (name, samples) in [
        ("cairn-oci create+start+wait", &mut ours),
        ("cairn-oci create+start+wait+delete", &mut ours_delete),
        ("runc run (create+start+wait+delete)", &mut runc),
    ] {
        let median = percentile(samples, 50);
        println!(
            "{:<44} {:>10.2} {:>10.2} {:>7.2}x",
            name,
            ms(median),
            ms(percentile(samples, 90)),
            median.as_secs_f64() / runc_median.as_secs_f64()
        );
    }
    Ok(())
}

fn run_ours(runtime: &Runtime, bundle: &Path) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let mut c = runtime.create("bench", bundle, &Output::Null, &Output::Null)?;
    c.start()?;
    let status = c.wait()?;
    let started = t0.elapsed();
    c.delete(false)?;
    let total = t0.elapsed();
    if status != ExitStatus::Exited(0) {
        bail!("/bin/true ended with {status:?}");
    }
    Ok((started, total))
}

fn run_runc(root: &Path, bundle: &Path) -> Result<Duration> {
    let t0 = Instant::now();
    let status = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["run", "-b"])
        .arg(bundle)
        .arg("bench-runc")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .context("run runc")?;
    let elapsed = t0.elapsed();
    ensure!(status.success(), "runc run failed: {status}");
    Ok(elapsed)
}

fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    let idx = (samples.len() * p / 100).min(samples.len().saturating_sub(1));
    samples.get(idx).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn make_rootfs(root: &Path) -> Result<()> {
    for d in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("copy /bin/busybox")?;
    for applet in ["true", "sh"] {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// The deepest of this process's v1 cgroups: below our own in every hierarchy (on a hybrid
/// host they differ per hierarchy, and a container uses one path in all).
fn own_deepest_cgroup() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    let own: Vec<PathBuf> = text
        .lines()
        .filter(|l| !l.starts_with("0::"))
        .filter_map(|l| l.splitn(3, ':').nth(2).map(PathBuf::from))
        .collect();
    let deepest = own
        .iter()
        .max_by_key(|p| p.components().count())
        .cloned()
        .context("no v1 cgroups in /proc/self/cgroup")?;
    ensure!(
        own.iter().all(|p| deepest.starts_with(p)),
        "own cgroups diverge: {own:?}"
    );
    Ok(deepest)
}

/// Directories of `path` (and its missing ancestors) in every cgroup hierarchy, v1 and the
/// hybrid v2 one (runc uses both), that do not exist yet: deepest first.
fn missing_cgroup_dirs(path: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = info.lines().filter_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let mount_point = PathBuf::from(pre.split_whitespace().nth(4)?);
        matches!(fstype, "cgroup" | "cgroup2").then_some(mount_point)
    });
    let relative = path.strip_prefix("/").unwrap_or(path);
    let mut out = Vec::new();
    for mount in mounts {
        let mut dir = mount.join(relative);
        while !dir.exists() && dir != mount {
            out.push(dir.clone());
            match dir.parent() {
                Some(p) => dir = p.to_path_buf(),
                None => break,
            }
        }
    }
    out
}
