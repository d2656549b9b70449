//! Turning a tar member name into components that are safe to resolve under the target.
//!
//! The rules follow what GNU tar and Docker's `archive` package do for hostile names, but
//! stricter: a leading `/` is stripped (GNU tar's "Removing leading `/'"), `.` components
//! vanish, and any `..` component is refused outright instead of being cleaned lexically,
//! because cleaning `a/../x` is only right if `a` is not a symlink. Real image layers never
//! contain `..` (they are produced by walking a filesystem).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// `PATH_MAX` on Linux, including the terminating NUL.
const PATH_MAX: usize = 4096;
/// `NAME_MAX` on Linux: the longest single component any Linux filesystem accepts.
const NAME_MAX: usize = 255;

/// The OCI whiteout prefix (image-spec `layer.md`, "Whiteouts").
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The OCI opaque-directory marker.
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// A member name split into validated components, relative to the target root.
pub(crate) type Components = Vec<OsString>;

/// Why a member name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathProblem {
    ParentComponent,
    TooLong,
    ComponentTooLong,
}

impl PathProblem {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            PathProblem::ParentComponent => "path has a `..` component",
            PathProblem::TooLong => "path is longer than PATH_MAX",
            PathProblem::ComponentTooLong => "a path component is longer than NAME_MAX",
        }
    }
}

/// Splits `raw` into components relative to the target root. An empty result means the root
/// itself (`./` or `/`).
pub(crate) fn sanitize(raw: &[u8]) -> Result<Components, PathProblem> {
    if raw.len() >= PATH_MAX {
        return Err(PathProblem::TooLong);
    }
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(PathProblem::ParentComponent),
            name if name.len() > NAME_MAX => return Err(PathProblem::ComponentTooLong),
            name => out.push(OsStr::from_bytes(name).to_os_string()),
        }
    }
    Ok(out)
}

/// What a member's final component says about whiteouts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whiteout<'a> {
    /// Not a whiteout.
    None,
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh.<name>`: delete `<name>` from lower layers.
    Delete(&'a OsStr),
    /// Another `.wh..wh.` name: aufs bookkeeping (hardlink dirs), ignored as Docker does.
    AufsMeta,
    /// `.wh.` with nothing usable after it (`.wh.`, `.wh..`, `.wh...`).
    Invalid,
}

/// Classifies the final component of a member name.
pub(crate) fn whiteout(name: &OsStr) -> Whiteout<'_> {
    let bytes = name.as_bytes();
    if bytes == OPAQUE_MARKER {
        return Whiteout::Opaque;
    }
    let Some(rest) = bytes.strip_prefix(WHITEOUT_PREFIX) else {
        return Whiteout::None;
    };
    if rest.starts_with(WHITEOUT_PREFIX) {
        return Whiteout::AufsMeta;
    }
    match rest {
        b"" | b"." | b".." => Whiteout::Invalid,
        _ => Whiteout::Delete(OsStr::from_bytes(rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> Vec<String> {
        sanitize(raw.as_bytes())
            .expect("valid path")
            .into_iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn strips_root_and_dots() {
        assert_eq!(ok("/abs/path"), ["abs", "path"]);
        assert_eq!(ok("./a//b/./c/"), ["a", "b", "c"]);
        assert!(ok("./").is_empty());
        assert!(ok("/").is_empty());
    }

    #[test]
    fn refuses_parent_components_and_long_names() {
        for raw in ["../escape", "a/../../x", "a/..", "..", "/../x"] {
            assert_eq!(
                sanitize(raw.as_bytes()),
                Err(PathProblem::ParentComponent),
                "{raw}"
            );
        }
        assert_eq!(sanitize(&[b'a'; 256]), Err(PathProblem::ComponentTooLong));
        let deep = "a/".repeat(2100);
        assert_eq!(sanitize(deep.as_bytes()), Err(PathProblem::TooLong));
    }

    #[test]
    fn classifies_whiteouts() {
        assert_eq!(whiteout(OsStr::new("file")), Whiteout::None);
        assert_eq!(whiteout(OsStr::new(".wh..wh..opq")), Whiteout::Opaque);
        assert_eq!(
            whiteout(OsStr::new(".wh.foo")),
            Whiteout::Delete(OsStr::new("foo"))
        );
        assert_eq!(whiteout(OsStr::new(".wh..wh.plnk")), Whiteout::AufsMeta);
        assert_eq!(whiteout(OsStr::new(".wh.")), Whiteout::Invalid);
        assert_eq!(whiteout(OsStr::new(".wh..")), Whiteout::Invalid);
        assert_eq!(whiteout(OsStr::new(".wh...")), Whiteout::Invalid);
    }
}
