//! Link the binary with `link.x` (load address, sections, the boot stack). Only the binary:
//! the library (the syndrome decoder) is also tested on the host.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-link-search={dir}");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rerun-if-changed=link.x");
}
