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
