//! Compiles the eBPF programs (keepalive-ebpf) with the nightly toolchain and
//! bpf-linker, leaving the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs.

use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir).join("../keepalive-ebpf");
    let root = root.to_str().context("non-UTF-8 path to keepalive-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "keepalive-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install rust-src and bpf-linker")
}
