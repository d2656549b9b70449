//! Parsers for cgroup statistics files, working on borrowed text (no allocation per sample).
//! Formats: Documentation/admin-guide/cgroup-v2.rst ("Interface Files": flat keyed and
//! nested keyed) and the v1 documents under Documentation/admin-guide/cgroup-v1/.

/// The value of `key` in a flat keyed file (`key value` per line), e.g. `memory.stat`.
pub fn flat(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Calls `f` for each `key value` pair of a flat keyed file (one pass for many keys).
pub fn each_flat<'a>(text: &'a str, mut f: impl FnMut(&'a str, u64)) {
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(' ') {
            if let Ok(v) = v.trim().parse() {
                f(k, v);
            }
        }
    }
}

/// Read and written bytes summed over devices from v2 `io.stat`
/// (`8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0` per device).
pub fn io_stat_bytes(text: &str) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for field in text.split_ascii_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            read = read.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            write = write.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (read, write)
}

/// Read and written bytes summed over devices from v1
/// `blkio.throttle.io_service_bytes[_recursive]` (`8:0 Read 123` per device and operation).
pub fn blkio_bytes(text: &str) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let (Some(_dev), Some(op), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match op {
            "Read" => read = read.saturating_add(v),
            "Write" => write = write.saturating_add(v),
            _ => {}
        }
    }
    (read, write)
}

/// Lines in a file such as `cgroup.procs` (one id per line).
pub fn count_lines(text: &str) -> u64 {
    text.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed() {
        let text = "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_throttled 7\n";
        assert_eq!(flat(text, "user_usec"), Some(1_000_000));
        assert_eq!(flat(text, "usage"), None);
        let mut n = 0;
        each_flat(text, |_, v| n += v);
        assert_eq!(n, 3_000_007);
    }

    #[test]
    fn io_bytes_v2_and_v1() {
        let v2 = "8:0 rbytes=100 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n\
                  8:16 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n";
        assert_eq!(io_stat_bytes(v2), (101, 22));
        let v1 = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n";
        assert_eq!(blkio_bytes(v1), (4096, 8192));
        assert_eq!(count_lines("1\n2\n\n"), 2);
    }
}
