//! Container images for tests, built from Debian's static busybox with `umoci`.
//!
//! The images are built once per machine and kept in a cache directory (`$CAIRN_CACHE`, else
//! `<workspace>/.cache`), under a subdirectory keyed by the busybox binary's hash and
//! [`FORMAT_VERSION`]: a new busybox or a change to what is built here makes a new one. A build
//! happens in a temporary directory renamed into place when complete, under an exclusive
//! `flock(2)` so that parallel test processes build it once and never see half an image.
//!
//! The OCI layout holds three tags:
//! - `latest`: one layer (busybox, an applet symlink per applet in `/bin`, `/etc/passwd` and
//!   `/etc/group` with root and nobody, `/tmp`), `Cmd ["/bin/sh","-c","echo hello from cairn"]`;
//! - `multi`: `latest` plus a layer adding [`LAYER2_FILE`] and [`REMOVED_FILE`] and a layer
//!   deleting [`REMOVED_FILE`] (a whiteout, [`WHITEOUT_ENTRY`]);
//! - `arm64`: `latest` with `architecture: arm64` in its config (the layer is still x86-64
//!   busybox: it exists to fill a second platform in manifest lists, not to run).
//!
//! [`TestImages::push_to`] pushes them to a [`Registry`] together with a Docker manifest list
//! and an OCI index.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::registry::{
    sha256_digest, Registry, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
};

/// The busybox binary the images are made of (Debian's `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";
/// Bumped whenever the images built here change, so caches from older code are not used.
pub const FORMAT_VERSION: u32 = 2;
/// The image's command, as in its config.
pub const CMD: [&str; 3] = ["/bin/sh", "-c", "echo hello from cairn"];
/// What [`CMD`] prints.
pub const EXPECTED_OUTPUT: &str = "hello from cairn\n";
/// The image's `PATH`, as in its config's `Env`.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Number of layers of the `latest` (and `arm64`) image.
pub const LATEST_LAYERS: usize = 1;
/// Number of layers of the `multi` image.
pub const MULTI_LAYERS: usize = 3;
/// A file added by the second layer of `multi`.
pub const LAYER2_FILE: &str = "/etc/cairn-layer2";
/// The content of [`LAYER2_FILE`].
pub const LAYER2_CONTENT: &str = "added by layer 2\n";
/// A file added by the second layer of `multi` and deleted by its third.
pub const REMOVED_FILE: &str = "/etc/cairn-removed";
/// The whiteout entry in the third layer of `multi` that deletes [`REMOVED_FILE`].
pub const WHITEOUT_ENTRY: &str = "etc/.wh.cairn-removed";
/// The repository the images are pushed to in a registry, and named in the docker archive.
pub const REPOSITORY: &str = "cairn/busybox";
/// The tag `skopeo` writes into the docker-save tarball's `manifest.json` (`RepoTags`): it
/// qualifies the short name [`REPOSITORY`]`:latest` with `docker.io/`.
pub const DOCKER_ARCHIVE_REPO_TAG: &str = "docker.io/cairn/busybox:latest";
/// The Docker manifest list pushed by [`TestImages::push_to`].
pub const LIST_TAG: &str = "list";
/// The OCI-format copy of `latest` pushed by [`TestImages::push_to`].
pub const OCI_LATEST_TAG: &str = "oci-latest";
/// The OCI-format copy of `arm64` pushed by [`TestImages::push_to`].
pub const OCI_ARM64_TAG: &str = "oci-arm64";
/// The OCI image index pushed by [`TestImages::push_to`].
pub const OCI_INDEX_TAG: &str = "oci-index";

/// One image in the OCI layout, as read from its manifest and config.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// Its tag in the layout.
    pub tag: &'static str,
    /// The manifest's digest (`sha256:...`).
    pub manifest_digest: String,
    /// The config blob's digest.
    pub config_digest: String,
    /// The layer blobs' digests (gzip-compressed tars), bottom first.
    pub layers: Vec<String>,
    /// `architecture` from the config (`amd64` or `arm64`).
    pub architecture: String,
}

/// The test images, built and cached on disk. Get them with [`TestImages::get`].
#[derive(Debug, Clone)]
pub struct TestImages {
    /// The cache subdirectory holding everything below.
    pub dir: PathBuf,
    /// The OCI image layout with tags `latest`, `multi` and `arm64`.
    pub oci_layout: PathBuf,
    /// A `docker save` tarball of `latest` (`docker load` gives [`DOCKER_ARCHIVE_REPO_TAG`]).
    pub docker_archive: PathBuf,
    /// The one-layer image.
    pub latest: OciImage,
    /// The three-layer image with a whiteout.
    pub multi: OciImage,
    /// `latest` with an arm64 config.
    pub arm64: OciImage,
}

/// A manifest pushed to a registry.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// The full reference, `127.0.0.1:PORT/cairn/busybox:TAG`.
    pub reference: String,
    /// The tag.
    pub tag: &'static str,
    /// The manifest's digest as the registry stores it (`sha256:...`).
    pub digest: String,
    /// The manifest's media type (send it as `Accept` to get the same bytes back).
    pub media_type: &'static str,
    /// The manifest's size in bytes.
    pub size: usize,
}

/// What [`TestImages::push_to`] pushed.
#[derive(Debug, Clone)]
pub struct PushedImages {
    /// `127.0.0.1:PORT/cairn/busybox`.
    pub repository: String,
    /// `:latest` as a Docker schema 2 manifest.
    pub latest: PushedImage,
    /// `:multi` as a Docker schema 2 manifest (3 layers).
    pub multi: PushedImage,
    /// `:arm64` as a Docker schema 2 manifest.
    pub arm64: PushedImage,
    /// `:list`, a Docker manifest list of `latest` (linux/amd64) and `arm64` (linux/arm64/v8).
    pub list: PushedImage,
    /// `:oci-latest`, `latest` as an OCI manifest.
    pub oci_latest: PushedImage,
    /// `:oci-arm64`, `arm64` as an OCI manifest.
    pub oci_arm64: PushedImage,
    /// `:oci-index`, an OCI index of `oci-latest` and `oci-arm64`.
    pub oci_index: PushedImage,
}

impl PushedImages {
    /// All pushed manifests.
    pub fn all(&self) -> [&PushedImage; 7] {
        [
            &self.latest,
            &self.multi,
            &self.arm64,
            &self.list,
            &self.oci_latest,
            &self.oci_arm64,
            &self.oci_index,
        ]
    }
}

static IMAGES: OnceLock<TestImages> = OnceLock::new();

impl TestImages {
    /// The test images in the default cache directory, built on first use (about a second).
    ///
    /// # Panics
    /// When busybox, umoci or skopeo are missing or fail (run `scripts/setup`).
    pub fn get() -> &'static TestImages {
        IMAGES.get_or_init(|| Self::get_in(&default_cache_dir()))
    }

    /// The test images cached under `cache_dir`, built there if they are not yet. Several
    /// threads or processes calling this at once build them once.
    ///
    /// # Panics
    /// As [`TestImages::get`].
    pub fn get_in(cache_dir: &Path) -> TestImages {
        let key = cache_key();
        let dir = cache_dir.join(&key);
        if !dir.is_dir() {
            fs::create_dir_all(cache_dir)
                .unwrap_or_else(|e| panic!("create image cache {}: {e}", cache_dir.display()));
            let lock_path = cache_dir.join(format!("{key}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
            // Blocks until a concurrent builder finishes; the lock goes with the descriptor,
            // also when a builder dies.
            let _lock = Flock::lock(file, FlockArg::LockExclusive)
                .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", lock_path.display()));
            if !dir.is_dir() {
                build(cache_dir, &key, &dir);
            }
        }
        Self::read(&dir)
    }

    fn read(dir: &Path) -> TestImages {
        let oci_layout = dir.join("oci");
        let index: Value = read_json(&oci_layout.join("index.json"));
        let image = |tag: &'static str| {
            let entry = index["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
                .unwrap_or_else(|| panic!("tag {tag} missing in {}", oci_layout.display()));
            let manifest_digest = entry["digest"]
                .as_str()
                .expect("digest in index")
                .to_string();
            let manifest = read_json(&blob_path(&oci_layout, &manifest_digest));
            let config_digest = manifest["config"]["digest"]
                .as_str()
                .expect("config digest")
                .to_string();
            let config = read_json(&blob_path(&oci_layout, &config_digest));
            let layers = manifest["layers"]
                .as_array()
                .expect("layers in manifest")
                .iter()
                .map(|l| l["digest"].as_str().expect("layer digest").to_string())
                .collect();
            let architecture = config["architecture"]
                .as_str()
                .expect("architecture")
                .to_string();
            OciImage {
                tag,
                manifest_digest,
                config_digest,
                layers,
                architecture,
            }
        };
        TestImages {
            dir: dir.to_path_buf(),
            docker_archive: dir.join("busybox.tar"),
            latest: image("latest"),
            multi: image("multi"),
            arm64: image("arm64"),
            oci_layout,
        }
    }

    /// `oci:<layout>:<tag>`, a source reference for skopeo.
    pub fn oci_reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.oci_layout.display())
    }

    /// The path of a blob (`sha256:...`) in the OCI layout.
    pub fn blob(&self, digest: &str) -> PathBuf {
        blob_path(&self.oci_layout, digest)
    }

    /// Pushes the images to `registry` as [`REPOSITORY`] (`latest`, `multi`, `arm64` as Docker
    /// schema 2 manifests; `oci-latest`, `oci-arm64` as OCI manifests), then a Docker manifest
    /// list `list` and an OCI index `oci-index`, each of an amd64 and an arm64 image. `creds`
    /// are the registry's basic-auth user and password, if it has any.
    ///
    /// # Panics
    /// When a push fails; the message includes skopeo's output or the registry's answer.
    pub fn push_to(&self, registry: &Registry, creds: Option<(&str, &str)>) -> PushedImages {
        let repository = format!("{}/{REPOSITORY}", registry.addr());
        let push = |src: &str, tag: &'static str, oci: bool| {
            self.skopeo_push(registry, &repository, src, tag, oci, creds)
        };
        let latest = push("latest", "latest", false);
        let multi = push("multi", "multi", false);
        let arm64 = push("arm64", "arm64", false);
        let oci_latest = push("latest", OCI_LATEST_TAG, true);
        let oci_arm64 = push("arm64", OCI_ARM64_TAG, true);
        // The registry accepts a list only once the manifests it names are there.
        let list = self.put_list(registry, &repository, LIST_TAG, [&latest, &arm64], creds);
        let oci_index = self.put_list(
            registry,
            &repository,
            OCI_INDEX_TAG,
            [&oci_latest, &oci_arm64],
            creds,
        );
        PushedImages {
            repository,
            latest,
            multi,
            arm64,
            list,
            oci_latest,
            oci_arm64,
            oci_index,
        }
    }

    fn skopeo_push(
        &self,
        registry: &Registry,
        repository: &str,
        src_tag: &str,
        tag: &'static str,
        oci: bool,
        creds: Option<(&str, &str)>,
    ) -> PushedImage {
        let reference = format!("{repository}:{tag}");
        let mut cmd = Command::new("skopeo");
        // No policy check: the images are our own, and a missing policy.json must not matter.
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        cmd.args(["--format", if oci { "oci" } else { "v2s2" }]);
        match creds {
            Some((user, password)) => cmd.arg("--dest-creds").arg(format!("{user}:{password}")),
            None => cmd.arg("--dest-no-creds"),
        };
        cmd.arg(self.oci_reference(src_tag))
            .arg(format!("docker://{reference}"));
        run(&mut cmd);
        let media_type = if oci { OCI_MANIFEST } else { DOCKER_MANIFEST };
        // Read the manifest back: its bytes give the size a manifest list needs.
        let path = format!("/v2/{REPOSITORY}/manifests/{tag}");
        let resp = registry.get(&path, &[media_type], creds);
        assert_eq!(
            resp.status,
            200,
            "GET {path} after pushing it: {}",
            resp.text()
        );
        let digest = resp.body_digest();
        assert_eq!(
            resp.digest.as_deref(),
            Some(digest.as_str()),
            "digest header of {path}"
        );
        PushedImage {
            reference,
            tag,
            digest,
            media_type,
            size: resp.body.len(),
        }
    }

    fn put_list(
        &self,
        registry: &Registry,
        repository: &str,
        tag: &'static str,
        [amd64, arm64]: [&PushedImage; 2],
        creds: Option<(&str, &str)>,
    ) -> PushedImage {
        let media_type = if amd64.media_type == OCI_MANIFEST {
            OCI_INDEX
        } else {
            DOCKER_MANIFEST_LIST
        };
        let entry = |image: &PushedImage, platform: Value| {
            json!({
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": image.size,
                "platform": platform,
            })
        };
        let list = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                entry(amd64, json!({"architecture": self.latest.architecture, "os": "linux"})),
                entry(arm64, json!({"architecture": "arm64", "os": "linux", "variant": "v8"})),
            ],
        });
        let body = serde_json::to_vec(&list).expect("serialize manifest list");
        let path = format!("/v2/{REPOSITORY}/manifests/{tag}");
        let resp = registry.put(&path, media_type, &body, creds);
        assert_eq!(resp.status, 201, "PUT {path}: {}", resp.text());
        let digest = sha256_digest(&body);
        assert_eq!(
            resp.digest.as_deref(),
            Some(digest.as_str()),
            "digest header of PUT {path}"
        );
        PushedImage {
            reference: format!("{repository}:{tag}"),
            tag,
            digest,
            media_type,
            size: body.len(),
        }
    }
}

/// `$CAIRN_CACHE`, else `<workspace>/.cache` (as `scripts/setup`).
fn default_cache_dir() -> PathBuf {
    std::env::var_os("CAIRN_CACHE").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".cache")
        },
        PathBuf::from,
    )
}

/// `images-v<FORMAT_VERSION>-<first 16 hex digits of sha256(busybox)>`.
fn cache_key() -> String {
    let busybox = fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("read {BUSYBOX} ({e}): install busybox-static"));
    let hash = hex::encode(Sha256::digest(&busybox));
    format!("images-v{FORMAT_VERSION}-{}", &hash[..16])
}

/// Builds the images into `<cache_dir>/<key>.tmp-<pid>`, then renames it to `dir`. The caller
/// holds the build lock.
fn build(cache_dir: &Path, key: &str, dir: &Path) {
    // Leftovers of builders that died: nobody else builds this key while we hold the lock.
    let tmp_prefix = format!("{key}.tmp-");
    for entry in fs::read_dir(cache_dir).expect("list image cache").flatten() {
        if entry.file_name().to_string_lossy().starts_with(&tmp_prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let tmp = cache_dir.join(format!("{tmp_prefix}{}", std::process::id()));
    fs::create_dir(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    let layout = tmp.join("oci");
    let latest = format!("{}:latest", layout.display());
    let multi = format!("{}:multi", layout.display());
    // Without root, umoci cannot chown on unpack; a rootless bundle (recorded in it) also
    // makes repack store the files as owned by root.
    let rootless: &[&str] = if nix::unistd::geteuid().is_root() {
        &[]
    } else {
        &["--rootless"]
    };

    // Each layer: unpack the image below, change its rootfs, repack the difference. (`umoci
    // insert` would be shorter, but 0.4.7 writes truncated tars: no padding, no end blocks.)
    let layer = |from: &str, to: &str, change: &dyn Fn(&Path) -> io::Result<()>| {
        let bundle = tmp.join("bundle");
        umoci(
            &[&["unpack"], rootless, &["--image", from]].concat(),
            &[bundle.as_os_str()],
        );
        change(&bundle.join("rootfs")).expect("change the image's rootfs");
        umoci(&["repack", "--image", to], &[bundle.as_os_str()]);
        fs::remove_dir_all(&bundle).expect("remove umoci bundle");
    };

    umoci(&["init", "--layout"], &[layout.as_os_str()]);
    umoci(&["new", "--image", &latest], &[]);
    layer(&latest, &latest, &make_rootfs);
    let mut config = vec!["config", "--image", &latest];
    for arg in CMD {
        config.extend(["--config.cmd", arg]);
    }
    config.extend(["--config.env", PATH_ENV, "--config.workingdir", "/"]);
    umoci(&config, &[]);

    // Layer 2 adds two files to /etc; layer 3 deletes one of them again (a whiteout).
    layer(&latest, &multi, &|rootfs| {
        fs::write(rootfs.join(&LAYER2_FILE[1..]), LAYER2_CONTENT)?;
        fs::write(rootfs.join(&REMOVED_FILE[1..]), "deleted by layer 3\n")
    });
    layer(&multi, &multi, &|rootfs| {
        fs::remove_file(rootfs.join(&REMOVED_FILE[1..]))
    });

    // The same image claiming to be arm64, for the second entry of manifest lists.
    let arm64 = [
        "config",
        "--image",
        &latest,
        "--tag",
        "arm64",
        "--architecture",
        "arm64",
    ];
    umoci(&arm64, &[]);
    umoci(&["gc", "--layout"], &[layout.as_os_str()]);

    let archive = tmp.join("busybox.tar");
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .args([
            format!("oci:{latest}"),
            format!("docker-archive:{}:{REPOSITORY}:latest", archive.display()),
        ]));

    // umoci writes blobs 0600; tests that drop privileges read them too.
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&tmp));
    fs::rename(&tmp, dir)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), dir.display()));
}

/// The busybox userland: `/bin/busybox` and a symlink per applet, users, `/tmp`.
fn make_rootfs(rootfs: &Path) -> io::Result<()> {
    let dirs = [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ];
    for (dir, mode) in dirs {
        let path = rootfs.join(dir);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    fs::copy(BUSYBOX, rootfs.join("bin/busybox"))?;
    fs::set_permissions(
        rootfs.join("bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )?;
    let list = Command::new(BUSYBOX).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            symlink("busybox", rootfs.join("bin").join(applet))?;
        }
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnobody:x:65534:\n")?;
    Ok(())
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').expect("digest is algorithm:hex");
    layout.join("blobs").join(algorithm).join(hex)
}

fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn umoci(args: &[&str], paths: &[&std::ffi::OsStr]) {
    run(Command::new("umoci").args(args).args(paths));
}

/// Runs `cmd` to completion; panics with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
