//! Cold pull of the busybox test images from a real local registry (`docker-registry` on
//! loopback): each run into a fresh, empty store. Prints a table; not a test.
//!
//! `cargo bench -p cairn-oci --bench pull`

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cairn_oci::reference::Reference;
use cairn_oci::registry::{Progress, Puller, RegistryConfig};
use cairn_oci::store::Store;
use cairn_testsupport::images::{self, TestImages};
use cairn_testsupport::registry::Registry;
use cairn_testsupport::ServiceDir;

const RUNS: usize = 20;

fn main() {
    let registry = Registry::start();
    TestImages::get().push_to(&registry, None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = RegistryConfig {
        insecure: vec![registry.addr().to_string()],
        ..Default::default()
    };
    println!(
        "{:<28} {:>8} {:>10} {:>10} {:>10}",
        "image", "runs", "median", "min", "max"
    );
    for tag in ["latest", "multi", images::LIST_TAG] {
        let reference =
            Reference::parse(&format!("{}/{}:{tag}", registry.addr(), images::REPOSITORY)).unwrap();
        let mut times: Vec<Duration> = Vec::new();
        let mut bytes = 0;
        for _ in 0..RUNS {
            let dir = ServiceDir::new("oci-bench");
            let store = Store::open(dir.path().join("store")).unwrap();
            let puller = Puller::new(store, config.clone()).unwrap();
            let start = Instant::now();
            let pulled = rt
                .block_on(puller.pull(&reference, &Progress::none()))
                .unwrap();
            times.push(start.elapsed());
            bytes = pulled.image.layers.iter().map(|l| l.size).sum::<u64>();
        }
        times.sort();
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!(
            "{:<28} {:>8} {:>10} {:>10} {:>10}   ({} layer bytes)",
            format!("cairn/busybox:{tag} (cold)"),
            RUNS,
            ms(times[RUNS / 2]),
            ms(times[0]),
            ms(times[RUNS - 1]),
            bytes
        );
    }
}
