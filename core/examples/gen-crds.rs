//! Writes the CRD manifests generated from Spur's Rust types into the
//! directory given as the first argument (`make crds` runs it with
//! `deploy/crds`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: gen-crds DIRECTORY")?);
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in spur_core::ippool::crd_manifests()? {
        let path = dir.join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
