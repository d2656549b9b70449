//! Links `cairn-supervisor` as a position-dependent executable: one runs per container, and
//! in a PIE every page of relocated data (vtables, `.data.rel.ro`) is written at start-up and
//! so becomes private memory (~700 KiB here); linked at a fixed address those pages stay clean
//! and are shared by every supervisor. The code is still compiled position-independent, which
//! links into a fixed-address executable unchanged.

fn main() {
    println!("cargo:rustc-link-arg-bin=cairn-supervisor=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
