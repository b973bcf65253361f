//! [`TempDir`]: a fresh directory for a test, removed on drop.
//!
//! Owns: naming the directory so that concurrent tests and processes never share
//! one, and removing it. Must never: be used by production code.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh, empty directory, removed with everything in it when dropped, also when
/// the test that holds it fails (a panic unwinds through the drop).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `weir-{tag}-{pid}-{n}` under the system temp dir.
    ///
    /// # Panics
    /// When the directory cannot be created: a test cannot go on without it.
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
            .unwrap_or_else(|e| panic!("temp dir for {tag}: {e}"))
    }

    /// Creates `weir-{tag}-{pid}-{n}` under `base`; an older directory of that name
    /// (a process with the same pid that did not clean up) is removed first.
    ///
    /// # Errors
    /// The directory could not be created.
    pub fn new_in(base: &Path, tag: &str) -> io::Result<TempDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // Relaxed: only uniqueness matters.
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("weir-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// The directory's path: `&dir` goes where a `&Path` does.
impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dir_is_fresh_and_gone_after_its_drop_even_in_a_panic() {
        let a = TempDir::new("t");
        let b = TempDir::new("t");
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir() && std::fs::read_dir(a.path()).unwrap().next().is_none());
        std::fs::write(a.join("f"), b"x").unwrap();
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());
        let kept = b.path().to_owned();
        let unwound = std::panic::catch_unwind(move || {
            let _b = b;
            panic!("a failing test");
        });
        assert!(unwound.is_err());
        assert!(!kept.exists(), "removed while unwinding");
    }
}
