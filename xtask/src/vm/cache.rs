//! The VM cache folder (downloaded kernels, built fixtures, run logs).

use std::path::PathBuf;

/// `<repo>/.vm-cache` unless `TSM_VM_CACHE` is set.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TSM_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::util::root().join(".vm-cache"))
}

/// Keep only the newest `keep` run directories.
pub fn prune_runs(keep: usize) {
    let Ok(rd) = std::fs::read_dir(cache_dir().join("runs")) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    dirs.sort();
    if dirs.len() > keep {
        for d in &dirs[..dirs.len() - keep] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
