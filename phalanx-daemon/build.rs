//! Builds the kernel programs (phalanx-ebpf) into OUT_DIR with aya-build.
//!
//! The nightly is pinned by date so its LLVM matches bpf-linker's (LLVM 22).
//! With `AYA_BUILD_SKIP=1` the kernel object is replaced by an empty file so
//! the offline parts (analyze, stitch, tests without root) build on stable
//! alone; `phalanx run` then reports that the binary carries no programs.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Nightly toolchain used for the kernel crate (see TOOLCHAIN facts in README).
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "phalanx-ebpf")
        .ok_or_else(|| anyhow!("phalanx-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
        .as_str();
    let ebpf_package = Package {
        name: name.as_str(),
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::Custom(EBPF_TOOLCHAIN))?;
    // aya-build watches the kernel crate only; the record layout and the
    // constants the programs compile in live in phalanx-common.
    let common = std::path::Path::new(root_dir).join("../phalanx-common");
    println!("cargo:rerun-if-changed={}", common.display());

    let out =
        std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?).join("phalanx");
    if !out.exists() {
        std::fs::write(&out, [])
            .with_context(|| format!("writing placeholder {}", out.display()))?;
    }
    Ok(())
}
