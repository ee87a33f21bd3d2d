//! Unit tests' files: a directory of the test process's own, with the files a test needs.

use std::path::PathBuf;

/// A fresh directory under the system's temp dir, named after `tag` and this process, holding
/// `files` (name, content).
pub fn scratch_dir(tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    dir
}
