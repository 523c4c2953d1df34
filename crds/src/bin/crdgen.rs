//! Writes the Switchyard CRD YAML into `crds/` and `charts/switchyard/crds/`.
//!
//! Usage: `cargo run -p switchyard-crds --bin crdgen [-- --check] [--root DIR]`
//! With `--check`, writes nothing and exits 1 if a file differs.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use switchyard_crds::crdgen;

#[derive(Parser)]
#[command(about = "Render Switchyard's CRDs from the Rust types")]
struct Args {
    /// Report files that differ instead of writing them; exit 1 on drift.
    #[arg(long)]
    check: bool,
    /// Repository root (default: the workspace this binary was built from).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    root: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = crdgen::render().context("rendering CRDs")?;
    let mut drift = Vec::new();
    for dir in crdgen::OUTPUT_DIRS {
        let dir = args.root.join(dir);
        for (name, yaml) in &files {
            let path = dir.join(name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == *yaml {
                continue;
            }
            if args.check {
                drift.push(path.display().to_string());
            } else {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    if !drift.is_empty() {
        bail!(
            "CRD files differ from the Rust types: {}\nrun `cargo run -p switchyard-crds --bin crdgen` and commit the result",
            drift.join(", ")
        );
    }
    Ok(())
}
