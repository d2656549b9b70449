//! The cgroup v2 VM: runs one binary as root inside QEMU (TCG) on Debian's kernel.
//!
//! The host mounts cgroups in hybrid mode and its kernel has no XFS or ext4 project quotas, so
//! cgroup v2 enforcement and disk quotas can only be tested in a VM. [`VmRunner`] boots the
//! kernel that `scripts/setup` unpacked into the cache (the uncompressed `vmlinux`, whose PVH
//! entry boots in about 3 s under TCG; KVM does not work on these hosts) with an initramfs
//! built for each run: busybox-static, the binary as `/bin/testbin`, the loop, xfs, ext4 and
//! quota modules, and the xfsprogs/e2fsprogs tools quota tests need.
//!
//! The guest `/init` mounts cgroup2 alone (`cgroup_no_v1=all`) with the cpu, memory, pids and
//! io controllers enabled for children, runs the binary with `CAIRN_IN_VM=1`, and reports its
//! exit status through QEMU's `isa-debug-exit` device. The binary's output is streamed from the
//! serial console, between two markers carrying a per-run nonce.
//!
//! `cairn-vm-run` wraps this as a cargo runner (`scripts/vm-test`); tests meant for the guest
//! check [`in_vm`].

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

mod console;
mod initramfs;

use self::console::*;
use self::initramfs::*;

/// Environment variables copied from the host into the guest when set (and not overridden in
/// [`VmOptions::env`]).
pub const PASSTHROUGH_ENV: &[&str] = &["RUST_BACKTRACE", "RUST_TEST_THREADS", "CAIRN_TESTS_STRICT"];

/// Modules the guest loads (with their dependencies from `modules.dep`), in two groups loaded
/// in parallel (one per vCPU; xfs alone takes about 2 s under TCG). The groups' dependencies
/// are disjoint, so no module is loaded twice at once. `crc32c_generic` backs libcrc32c:
/// TCG's default CPU has no SSE4.2 for `crc32c_intel`.
const MODULE_GROUPS: [&[&str]; 2] = [&["crc32c_generic", "xfs", "loop"], &["ext4", "quota_v2"]];

/// Host tools copied (with their shared libraries) into the guest's `/sbin`, replacing
/// busybox applets of the same name (busybox `lsattr` has no `-p`).
const TOOLS: &[&str] = &[
    "/usr/sbin/mkfs.xfs",
    "/usr/sbin/xfs_quota",
    "/usr/sbin/mkfs.ext4",
    "/usr/bin/chattr",
    "/usr/bin/lsattr",
];

/// `quiet` keeps boot messages off the console; `/init` lowers the console log level further
/// while the binary runs, and dumps `dmesg` into the console log when it fails.
const KERNEL_CMDLINE: &str = "console=ttyS0 cgroup_no_v1=all panic=-1 quiet";

/// True inside the VM (`/init` sets `CAIRN_IN_VM=1`).
pub fn in_vm() -> bool {
    std::env::var_os("CAIRN_IN_VM").is_some()
}

/// The cache `scripts/setup` fills: `$CAIRN_CACHE`, else the workspace's `.cache`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CAIRN_CACHE").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("/"))
                .join(".cache")
        },
        PathBuf::from,
    )
}

/// Debian's kernel, unpacked (never installed) by `scripts/setup`.
#[derive(Debug, Clone)]
pub struct KernelCache {
    /// Uncompressed ELF kernel, booted through its PVH entry.
    pub vmlinux: PathBuf,
    /// `lib/modules/<version>` with a busybox-depmod'ed `modules.dep`.
    pub modules: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub version: String,
}

/// Finds the kernel under [`cache_dir`]; the error tells to run `scripts/setup`.
pub fn kernel_cache() -> io::Result<KernelCache> {
    let dir = cache_dir().join("kernel");
    let missing = |what: &str, e: io::Error| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no VM kernel in {} ({what}: {e}): run scripts/setup",
                dir.display()
            ),
        )
    };
    let version = fs::read_to_string(dir.join("version")).map_err(|e| missing("version", e))?;
    let version = version.trim().to_string();
    let vmlinux = dir.join("vmlinux");
    fs::metadata(&vmlinux).map_err(|e| missing("vmlinux", e))?;
    let modules = dir.join("root/lib/modules").join(&version);
    fs::metadata(modules.join("modules.dep")).map_err(|e| missing("modules.dep", e))?;
    Ok(KernelCache {
        vmlinux,
        modules,
        version,
    })
}

/// A host file placed into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    pub host: PathBuf,
    /// Absolute path in the guest.
    pub guest: String,
}

impl GuestFile {
    /// Parses `HOSTPATH[:GUESTPATH]`: the guest path defaults to `/bin/<name>`, and one ending
    /// in `/` is a directory the file goes into. Host paths with a `:` are not supported.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (host, guest) = spec.split_once(':').unwrap_or((spec, "/bin/"));
        let name = Path::new(host)
            .file_name()
            .ok_or_else(|| format!("no file name in {spec:?}"))?;
        let mut guest = guest.to_string();
        if guest.ends_with('/') {
            guest.push_str(&name.to_string_lossy());
        }
        let relative = Path::new(&guest).components().skip(1);
        if !guest.starts_with('/') || relative.clone().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!(
                "guest path in {spec:?} must be absolute and without `..`"
            ));
        }
        Ok(Self {
            host: host.into(),
            guest,
        })
    }
}

/// How to run the VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Guest memory in MiB.
    pub mem_mb: u32,
    /// From QEMU's start to its exit, boot included; QEMU is killed after it.
    pub timeout: Duration,
    /// Extra files for the guest (dynamically linked ELF files bring their libraries).
    pub files: Vec<GuestFile>,
    /// Environment for the binary, on top of [`PASSTHROUGH_ENV`].
    pub env: Vec<(OsString, OsString)>,
    /// Copy the binary's output to this process's stdout while it runs.
    pub echo: bool,
    pub qemu: PathBuf,
    /// A statically linked busybox (Debian's `busybox-static`).
    pub busybox: PathBuf,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            mem_mb: 2048,
            timeout: Duration::from_secs(600),
            files: Vec::new(),
            env: Vec::new(),
            echo: false,
            qemu: "qemu-system-x86_64".into(),
            busybox: "/bin/busybox".into(),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// The binary's exit status; 128+N when signal N killed it.
    pub status: u8,
    /// The binary's stdout and stderr (CRs removed).
    pub output: String,
    /// From QEMU's start to the binary's start.
    pub boot: Duration,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
    /// The full console log, kept when the status is not 0.
    pub console_log: Option<PathBuf>,
}

/// Why a run produced no exit status (carried inside the `io::Error` that [`VmRunner::run`]
/// returns; every variant names the kept console log).
#[derive(Debug)]
pub enum VmError {
    Timeout { after: Duration, log: PathBuf },
    KernelPanic { log: PathBuf },
    NoStatus { detail: String, log: PathBuf },
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { after, log } => write!(
                f,
                "the VM did not finish within {} s and was killed (console log: {})",
                after.as_secs(),
                log.display()
            ),
            Self::KernelPanic { log } => {
                write!(
                    f,
                    "the guest kernel panicked (console log: {})",
                    log.display()
                )
            }
            Self::NoStatus { detail, log } => {
                write!(
                    f,
                    "no exit status from the VM: {detail} (console log: {})",
                    log.display()
                )
            }
        }
    }
}

impl std::error::Error for VmError {}

/// Boots a VM per [`run`](Self::run), with the kernel found once.
#[derive(Debug, Clone)]
pub struct VmRunner {
    kernel: KernelCache,
    opts: VmOptions,
}

/// Runs `binary` with `args` in a fresh VM (see [`VmRunner::run`]).
pub fn run<S: AsRef<OsStr>>(binary: &Path, args: &[S], opts: &VmOptions) -> io::Result<VmOutcome> {
    VmRunner::new(opts.clone())?.run(binary, args)
}

impl VmRunner {
    pub fn new(opts: VmOptions) -> io::Result<Self> {
        Ok(Self {
            kernel: kernel_cache()?,
            opts,
        })
    }

    /// Boots the VM, runs `binary` (as `/bin/testbin` with its own name as argv[0], in `/tmp`,
    /// as root) and returns its status and output. A timeout, a kernel panic or a guest that
    /// never reported a status is an error; the console log is kept then, and when the status
    /// is not 0, in `$CAIRN_TEST_TMP` or the temp dir.
    pub fn run<S: AsRef<OsStr>>(&self, binary: &Path, args: &[S]) -> io::Result<VmOutcome> {
        let parent =
            std::env::var_os("CAIRN_TEST_TMP").map_or_else(std::env::temp_dir, PathBuf::from);
        fs::create_dir_all(&parent)?;
        let work = tempfile::Builder::new()
            .prefix("cairn-vm-")
            .tempdir_in(&parent)?;
        let nonce = RandomState::new().hash_one((std::process::id(), SystemTime::now()));
        let initrd = work.path().join("initramfs.cpio");
        let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
        let argv0 = binary.file_name().unwrap_or(OsStr::new("testbin"));
        let script = init_script(nonce, argv0, &args, &self.guest_env()?);
        self.initramfs(binary, script)?.write(&initrd)?;

        let log = work.path().join("console.log");
        let name = binary
            .file_name()
            .unwrap_or(binary.as_os_str())
            .to_string_lossy();
        let kept = parent.join(format!("cairn-vm-{name}-{nonce:016x}.log"));
        let result = self.boot(&initrd, &log, &kept, nonce);
        if !matches!(result, Ok(ref o) if o.status == 0) && log.exists() {
            fs::copy(&log, &kept)
                .map_err(|e| annotate(e, &format!("keeping {}", log.display())))?;
        }
        result.map(|o| VmOutcome {
            console_log: (o.status != 0).then_some(kept),
            ..o
        })
    }

    fn guest_env(&self) -> io::Result<Vec<(OsString, OsString)>> {
        let mut env = self.opts.env.clone();
        for name in PASSTHROUGH_ENV {
            if let Some(value) = std::env::var_os(name) {
                if !env.iter().any(|(n, _)| n == name) {
                    env.push((name.into(), value));
                }
            }
        }
        for (name, _) in &env {
            let ok = name.as_bytes().first().is_some_and(|b| !b.is_ascii_digit())
                && name
                    .as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
            if !ok {
                let msg = format!("{name:?} is not a valid environment variable name");
                return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
            }
        }
        Ok(env)
    }

    fn initramfs(&self, binary: &Path, init: Vec<u8>) -> io::Result<Initramfs> {
        let mut fs = Initramfs::default();
        for dir in ["proc", "sys", "dev", "tmp", "run", "mnt", "root"] {
            fs.dir(dir);
        }
        fs.insert("dev/console", Entry::CharDev { major: 5, minor: 1 }, 0o600);
        let list = Command::new(&self.opts.busybox).arg("--list-full").output();
        let list =
            list.map_err(|e| annotate(e, &format!("running {}", self.opts.busybox.display())))?;
        for applet in String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|l| l.contains('/'))
        {
            fs.insert(applet, Entry::Symlink("/bin/busybox".into()), 0o777);
        }
        // After the applets: `--list-full` names `bin/busybox` itself.
        fs.elf("bin/busybox", &self.opts.busybox)?;
        for tool in TOOLS {
            let name = tool.rsplit('/').next().unwrap_or(tool);
            fs.entries
                .retain(|path, _| path.rsplit('/').next() != Some(name));
            fs.elf(&format!("sbin/{name}"), Path::new(tool))?;
        }
        fs.insert(
            "etc/mtab",
            Entry::Symlink("/proc/self/mounts".into()),
            0o777,
        );
        fs.insert(
            "etc/passwd",
            Entry::Data(b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
            0o644,
        );
        fs.insert("etc/group", Entry::Data(b"root:x:0:\n".to_vec()), 0o644);
        if Path::new("/etc/mke2fs.conf").is_file() {
            fs.insert(
                "etc/mke2fs.conf",
                Entry::File("/etc/mke2fs.conf".into()),
                0o644,
            );
        }
        self.modules(&mut fs)?;
        fs.elf("bin/testbin", binary)?;
        for file in &self.opts.files {
            fs.elf(file.guest.trim_start_matches('/'), &file.host)?;
        }
        fs.insert("init", Entry::Data(init), 0o755);
        Ok(fs)
    }

    /// Copies [`MODULE_GROUPS`] and their dependencies, with a `modules.dep` (and aliases) trimmed to
    /// them so busybox `modprobe` resolves the same order the full depmod gave.
    fn modules(&self, fs: &mut Initramfs) -> io::Result<()> {
        let src = &self.kernel.modules;
        let read = |name: &str| {
            let path = src.join(name);
            fs::read_to_string(&path)
                .map_err(|e| annotate(e, &format!("reading {}", path.display())))
        };
        let builtin = read("modules.builtin").unwrap_or_default();
        let roots = MODULE_GROUPS.concat();
        let (paths, dep) = module_closure(&read("modules.dep")?, &builtin, &roots)?;
        let dst = format!("lib/modules/{}", self.kernel.version);
        for path in &paths {
            fs.insert(&format!("{dst}/{path}"), Entry::File(src.join(path)), 0o644);
        }
        let names: BTreeSet<String> = paths.iter().map(|p| module_name(p)).collect();
        fs.insert(
            &format!("{dst}/modules.dep"),
            Entry::Data(dep.into_bytes()),
            0o644,
        );
        fs.insert(
            &format!("{dst}/modules.builtin"),
            Entry::Data(builtin.into_bytes()),
            0o644,
        );
        for table in ["modules.alias", "modules.symbols"] {
            let kept: String = read(table)?
                .lines()
                .filter(|l| l.rsplit(' ').next().is_some_and(|m| names.contains(m)))
                .map(|l| format!("{l}\n"))
                .collect();
            fs.insert(
                &format!("{dst}/{table}"),
                Entry::Data(kept.into_bytes()),
                0o644,
            );
        }
        Ok(())
    }

    fn boot(
        &self,
        initrd: &Path,
        log_path: &Path,
        kept: &Path,
        nonce: u64,
    ) -> io::Result<VmOutcome> {
        let mut cmd = Command::new(&self.opts.qemu);
        cmd.args([
            "-accel",
            "tcg",
            "-smp",
            "2",
            "-m",
            &self.opts.mem_mb.to_string(),
        ])
        .arg("-kernel")
        .arg(&self.kernel.vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            KERNEL_CMDLINE,
            "-no-reboot",
            "-nographic",
            "-nic",
            "none",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let t0 = Instant::now();
        let qemu = cmd
            .spawn()
            .map_err(|e| annotate(e, &format!("starting {}", self.opts.qemu.display())))?;
        let mut qemu = Qemu(qemu);
        let stdout = qemu.0.stdout.take().expect("qemu stdout is piped");
        let mut stderr = qemu.0.stderr.take().expect("qemu stderr is piped");
        let log_file = File::create(log_path)?;
        let echo = self.opts.echo;
        let console =
            thread::spawn(move || read_console(stdout, log_file, Console::new(nonce), echo));
        let errors = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });

        let status = loop {
            if let Some(status) = qemu.0.try_wait()? {
                break Some(status);
            }
            if t0.elapsed() >= self.opts.timeout {
                qemu.kill();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let elapsed = t0.elapsed();
        let console = console.join().expect("console reader does not panic")?;
        let qemu_stderr = errors.join().expect("stderr reader does not panic");
        if !qemu_stderr.is_empty() {
            let mut f = File::options().append(true).open(log_path)?;
            f.write_all(b"\n--- qemu stderr ---\n")?;
            f.write_all(&qemu_stderr)?;
        }
        let log = kept.to_path_buf();
        let Some(status) = status else {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                VmError::Timeout {
                    after: elapsed,
                    log,
                },
            ));
        };
        let panicked =
            fs::read(log_path).is_ok_and(|l| find(&l, b"Kernel panic - not syncing").is_some());
        match guest_status(
            status,
            &console,
            panicked,
            &String::from_utf8_lossy(&qemu_stderr),
        ) {
            Ok(code) => Ok(VmOutcome {
                status: code,
                output: String::from_utf8_lossy(&console.output).into_owned(),
                boot: console.started.map_or(elapsed, |t| t.duration_since(t0)),
                elapsed,
                console_log: None,
            }),
            Err(None) => Err(io::Error::other(VmError::KernelPanic { log })),
            Err(Some(detail)) => Err(io::Error::other(VmError::NoStatus { detail, log })),
        }
    }
}

/// Decodes the status: QEMU exits with `(N << 1) | 1` after the guest writes byte N to the
/// `isa-debug-exit` port, but only the low 8 bits of that survive exit(2), so bit 7 of N comes
/// from the end marker, checked against the other seven. `Err(None)` is a kernel panic.
fn guest_status(
    qemu: ExitStatus,
    console: &Console,
    panicked: bool,
    stderr: &str,
) -> Result<u8, Option<String>> {
    if console.started.is_none() {
        if panicked {
            return Err(None);
        }
        return Err(Some(format!(
            "the guest never started the binary; qemu {qemu}: {}",
            stderr.trim()
        )));
    }
    match qemu.code() {
        Some(code) if code & 1 == 1 => {
            let port = u8::try_from((code >> 1) & 0x7f).expect("7 bits fit in u8");
            match console.rc {
                Some(rc) if rc & 0x7f == port => Ok(rc),
                Some(rc) => Err(Some(format!(
                    "isa-debug-exit gave {port} but the console {rc}"
                ))),
                None => Ok(port),
            }
        }
        _ if panicked => Err(None),
        _ => Err(Some(format!(
            "qemu {qemu} without a status from isa-debug-exit"
        ))),
    }
}

/// Kills QEMU (by PID) and reaps it if it is still running when dropped.
struct Qemu(Child);

impl Qemu {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Makes the kernel kill QEMU when the thread that started it dies, so a killed test run
/// leaves no QEMU spinning (prctl(2) `PR_SET_PDEATHSIG`).
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe; it neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)
        });
    }
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_file_parses_host_and_guest_paths() {
        let f = GuestFile::parse("/usr/bin/memhog").unwrap();
        assert_eq!(
            (f.host, f.guest.as_str()),
            (PathBuf::from("/usr/bin/memhog"), "/bin/memhog")
        );
        assert_eq!(GuestFile::parse("a/x:/opt/").unwrap().guest, "/opt/x");
        assert_eq!(
            GuestFile::parse("x:/data/y.json").unwrap().guest,
            "/data/y.json"
        );
        assert!(GuestFile::parse("x:relative").is_err());
        assert!(GuestFile::parse("x:/a/../b").is_err());
    }
}
