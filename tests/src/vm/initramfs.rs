//! The guest's initramfs: `/init`, kernel modules with their dependencies, shared libraries,
//! written as a newc cpio archive.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::console::{end_marker_prefix, start_marker};
use super::{annotate, MODULE_GROUPS};

/// Single-quotes `s` for the guest's shell (busybox ash).
pub(super) fn shell_quote(s: &[u8]) -> Vec<u8> {
    let mut q = vec![b'\''];
    for &b in s {
        if b == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(b);
        }
    }
    q.push(b'\'');
    q
}

/// The guest's `/init`. Setup problems are printed right after the start marker, so they show
/// up in the output; the binary's stdin is /dev/null; `TERM=dumb` keeps libtest's output plain.
pub(super) fn init_script(
    nonce: u64,
    argv0: &OsStr,
    args: &[&OsStr],
    env: &[(OsString, OsString)],
) -> Vec<u8> {
    let mut s = Vec::new();
    let [group1, group2] = MODULE_GROUPS.map(|g| g.join(" "));
    let start = start_marker(nonce);
    let end = end_marker_prefix(nonce);
    let _ = write!(
        s,
        r#"#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
stty -onlcr 2>/dev/null
dmesg -n 1
{{
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo 'cairn-vm: mounting cgroup2 failed'
echo '+cpu +memory +pids +io' >/sys/fs/cgroup/cgroup.subtree_control ||
  echo 'cairn-vm: enabling cgroup2 controllers failed'
for m in {group1}; do modprobe "$m" || echo "cairn-vm: modprobe $m failed"; done &
for m in {group2}; do modprobe "$m" || echo "cairn-vm: modprobe $m failed"; done
wait
}} >/run/cairn-vm-setup.log 2>&1
echo '{start}'
cat /run/cairn-vm-setup.log
export CAIRN_IN_VM=1
"#
    );
    for (name, value) in env {
        s.extend_from_slice(b"export ");
        s.extend_from_slice(name.as_bytes());
        s.push(b'=');
        s.extend(shell_quote(value.as_bytes()));
        s.push(b'\n');
    }
    // A subshell, so pid 1 stays the shell; argv[0] is the host name (busybox dispatches on it).
    s.extend_from_slice(b"cd /tmp\n(exec -a ");
    s.extend(shell_quote(argv0.as_bytes()));
    s.extend_from_slice(b" /bin/testbin");
    for arg in args {
        s.push(b' ');
        s.extend(shell_quote(arg.as_bytes()));
    }
    let _ = write!(
        s,
        r#" </dev/null)
rc=$?
[ "$rc" -gt 255 ] && rc=255
echo "{end}$rc@@"
if [ "$rc" -ne 0 ]; then echo '--- kernel log (last 200 lines) ---'; dmesg | tail -n 200; fi
# The last close of the console waits until the UART has sent everything (tty_port_close).
exec </dev/null >/dev/null 2>&1
printf "\\$(printf %03o "$rc")" | dd of=/dev/port bs=1 seek=244 count=1
poweroff -f
"#
    );
    s
}

/// Resolves `roots` (module names) through `modules.dep` into module paths, dependencies
/// first, and the `modules.dep` lines for just those. Built-in modules need nothing.
pub(super) fn module_closure(
    dep: &str,
    builtin: &str,
    roots: &[&str],
) -> io::Result<(Vec<String>, String)> {
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for line in dep.lines() {
        let Some((path, needs)) = line.split_once(':') else {
            continue;
        };
        deps.insert(path, needs.split_whitespace().collect());
        by_name.insert(module_name(path), path);
    }
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut order: Vec<&str> = Vec::new();
    pub(super) fn visit<'a>(
        path: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        order: &mut Vec<&'a str>,
    ) {
        if order.contains(&path) {
            return;
        }
        for dep in deps.get(path).into_iter().flatten().rev() {
            visit(dep, deps, order);
        }
        order.push(path);
    }
    for root in roots {
        match by_name.get(*root) {
            Some(path) => visit(path, &deps, &mut order),
            None if builtin.contains(*root) => {}
            None => {
                let msg = format!("kernel module {root} is not in modules.dep");
                return Err(io::Error::new(io::ErrorKind::NotFound, msg));
            }
        }
    }
    let lines = dep
        .lines()
        .filter(|l| l.split_once(':').is_some_and(|(p, _)| order.contains(&p)));
    let dep = lines.map(|l| format!("{l}\n")).collect();
    Ok((order.into_iter().map(String::from).collect(), dep))
}

/// `kernel/fs/quota/quota-v2.ko` -> `quota_v2`, as modprobe names it.
pub(super) fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Shared libraries `ldd` lists for a dynamically linked ELF file (none for static ones).
pub(super) fn shared_libs(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut magic = [0u8; 4];
    let is_elf = File::open(path)?.read_exact(&mut magic).is_ok() && &magic == b"\x7fELF";
    if !is_elf {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(path)
        .output()
        .map_err(|e| annotate(e, "running ldd"))?;
    if !out.status.success() {
        return Ok(Vec::new()); // "not a dynamic executable", "statically linked"
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.contains("not found") {
            let msg = format!("{}: {}", path.display(), line.trim());
            return Err(io::Error::new(io::ErrorKind::NotFound, msg));
        }
        let lib = line
            .split_once("=> ")
            .map_or(line, |(_, l)| l)
            .split_whitespace()
            .next();
        libs.extend(lib.filter(|l| l.starts_with('/')).map(PathBuf::from));
    }
    Ok(libs)
}

#[derive(Debug)]
pub(super) enum Entry {
    Dir,
    File(PathBuf),
    Data(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// An initramfs tree, written as a newc cpio archive (the kernel's initramfs format,
/// Documentation/driver-api/early-userspace/buffer-format.rst). Written directly, so building
/// it needs neither root (for `dev/console`) nor a staging directory.
#[derive(Debug, Default)]
pub(super) struct Initramfs {
    /// Paths without the leading `/`; sorted, so directories precede what they contain.
    pub(super) entries: BTreeMap<String, (Entry, u32)>,
}

impl Initramfs {
    pub(super) fn dir(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries
                .entry(prefix.clone())
                .or_insert((Entry::Dir, 0o755));
        }
    }

    pub(super) fn insert(&mut self, path: &str, entry: Entry, mode: u32) {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.insert(path.to_string(), (entry, mode));
    }

    /// Adds a host file (keeping its permissions) and, for a dynamic ELF, its libraries at
    /// their host paths.
    pub(super) fn elf(&mut self, guest: &str, host: &Path) -> io::Result<()> {
        let meta = fs::metadata(host).map_err(|e| annotate(e, &host.display().to_string()))?;
        for lib in shared_libs(host)? {
            let path = lib.to_string_lossy().into_owned();
            self.insert(&path, Entry::File(lib), 0o755);
        }
        self.insert(
            guest,
            Entry::File(host.to_path_buf()),
            meta.permissions().mode() & 0o7777,
        );
        Ok(())
    }

    pub(super) fn write(&self, out: &Path) -> io::Result<()> {
        let mut w = BufWriter::new(File::create(out)?);
        let mtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut ino = 1u64;
        for (path, (entry, mode)) in &self.entries {
            ino += 1;
            let (kind, rdev, data) = match entry {
                Entry::Dir => (0o040_000, (0, 0), None),
                Entry::CharDev { major, minor } => (0o020_000, (*major, *minor), None),
                Entry::Symlink(target) => (0o120_000, (0, 0), Some(target.as_bytes().to_vec())),
                Entry::Data(bytes) => (0o100_000, (0, 0), Some(bytes.clone())),
                Entry::File(src) => {
                    let mut f =
                        File::open(src).map_err(|e| annotate(e, &src.display().to_string()))?;
                    let size = f.metadata()?.len();
                    newc_header(&mut w, ino, 0o100_000 | mode, mtime, size, (0, 0), path)?;
                    let copied = io::copy(&mut f, &mut w)?;
                    if copied != size {
                        let msg = format!("{} changed while copying", src.display());
                        return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                    }
                    pad4(&mut w, copied)?;
                    continue;
                }
            };
            let size = data.as_ref().map_or(0, Vec::len) as u64;
            newc_header(&mut w, ino, kind | mode, mtime, size, rdev, path)?;
            if let Some(data) = data {
                w.write_all(&data)?;
                pad4(&mut w, size)?;
            }
        }
        newc_header(&mut w, 0, 0, 0, 0, (0, 0), "TRAILER!!!")?;
        w.flush()
    }
}

pub(super) fn newc_header(
    w: &mut impl Write,
    ino: u64,
    mode: u32,
    mtime: u64,
    size: u64,
    (rmajor, rminor): (u32, u32),
    name: &str,
) -> io::Result<()> {
    let too_big = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is too big for cpio"),
        )
    };
    let size = u32::try_from(size).map_err(|_| too_big())?;
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let namesize = name.len() + 1;
    write!(
        w,
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{size:08x}",
        0, 0
    )?;
    write!(
        w,
        "{:08x}{:08x}{rmajor:08x}{rminor:08x}{namesize:08x}{:08x}",
        0, 0, 0
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, 110 + namesize as u64)
}

pub(super) fn pad4(w: &mut impl Write, len: u64) -> io::Result<()> {
    let n = usize::try_from((4 - len % 4) % 4).expect("padding is below 4");
    w.write_all(&[0; 3][..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_quotes_and_dollars() {
        assert_eq!(shell_quote(b"it's $HOME"), b"'it'\\''s $HOME'");
        assert_eq!(shell_quote(b""), b"''");
    }

    #[test]
    fn module_closure_orders_dependencies_first() {
        let dep = "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n\
                   kernel/fs/jbd2/jbd2.ko:\nkernel/lib/crc16.ko:\nkernel/other.ko:\n\
                   kernel/fs/quota/quota_v2.ko: kernel/fs/quota/quota_tree.ko\n\
                   kernel/fs/quota/quota_tree.ko:\n";
        let (paths, trimmed) = module_closure(
            dep,
            "kernel/drivers/block/loop.ko\n",
            &["ext4", "loop", "quota_v2"],
        )
        .unwrap();
        assert_eq!(
            paths,
            [
                "kernel/lib/crc16.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/quota/quota_tree.ko",
                "kernel/fs/quota/quota_v2.ko"
            ]
        );
        assert!(!trimmed.contains("other") && trimmed.lines().count() == 5);
        assert!(module_closure(dep, "", &["xfs"]).is_err());
    }

    #[test]
    fn init_script_quotes_args_and_env() {
        let env = [(OsString::from("RUST_BACKTRACE"), OsString::from("1"))];
        let args = [OsStr::new("--test-threads=1"), OsStr::new("a b'c")];
        let script = String::from_utf8(init_script(5, OsStr::new("t-1"), &args, &env)).unwrap();
        assert!(script.contains("export RUST_BACKTRACE='1'\n"), "{script}");
        assert!(
            script
                .contains("(exec -a 't-1' /bin/testbin '--test-threads=1' 'a b'\\''c' </dev/null)"),
            "{script}"
        );
        assert!(script.contains(&start_marker(5)) && script.contains(&end_marker_prefix(5)));
    }

    #[test]
    fn initramfs_is_a_newc_archive_cpio_can_list() {
        if !Path::new("/usr/bin/cpio").exists() {
            eprintln!("skipping: cpio is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut fs = Initramfs::default();
        fs.insert("dev/console", Entry::CharDev { major: 5, minor: 1 }, 0o600);
        fs.insert("bin/sh", Entry::Symlink("/bin/busybox".into()), 0o777);
        fs.insert("init", Entry::Data(b"#!/bin/sh\n".to_vec()), 0o755);
        fs.insert(
            "a/b/c.txt",
            Entry::File(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")),
            0o644,
        );
        let out = dir.path().join("i.cpio");
        fs.write(&out).unwrap();
        let list = Command::new("cpio")
            .args(["-itv", "-F"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            list.status.success(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
        let list = String::from_utf8_lossy(&list.stdout);
        for want in [
            "crw-------",
            "5,   1",
            "dev/console",
            "bin/sh -> /bin/busybox",
            "a/b/c.txt",
        ] {
            assert!(list.contains(want), "{want} missing in\n{list}");
        }
        assert!(list.find("a/b\n").unwrap() < list.find("a/b/c.txt").unwrap());
    }
}
