//! Every committed fuzz corpus file, replayed through its target's check
//! (`weir_core::testing::fuzz`), on stable and without cargo-fuzz: a crash or a
//! property failure found once and committed as a seed stays fixed.

use std::path::Path;

use weir_core::testing::fuzz::{TARGETS, check_target};

fn corpus_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn every_committed_corpus_file_passes_its_targets_check() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for target in TARGETS {
        let dir = corpus_root().join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            failures.push(format!("{target}: no corpus at {}", dir.display()));
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        if files.is_empty() {
            failures.push(format!("{target}: empty corpus"));
        }
        for file in files {
            let data = std::fs::read(&file).unwrap();
            replayed += 1;
            if let Err(e) = check_target(target, &data) {
                failures.push(format!("{}: {e}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(replayed >= TARGETS.len());
}

#[test]
fn every_corpus_directory_belongs_to_a_known_target() {
    for entry in std::fs::read_dir(corpus_root()).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.contains(&name.as_ref()),
            "fuzz/corpus/{name} has no check in weir_core::testing::fuzz"
        );
    }
}
