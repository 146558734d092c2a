//! Compiles the eBPF programs (keepalive-ebpf) with the nightly toolchain and
//! bpf-linker, leaving the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs. The objects' DWARF is
//! dropped before they are embedded (see [`strip_dwarf`]).

use std::path::Path;

use anyhow::Context as _;
use object::build::elf::{Builder, SectionData};

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
    .context("building the eBPF programs failed; run `cargo xtask setup` to install rust-src and bpf-linker")?;
    let out = std::env::var("OUT_DIR")?;
    for name in ["keepalive", "keepalive-floor"] {
        strip_dwarf(&Path::new(&out).join(name))?;
    }
    Ok(())
}

/// Drops an object's DWARF (`.debug_*` and their relocation sections),
/// keeping its BTF. bpf-linker makes the BTF from the DWARF (hence
/// `debug = 2`), but nothing reads the DWARF after: aya loads programs,
/// maps and BTF. It is ~85% of the object, and aya's parser collects the
/// relocations of every section, DWARF's too: embedded, it cost every kato
/// process about a megabyte of memory for nothing.
fn strip_dwarf(path: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut b = Builder::read(&*data).with_context(|| format!("parsing {}", path.display()))?;
    let dwarf: Vec<_> = b
        .sections
        .iter()
        .filter(|s| s.name.starts_with(b".debug_"))
        .map(object::build::elf::Section::id)
        .collect();
    for s in &mut b.sections {
        let target = s
            .sh_info_section
            .filter(|_| s.sh_type == object::elf::SHT_REL);
        if dwarf.contains(&s.id()) || target.is_some_and(|t| dwarf.contains(&t)) {
            s.delete = true;
        }
    }
    b.delete_orphans();
    // bpf-linker names sections from the symbols' string table; the
    // writer wants a table of section names of its own.
    if !b
        .sections
        .iter()
        .any(|s| matches!(s.data, SectionData::SectionString))
    {
        let s = b.sections.add();
        s.name = (&b".shstrtab"[..]).into();
        s.sh_type = object::elf::SHT_STRTAB;
        s.sh_addralign = 1;
        s.data = SectionData::SectionString;
    }
    let mut stripped = Vec::with_capacity(data.len());
    b.write(&mut stripped)
        .with_context(|| format!("writing {} without DWARF", path.display()))?;
    std::fs::write(path, stripped).with_context(|| format!("writing {}", path.display()))
}
