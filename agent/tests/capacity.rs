//! The capacity the agent measures matches what the kernel says about this node.

use std::fs;

use cairn_agent::capacity::{measure, Reservation};

fn proc_mem_total() -> u64 {
    let text = fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .expect("MemTotal in /proc/meminfo")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("MemTotal is a number of kB");
    kb * 1024
}

#[test]
fn measured_capacity_matches_proc_and_statvfs() {
    let dir = tempfile::tempdir().unwrap();
    let cap = measure(dir.path()).unwrap();

    // CPUs: the affinity mask, which `nproc` reports too.
    let nproc = std::thread::available_parallelism().unwrap().get();
    assert_eq!(cap.cpus_affinity, nproc);
    assert!(cap.cpus <= nproc as f64);

    // Memory: MemTotal, unless a cgroup above us limits it further.
    assert_eq!(cap.mem_total_bytes, proc_mem_total());
    assert_eq!(
        cap.mem_bytes,
        cap.mem_cgroup_limit_bytes.unwrap_or(cap.mem_total_bytes)
    );

    // Disk: statvfs of the work directory.
    let st = nix::sys::statvfs::statvfs(dir.path()).unwrap();
    assert_eq!(cap.disk_bytes, st.blocks() * st.fragment_size());

    let offer = cap.offerable(&Reservation::default()).unwrap();
    assert!(offer.mem_mb() > 0.0 && offer.mem_mb() < cap.mem_bytes as f64 / 1048576.0);
    assert_eq!(offer.ranges("ports").len(), 1);
}

#[test]
fn missing_work_dir_is_named_in_the_error() {
    let err = measure(std::path::Path::new("/nonexistent/cairn-work")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cairn-work"), "{err}");
}

/// A CPU cgroup made for one test below this process's own cgroup: v1 `cpu` controller, or
/// the unified hierarchy on a v2 host. Removed on drop (its processes must have exited).
struct QuotaCgroup {
    dir: std::path::PathBuf,
}

impl QuotaCgroup {
    /// A cgroup limited to `quota_us` per `period_us`.
    fn new(quota_us: u64, period_us: u64) -> Self {
        let root = std::path::Path::new("/sys/fs/cgroup");
        let v2 = root.join("cgroup.controllers").exists();
        let own = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let own = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                let wanted = if v2 {
                    controllers.is_empty()
                } else {
                    controllers.split(',').any(|c| c == "cpu")
                };
                wanted.then(|| path.trim_start_matches('/').to_string())
            })
            .expect("this process's cpu cgroup in /proc/self/cgroup");
        let base = if v2 {
            root.to_path_buf()
        } else if root.join("cpu").exists() {
            root.join("cpu")
        } else {
            root.join("cpu,cpuacct")
        };
        let dir = base
            .join(own)
            .join(format!("cairn-capacity-test-{}", std::process::id()));
        fs::create_dir(&dir).expect("create the test cpu cgroup");
        let cg = Self { dir };
        if v2 {
            fs::write(cg.dir.join("cpu.max"), format!("{quota_us} {period_us}"))
                .expect("write cpu.max");
        } else {
            fs::write(cg.dir.join("cpu.cfs_period_us"), period_us.to_string())
                .expect("write cpu.cfs_period_us");
            fs::write(cg.dir.join("cpu.cfs_quota_us"), quota_us.to_string())
                .expect("write cpu.cfs_quota_us");
        }
        cg
    }
}

impl Drop for QuotaCgroup {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!("failed to remove test cgroup {}: {e}", self.dir.display());
        }
    }
}

/// `cairn-agent --print-capacity` run through `sh`, which first moves itself into `cgroup`
/// (when given) and then execs the agent; returns the parsed JSON.
fn print_capacity(work_dir: &std::path::Path, cgroup: Option<&QuotaCgroup>) -> serde_json::Value {
    let agent = env!("CARGO_BIN_EXE_cairn-agent");
    let enter = cgroup.map_or(String::new(), |cg| {
        format!("echo $$ > '{}/cgroup.procs' && ", cg.dir.display())
    });
    let script = format!(
        "{enter}exec '{agent}' --print-capacity --work-dir '{}'",
        work_dir.display()
    );
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cairn-agent --print-capacity");
    assert!(
        out.status.success(),
        "cairn-agent --print-capacity failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--print-capacity prints JSON")
}

fn offered_cpus(json: &serde_json::Value) -> f64 {
    json["resources"]
        .as_array()
        .expect("resources array")
        .iter()
        .find(|r| r["name"] == "cpus")
        .and_then(|r| r["scalar"]["value"].as_f64())
        .expect("cpus in the offered resources")
}

#[test]
fn a_cpu_quota_above_the_agent_caps_its_cpus_needs_root() {
    if !cairn_testsupport::require_root("a_cpu_quota_above_the_agent_caps_its_cpus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nproc = std::thread::available_parallelism().unwrap().get();

    // Outside the quota cgroup: the affinity count (this test's own cgroups have no quota).
    let outside = print_capacity(dir.path(), None);
    assert_eq!(outside["capacity"]["cpus_affinity"], nproc, "{outside}");
    assert_eq!(outside["capacity"]["cpus"], nproc as f64, "{outside}");
    assert_eq!(offered_cpus(&outside), nproc as f64, "{outside}");

    // Inside a cgroup with 50 ms per 100 ms: half a CPU, whatever the affinity says.
    let cgroup = QuotaCgroup::new(50_000, 100_000);
    let inside = print_capacity(dir.path(), Some(&cgroup));
    drop(cgroup);
    assert_eq!(inside["capacity"]["cpus"], 0.5, "{inside}");
    assert_eq!(inside["capacity"]["cpus_cgroup_quota"], 0.5, "{inside}");
    assert_eq!(inside["capacity"]["cpus_affinity"], nproc, "{inside}");
    assert_eq!(offered_cpus(&inside), 0.5, "{inside}");
}
