//! The guest's serial console: the binary's output between two markers carrying a per-run
//! nonce, and its exit status from the end marker.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::time::Instant;

/// Reads the serial console: every byte (CRs removed) to `log`, the binary's output to
/// `console.output` and, with `echo`, to stdout as it arrives.
pub(super) fn read_console(
    mut from: impl Read,
    log: File,
    mut console: Console,
    echo: bool,
) -> io::Result<Console> {
    let mut log = BufWriter::new(log);
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let data: Vec<u8> = buf[..n].iter().copied().filter(|&b| b != b'\r').collect();
        log.write_all(&data)?;
        let out = console.feed(&data);
        if echo && !out.is_empty() {
            let mut stdout = io::stdout().lock();
            let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
        }
    }
    log.flush()?;
    Ok(console)
}

/// Splits the console into boot noise, the binary's output (between the start marker and the
/// end marker, which carries the status) and what follows. Partial lines are passed on at once,
/// except a tail that could be the beginning of the end marker.
#[derive(Debug)]
pub(super) struct Console {
    start: Vec<u8>,
    end: Vec<u8>,
    pending: Vec<u8>,
    pub(super) output: Vec<u8>,
    pub(super) started: Option<Instant>,
    done: bool,
    pub(super) rc: Option<u8>,
}

impl Console {
    pub(super) fn new(nonce: u64) -> Self {
        Self {
            start: start_marker(nonce).into_bytes(),
            end: end_marker_prefix(nonce).into_bytes(),
            pending: Vec::new(),
            output: Vec::new(),
            started: None,
            done: false,
            rc: None,
        }
    }

    /// Takes console bytes; returns those that belong to the binary's output.
    pub(super) fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        if self.started.is_none() {
            let Some(at) = find(&self.pending, &self.start) else {
                // Keep only what could still be the start of the marker.
                let keep = self.pending.len().saturating_sub(self.start.len());
                self.pending.drain(..keep);
                return out;
            };
            let Some(nl) = self.pending[at..].iter().position(|&b| b == b'\n') else {
                return out;
            };
            self.pending.drain(..=at + nl);
            self.started = Some(Instant::now());
        }
        if self.done {
            self.pending.clear();
            return out;
        }
        if let Some(at) = find(&self.pending, &self.end) {
            out.extend(self.pending.drain(..at));
            let rest = &self.pending[self.end.len()..];
            if let Some(close) = find(rest, b"@@") {
                let digits = String::from_utf8_lossy(&rest[..close]).into_owned();
                self.rc = digits
                    .parse::<u16>()
                    .ok()
                    .map(|rc| u8::try_from(rc).unwrap_or(u8::MAX));
                self.done = true;
                self.pending.clear();
            }
        } else {
            let keep = (1..self.end.len().min(self.pending.len() + 1))
                .rev()
                .find(|&k| self.pending.ends_with(&self.end[..k]))
                .unwrap_or(0);
            out.extend(self.pending.drain(..self.pending.len() - keep));
        }
        self.output.extend_from_slice(&out);
        out
    }
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn start_marker(nonce: u64) -> String {
    format!("@@cairn-vm:{nonce:016x}:start@@")
}

pub(super) fn end_marker_prefix(nonce: u64) -> String {
    format!("@@cairn-vm:{nonce:016x}:end:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_splits_output_at_the_markers() {
        let mut c = Console::new(7);
        let start = start_marker(7);
        let end = end_marker_prefix(7);
        assert!(c.feed(b"[    0.1] boot noise\n").is_empty());
        assert!(c.feed(&start.as_bytes()[..5]).is_empty());
        assert!(c.feed(format!("{}\nhello ", &start[5..]).as_bytes()) == b"hello ");
        assert_eq!(c.feed(b"world\npartial"), b"world\npartial");
        assert_eq!(c.feed(&end.as_bytes()[..4]), b"");
        assert_eq!(c.feed(format!("{}13", &end[4..]).as_bytes()), b"");
        assert_eq!(c.feed(b"7@@\nafter\n"), b"");
        assert_eq!(c.output, b"hello world\npartial");
        assert_eq!(c.rc, Some(137));
        assert!(c.started.is_some() && c.done);
    }

    #[test]
    fn console_passes_on_text_that_only_resembles_a_marker() {
        let mut c = Console::new(1);
        c.feed(format!("{}\n", start_marker(1)).as_bytes());
        assert_eq!(c.feed(b"a @@cairn"), b"a ");
        assert_eq!(c.feed(b"-vm:other@@\n"), b"@@cairn-vm:other@@\n");
        assert!(c.rc.is_none());
    }
}
