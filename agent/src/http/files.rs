//! `/files/read` and `/files/browse`, confined to the sandboxes (Mesos's `files.cpp`
//! semantics: `offset=-1` answers the file's length; a read is capped at 16 pages).
//!
//! A path is either absolute (a sandbox `directory` from `/state`, plus a file) or relative
//! to the sandboxes directory. It is refused when it has a `..` component, when it lies
//! outside the sandboxes, or when its canonical form (symlinks resolved) does: a symlink in a
//! sandbox cannot reach the host. The last component is opened with `O_NOFOLLOW`, so a
//! symlink swapped in after the check is not followed either.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

/// The most a read returns (Mesos: 16 pages).
pub const MAX_READ: u64 = 16 * 4096;

/// A typed `/files/read` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFile {
    pub path: String,
    /// `-1` asks for the length only.
    pub offset: i64,
    pub length: Option<u64>,
}

/// Why a file could not be served.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("path {0:?} is outside the sandboxes")]
    Forbidden(String),
    #[error("path {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `{data, offset}` as Mesos answers a read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadAnswer {
    pub data: String,
    pub offset: u64,
}

/// One `/files/browse` entry, in Mesos's shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrowseEntry {
    pub path: String,
    pub nlink: u64,
    pub size: u64,
    pub mtime: i64,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
}

/// Resolves `requested` inside `root` (the sandboxes directory), refusing escapes.
fn confine(root: &Path, requested: &str) -> Result<PathBuf, FilesError> {
    let forbidden = || FilesError::Forbidden(requested.to_string());
    if requested.is_empty() {
        return Err(FilesError::BadRequest("missing 'path'".into()));
    }
    let path = Path::new(requested);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(forbidden());
    }
    let root = root.canonicalize().map_err(|source| FilesError::Io {
        op: "resolve",
        path: root.to_path_buf(),
        source,
    })?;
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    };
    // Lexically inside first (an absolute path elsewhere is refused even if it exists).
    if !joined.starts_with(&root) && !joined.starts_with(root_alias(&root, path)) {
        return Err(forbidden());
    }
    let canonical = match joined.canonicalize() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FilesError::NotFound(requested.to_string()))
        }
        Err(source) => {
            return Err(FilesError::Io {
                op: "resolve",
                path: joined,
                source,
            })
        }
    };
    if !canonical.starts_with(&root) {
        return Err(forbidden());
    }
    Ok(canonical)
}

/// An absolute request may name the sandboxes through a non-canonical prefix (a symlinked
/// `/tmp`): accept it when it canonicalizes into the root, which [`confine`] checks next.
fn root_alias(root: &Path, path: &Path) -> PathBuf {
    path.ancestors()
        .find(|a| a.canonicalize().is_ok_and(|c| c == root))
        .map_or_else(|| root.to_path_buf(), Path::to_path_buf)
}

fn open_nofollow(path: &Path) -> Result<fs::File, FilesError> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| FilesError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })
}

/// Serves a read.
///
/// # Errors
/// See [`FilesError`]; a directory is a bad request, as in Mesos.
pub fn read(root: &Path, call: &ReadFile) -> Result<ReadAnswer, FilesError> {
    let path = confine(root, &call.path)?;
    let mut file = open_nofollow(&path)?;
    let io = |op| {
        let path = path.clone();
        move |source| FilesError::Io { op, path, source }
    };
    let meta = file.metadata().map_err(io("stat"))?;
    if meta.is_dir() {
        return Err(FilesError::BadRequest(format!(
            "{:?} is a directory",
            call.path
        )));
    }
    let size = meta.len();
    if call.offset == -1 {
        return Ok(ReadAnswer {
            data: String::new(),
            offset: size,
        });
    }
    let offset = u64::try_from(call.offset)
        .map_err(|_| FilesError::BadRequest(format!("negative offset {}", call.offset)))?;
    let length = call.length.unwrap_or(MAX_READ).min(MAX_READ);
    let mut data = Vec::new();
    if offset < size {
        file.seek(SeekFrom::Start(offset)).map_err(io("seek"))?;
        file.take(length)
            .read_to_end(&mut data)
            .map_err(io("read"))?;
    }
    Ok(ReadAnswer {
        data: String::from_utf8_lossy(&data).into_owned(),
        offset,
    })
}

fn mode_string(mode: u32, is_dir: bool, is_link: bool) -> String {
    let kind = if is_dir {
        'd'
    } else if is_link {
        'l'
    } else {
        '-'
    };
    let mut s = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Lists a sandbox directory.
///
/// # Errors
/// See [`FilesError`].
pub fn browse(root: &Path, requested: &str) -> Result<Vec<BrowseEntry>, FilesError> {
    let dir = confine(root, requested)?;
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| FilesError::Io { op, path, source }
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io("list", &dir))? {
        let entry = entry.map_err(io("list", &dir))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io("stat", &path))?;
        out.push(BrowseEntry {
            path: path.to_string_lossy().into_owned(),
            nlink: meta.nlink(),
            size: meta.len(),
            mtime: meta.mtime(),
            mode: mode_string(
                meta.permissions().mode(),
                meta.is_dir(),
                meta.file_type().is_symlink(),
            ),
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("sandboxes");
        fs::create_dir_all(root.join("c1")).expect("mkdir");
        fs::write(root.join("c1/stdout"), "hello world\n").expect("write");
        fs::write(dir.path().join("secret"), "secret").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("c1/escape"))
            .expect("symlink");
        (dir, root)
    }

    fn call(path: &str, offset: i64, length: Option<u64>) -> ReadFile {
        ReadFile {
            path: path.into(),
            offset,
            length,
        }
    }

    #[test]
    fn reads_with_offset_and_length() {
        let (_d, root) = setup();
        let a = read(&root, &call("c1/stdout", 6, Some(5))).expect("read");
        assert_eq!((a.data.as_str(), a.offset), ("world", 6));
        let a = read(&root, &call("c1/stdout", -1, None)).expect("length");
        assert_eq!((a.data.as_str(), a.offset), ("", 12));
        let abs = root.join("c1/stdout");
        let a = read(&root, &call(abs.to_str().expect("utf-8"), 0, None)).expect("abs");
        assert_eq!(a.data, "hello world\n");
    }

    #[test]
    fn refuses_escapes() {
        let (d, root) = setup();
        let secret = d.path().join("secret");
        for p in [
            "c1/../../secret",
            "../secret",
            secret.to_str().expect("utf-8"),
            "c1/escape",
        ] {
            let e = read(&root, &call(p, 0, None)).expect_err(p);
            assert!(matches!(e, FilesError::Forbidden(_)), "{p}: {e}");
        }
        assert!(matches!(
            read(&root, &call("c1/none", 0, None)),
            Err(FilesError::NotFound(_))
        ));
        assert_eq!(browse(&root, "c1").expect("browse").len(), 2);
    }
}
