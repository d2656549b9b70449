//! The oci crate end to end, as root: the busybox test images pulled from the real local
//! registry (anonymously and with basic auth, including a manifest list) or imported from a
//! `docker save` tarball and an OCI layout, their layers extracted through the layer cache,
//! stacked with overlayfs, rendered into a bundle from the image config and run through
//! libcontainer. Each container must print the image's known output; a second run of the same
//! image must need neither the registry (it is stopped by then) nor any extraction.
//!
//! Every run checks that it leaves nothing behind: no container state, no cgroup, no mount
//! under the test's directory.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use base64::prelude::BASE64_STANDARD;
use base64::Engine;
use cairn_oci::extract::LayerCache;
use cairn_oci::import::{import_docker_archive, import_oci_layout};
use cairn_oci::manifest::Platform;
use cairn_oci::reference::Reference;
use cairn_oci::registry::{Credential, Progress, PullError, PullStats, Puller, RegistryConfig};
use cairn_oci::rootfs::{Rootfs, RootfsKind, RootfsMode, RootfsOptions};
use cairn_oci::runtime::{v1_leaf_dirs, ExitStatus, Output, Runtime, RuntimeConfig};
use cairn_oci::spec::{build_spec, write_bundle, ContainerSettings};
use cairn_oci::store::{Image, Store};
use cairn_testsupport::images::{
    self, TestImages, EXPECTED_OUTPUT, LAYER2_CONTENT, LAYER2_FILE, REMOVED_FILE, WHITEOUT_ENTRY,
};
use cairn_testsupport::registry::Registry;
use cairn_testsupport::{require_command, require_root, ServiceDir};
use support::{mounts_under, CgroupParent};

/// libcontainer forks with raw clone(2) (no fork handlers): one test at a time runs
/// anything, so no other thread holds a lock while a container is created.
static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

const USER: &str = "cairn";
const PASSWORD: &str = "s3cret-pull";
/// The tags pulled from the registry: one layer, three layers with a whiteout, and a
/// manifest list of amd64 and arm64 images.
const PULLED_TAGS: [&str; 3] = ["latest", "multi", images::LIST_TAG];

struct Fixture {
    // Field order is drop order: the cgroup parent goes before the directory.
    cgroups: CgroupParent,
    runtime: Runtime,
    cache: LayerCache,
    dir: ServiceDir,
    _serial: MutexGuard<'static, ()>,
}

/// What one container run gave.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// Layers unpacked by this run (not found in the layer cache).
    extracted: usize,
}

fn fixture(test: &str, registry: bool) -> Option<Fixture> {
    let programs: &[&str] = if registry {
        &["skopeo", "umoci", "docker-registry", "htpasswd"]
    } else {
        &["skopeo", "umoci"]
    };
    if !require_root(test) || !programs.iter().all(|p| require_command(test, p)) {
        return None;
    }
    let serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = ServiceDir::new(&format!("oci-e2e-{test}"));
    let cgroups = CgroupParent::new(test);
    let runtime = Runtime::new(RuntimeConfig {
        state_root: dir.path().join("state"),
        cgroup_parent: cgroups.path.clone(),
    })
    .unwrap();
    Some(Fixture {
        cgroups,
        runtime,
        cache: LayerCache::new(dir.path().join("cache")),
        dir,
        _serial: serial,
    })
}

impl Fixture {
    fn store(&self) -> Store {
        Store::open(self.dir.path().join("store")).unwrap()
    }

    /// Runs `image` end to end with `args` (or its own command): extracts its layers through
    /// the cache, assembles an overlay rootfs, renders the bundle from the image config,
    /// creates, starts and waits for the container, then deletes it and tears the rootfs
    /// down, checking that no state, cgroup or mount is left.
    fn run(&self, image: &Image, args: Option<&[&str]>) -> Run {
        let id = format!(
            "e2e{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut extracted = 0;
        let layers: Vec<_> = image
            .layers
            .iter()
            .map(|layer| {
                let (dir, stats) = self
                    .cache
                    .extract_with_stats(&layer.path, &layer.media_type, &layer.digest.to_string())
                    .unwrap();
                extracted += usize::from(stats.is_some());
                dir
            })
            .collect();
        let container_dir = self.dir.path().join("containers").join(&id);
        let opts = RootfsOptions {
            mode: RootfsMode::Overlay,
            readonly: false,
        };
        let rootfs = Rootfs::assemble(&layers, &container_dir, &opts).unwrap();
        assert_eq!(rootfs.kind(), RootfsKind::Overlay);

        let settings = ContainerSettings {
            args: args.map(|a| a.iter().map(ToString::to_string).collect()),
            cgroups_path: Some(self.runtime.cgroup_path_for(&id)),
            ..ContainerSettings::default()
        };
        let spec = build_spec(&image.config, rootfs.path(), &settings).unwrap();
        let bundle = self.dir.path().join("bundles").join(&id);
        write_bundle(&bundle, &spec).unwrap();
        let out = self.dir.path().join(format!("{id}.out"));
        let err = self.dir.path().join(format!("{id}.err"));
        let mut container = self
            .runtime
            .create(
                &id,
                &bundle,
                &Output::File(out.clone()),
                &Output::File(err.clone()),
            )
            .unwrap();
        container.start().unwrap();
        let status = container.wait().unwrap();
        container.delete(false).unwrap();
        rootfs.destroy().unwrap();

        assert_eq!(self.runtime.list().unwrap(), Vec::<String>::new());
        let leaf = self.runtime.cgroup_path_for(&id);
        assert_eq!(v1_leaf_dirs(&leaf), Vec::<PathBuf>::new());
        assert!(!container_dir.exists(), "rootfs directory left");
        assert_eq!(mounts_under(self.dir.path()), Vec::<PathBuf>::new());
        Run {
            status,
            stdout: fs::read_to_string(out).unwrap_or_default(),
            stderr: fs::read_to_string(err).unwrap_or_default(),
            extracted,
        }
    }

    /// Runs `image` with its own command: it must print the known output and exit 0.
    /// Returns how many layers had to be extracted.
    fn assert_runs(&self, image: &Image) -> usize {
        let run = self.run(image, None);
        assert_eq!(
            (run.status, run.stdout.as_str()),
            (ExitStatus::Exited(0), EXPECTED_OUTPUT),
            "{}: stderr {:?}",
            image.reference,
            run.stderr
        );
        run.extracted
    }

    /// Inside a container of the `multi` image, the second layer's file is there and the
    /// file its third layer deleted is not (nor is the whiteout that deletes it).
    fn assert_layers_stacked(&self, image: &Image) {
        let dir = Path::new(REMOVED_FILE).parent().unwrap();
        let script = format!(
            "cat {LAYER2_FILE} && ls -1a {} && test ! -e {REMOVED_FILE}",
            dir.display()
        );
        let run = self.run(image, Some(&["/bin/sh", "-c", &script]));
        assert_eq!(run.status, ExitStatus::Exited(0), "stderr {:?}", run.stderr);
        let listing = run
            .stdout
            .strip_prefix(LAYER2_CONTENT)
            .unwrap_or_else(|| panic!("{LAYER2_FILE} content: {:?}", run.stdout));
        let names: Vec<&str> = listing.lines().collect();
        let name = |path: &str| {
            Path::new(path)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert!(
            names.contains(&"passwd"),
            "listing of {}: {names:?}",
            dir.display()
        );
        assert!(!names.contains(&name(REMOVED_FILE).as_str()), "{names:?}");
        assert!(!names.contains(&name(WHITEOUT_ENTRY).as_str()), "{names:?}");
    }

    /// Runs `image` again: every layer is a cache hit, and the output is the same.
    fn assert_reruns_from_cache(&self, image: &Image) {
        assert_eq!(
            self.assert_runs(image),
            0,
            "{}: extracted again",
            image.reference
        );
    }

    /// Checks that no mount and no cgroup is left; dropping removes the cgroup parent.
    fn finish(self) {
        assert_eq!(mounts_under(self.dir.path()), Vec::<PathBuf>::new());
        assert_eq!(self.cgroups.leftovers(), Vec::<PathBuf>::new());
    }
}

/// Runs `f` on a fresh single-threaded tokio runtime, gone when this returns: no runtime
/// thread outlives a pull into the forks of container creation.
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn reference(registry: &Registry, tag: &str) -> Reference {
    Reference::parse(&format!("{}/{}:{tag}", registry.addr(), images::REPOSITORY)).unwrap()
}

fn insecure(registry: &Registry) -> RegistryConfig {
    RegistryConfig {
        insecure: vec![registry.addr().to_string()],
        ..RegistryConfig::default()
    }
}

/// Pulls each of `refs` with a fresh puller, returning the images and what each pull did.
fn pull_all(store: &Store, config: RegistryConfig, refs: &[Reference]) -> Vec<(Image, PullStats)> {
    block_on(async {
        let puller = Puller::new(store.clone(), config).unwrap();
        let mut out = Vec::new();
        for r in refs {
            let pulled = puller.pull(r, &Progress::none()).await;
            let pulled = pulled.unwrap_or_else(|e| panic!("pull {r}: {e}"));
            out.push((pulled.image, pulled.stats));
        }
        out
    })
}

/// The pulled images run; then, with the registry stopped, `ensure` finds each in the store
/// without a request and a second run extracts nothing.
fn run_pulled_then_offline(
    fx: &Fixture,
    store: &Store,
    registry: Registry,
    config: RegistryConfig,
    pulled: &[Image],
) {
    for image in pulled {
        fx.assert_runs(image);
    }
    // The list resolves to the amd64 entry, the same image as `latest`.
    assert_eq!(pulled[2].manifest_digest, pulled[0].manifest_digest);
    fx.assert_layers_stacked(&pulled[1]);

    // Pulling again fetches manifests (a tag may move) but no blob.
    let refs: Vec<Reference> = pulled.iter().map(|i| i.reference.clone()).collect();
    for (image, stats) in pull_all(store, config.clone(), &refs) {
        assert_eq!(stats.blobs_downloaded, 0, "{}: {stats:?}", image.reference);
    }

    drop(registry);
    let again = block_on(async {
        let puller = Puller::new(store.clone(), config).unwrap();
        let mut out = Vec::new();
        for r in &refs {
            let ensured = puller.ensure(r, &Progress::none()).await;
            out.push(ensured.unwrap_or_else(|e| panic!("ensure {r} offline: {e}")));
        }
        out
    });
    for (ensured, first) in again.iter().zip(pulled) {
        assert_eq!(ensured.stats, PullStats::default(), "{}", first.reference);
        assert_eq!(ensured.image.manifest_digest, first.manifest_digest);
        fx.assert_reruns_from_cache(&ensured.image);
    }
}

/// The `auth` value of a Docker `config.json` entry: base64 of `user:password`.
fn base64_basic(user: &str, password: &str) -> String {
    BASE64_STANDARD.encode(format!("{user}:{password}"))
}

#[test]
fn registry_anonymous_pulls_run_as_root() {
    let Some(fx) = fixture("anonymous", true) else {
        return;
    };
    let registry = Registry::start();
    let pushed = TestImages::get().push_to(&registry, None);
    let store = fx.store();
    let refs = PULLED_TAGS.map(|t| reference(&registry, t));
    let config = insecure(&registry);
    let pulled: Vec<Image> = pull_all(&store, config.clone(), &refs)
        .into_iter()
        .map(|(image, _)| image)
        .collect();
    assert_eq!(pulled[0].manifest_digest.to_string(), pushed.latest.digest);
    assert_eq!(pulled[1].manifest_digest.to_string(), pushed.multi.digest);
    run_pulled_then_offline(&fx, &store, registry, config, &pulled);
    fx.finish();
}

#[test]
fn registry_basic_auth_pulls_run_as_root() {
    let Some(fx) = fixture("basic-auth", true) else {
        return;
    };
    let registry = Registry::start_with_basic_auth(USER, PASSWORD);
    TestImages::get().push_to(&registry, Some((USER, PASSWORD)));
    let store = fx.store();
    let refs = PULLED_TAGS.map(|t| reference(&registry, t));

    // Without credentials the registry refuses, and nothing is stored.
    let anonymous = block_on(async {
        let puller = Puller::new(store.clone(), insecure(&registry)).unwrap();
        puller.pull(&refs[0], &Progress::none()).await
    });
    assert!(
        matches!(anonymous, Err(PullError::Unauthorized { .. })),
        "{anonymous:?}"
    );
    assert!(store.images().unwrap().is_empty());

    // `latest` and `multi` with credentials in the config, the list with a docker config.json.
    let mut with_creds = insecure(&registry);
    with_creds.credentials.insert(
        registry.addr().to_string(),
        Credential {
            username: USER.into(),
            password: PASSWORD.into(),
        },
    );
    let mut pulled: Vec<Image> = pull_all(&store, with_creds, &refs[..2])
        .into_iter()
        .map(|(image, _)| image)
        .collect();
    let docker_config = fx.dir.path().join("config.json");
    let auth = base64_basic(USER, PASSWORD);
    fs::write(
        &docker_config,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            registry.addr()
        ),
    )
    .unwrap();
    let from_file = insecure(&registry)
        .with_docker_config(&docker_config)
        .unwrap();
    pulled.extend(
        pull_all(&store, from_file.clone(), &refs[2..])
            .into_iter()
            .map(|(image, _)| image),
    );
    run_pulled_then_offline(&fx, &store, registry, from_file, &pulled);
    fx.finish();
}

#[test]
fn imported_docker_archive_runs_as_root() {
    let Some(fx) = fixture("docker-archive", false) else {
        return;
    };
    let store = fx.store();
    let imported = import_docker_archive(&store, &TestImages::get().docker_archive, None).unwrap();
    assert_eq!(imported.len(), 1);
    let image = &imported[0];
    assert_eq!(fx.assert_runs(image), images::LATEST_LAYERS);
    let stored = store.image(&image.reference).unwrap().unwrap();
    fx.assert_reruns_from_cache(&stored);
    fx.finish();
}

#[test]
fn imported_oci_layout_runs_as_root() {
    let Some(fx) = fixture("oci-layout", false) else {
        return;
    };
    let store = fx.store();
    let name = Reference::parse(images::REPOSITORY).unwrap();
    let layout = &TestImages::get().oci_layout;
    let imported = import_oci_layout(&store, layout, &name, &Platform::default()).unwrap();
    let tagged = |tag: &str| {
        imported
            .iter()
            .find(|i| i.reference.tag() == Some(tag))
            .unwrap_or_else(|| panic!("tag {tag} not imported"))
    };
    let (latest, multi) = (tagged("latest"), tagged("multi"));
    assert_eq!(fx.assert_runs(latest), images::LATEST_LAYERS);
    // The bottom layer is shared with `latest`: only the other two are new.
    assert_eq!(fx.assert_runs(multi), images::MULTI_LAYERS - 1);
    fx.assert_layers_stacked(multi);
    for image in [latest, multi] {
        let stored = store.image(&image.reference).unwrap().unwrap();
        fx.assert_reruns_from_cache(&stored);
    }
    fx.finish();
}
