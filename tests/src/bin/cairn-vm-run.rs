//! `cairn-vm-run`: runs one binary as root in the cgroup v2 VM and exits with its status.
//! Usable as a cargo runner (`scripts/vm-test`); everything after BINARY reaches it intact.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use cairn_testsupport::vm::{self, GuestFile, VmError, VmOptions};

const USAGE: &str = "\
usage: cairn-vm-run [--mem MB] [--timeout S] [--file HOSTPATH[:GUESTPATH]]... BINARY [ARGS...]

Boots Debian's kernel (from scripts/setup) under QEMU/TCG with cgroup v2 only, runs BINARY as
/bin/testbin in /tmp as root with CAIRN_IN_VM=1, streams its output and exits with its status
(124 when the VM timed out, 125 when the VM gave no status).

  --mem MB       guest memory (default 2048)
  --timeout S    kill the VM after S seconds, boot included (default 600)
  --file SPEC    copy a host file into the guest (default /bin/NAME; GUESTPATH ending in / is a
                 directory); dynamically linked programs bring their libraries";

/// Exit status when the VM ran out of time (as timeout(1)).
const EXIT_TIMEOUT: u8 = 124;
/// Exit status when the runner itself failed.
const EXIT_RUNNER: u8 = 125;

fn main() -> ExitCode {
    let (binary, args, opts) = match parse(std::env::args_os().skip(1)) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cairn-vm-run: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match vm::run(&binary, &args, &opts) {
        Ok(outcome) => {
            eprintln!(
                "cairn-vm-run: {} exited with {} (boot {:.1} s, total {:.1} s)",
                binary.display(),
                outcome.status,
                outcome.boot.as_secs_f64(),
                outcome.elapsed.as_secs_f64()
            );
            if let Some(log) = &outcome.console_log {
                eprintln!("cairn-vm-run: console log: {}", log.display());
            }
            ExitCode::from(outcome.status)
        }
        Err(e) => {
            eprintln!("cairn-vm-run: running {} in the VM: {e}", binary.display());
            let timeout = matches!(
                e.get_ref().and_then(|e| e.downcast_ref()),
                Some(VmError::Timeout { .. })
            );
            ExitCode::from(if timeout { EXIT_TIMEOUT } else { EXIT_RUNNER })
        }
    }
}

type Parsed = (PathBuf, Vec<OsString>, VmOptions);

/// Options come before BINARY (or `--`); everything after BINARY belongs to it.
fn parse(mut argv: impl Iterator<Item = OsString>) -> anyhow::Result<Option<Parsed>> {
    let mut opts = VmOptions {
        echo: true,
        ..VmOptions::default()
    };
    let binary = loop {
        let Some(arg) = argv.next() else {
            bail!("BINARY is missing")
        };
        let Some(flag) = arg.to_str().filter(|a| a.starts_with('-')) else {
            break arg;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let mut value = || -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => argv
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .with_context(|| format!("{name} needs a value")),
            }
        };
        match name {
            "-h" | "--help" => return Ok(None),
            "--" => break argv.next().context("BINARY is missing")?,
            "--mem" => opts.mem_mb = value()?.parse().context("--mem takes megabytes")?,
            "--timeout" => {
                let secs: f64 = value()?.parse().context("--timeout takes seconds")?;
                opts.timeout =
                    Duration::try_from_secs_f64(secs).context("--timeout takes seconds")?;
            }
            "--file" => {
                let spec = value()?;
                opts.files
                    .push(GuestFile::parse(&spec).map_err(anyhow::Error::msg)?);
            }
            _ => bail!("unknown option {flag}"),
        }
    };
    Ok(Some((binary.into(), argv.collect(), opts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = OsString> {
        list.iter()
            .map(OsString::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn options_stop_at_the_binary() {
        let (bin, rest, opts) = parse(args(&[
            "--mem",
            "512",
            "--timeout=30",
            "--file",
            "x:/y",
            "t",
            "--test-threads",
            "1",
            "--mem",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(bin, PathBuf::from("t"));
        assert_eq!(rest, ["--test-threads", "1", "--mem"]);
        assert_eq!(
            (opts.mem_mb, opts.timeout, opts.files[0].guest.as_str()),
            (512, Duration::from_secs(30), "/y")
        );
        assert!(opts.echo);
    }

    #[test]
    fn bad_invocations_are_errors() {
        assert!(parse(args(&[])).is_err());
        assert!(parse(args(&["--mem"])).is_err());
        assert!(parse(args(&["--bogus", "t"])).is_err());
        assert!(parse(args(&["--help"])).unwrap().is_none());
        assert_eq!(
            parse(args(&["--", "-weird"])).unwrap().unwrap().0,
            PathBuf::from("-weird")
        );
    }
}
