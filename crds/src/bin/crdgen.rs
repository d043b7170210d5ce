//! Writes the CRD manifests generated from the Rust types, so the YAML users
//! apply can never drift from what the operator and sidecar understand.
//!
//! Usage: `crdgen [--check] [REPO_ROOT]`. Without `--check` it (re)writes
//! `config/crd/bases/*.yaml` and `charts/cardgate/crds/*.yaml`; with it, it
//! exits non-zero when a file on disk differs.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut root = PathBuf::from(".");
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [REPO_ROOT]");
                return ExitCode::SUCCESS;
            }
            other => root = PathBuf::from(other),
        }
    }
    let files = match cardgate_crds::v1alpha1::crd_files() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = 0;
    for (rel, content) in files {
        let path = root.join(&rel);
        if check {
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            if on_disk != content {
                eprintln!("crdgen: {} is out of date; run `make crds`", path.display());
                stale += 1;
            }
            continue;
        }
        if let Some(dir) = path.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            eprintln!("crdgen: cannot create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        if let Err(e) = std::fs::write(&path, content) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    if stale > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
