//! Links `cairn-supervisor` as a position-dependent executable: one runs per container, and
//! in a PIE every page of relocated data (vtables, `.data.rel.ro`) is written at start-up and
//! so becomes private memory (~700 KiB here); linked at a fixed address those pages stay clean
//! and are shared by every supervisor. The code is still compiled position-independent, which
//! links into a fixed-address executable unchanged.
//!
//! Not for static builds (`+crt-static`, the cgroup v2 VM's test binaries): rustc links those
//! as static PIEs, and `-no-pie` on top yields an executable that asks for the dynamic loader
//! and crashes in it.

fn main() {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bin=cairn-supervisor=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
