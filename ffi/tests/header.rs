//! The committed C header (`include/weir.h`) must be what cbindgen generates from the
//! current sources, so C users never compile against a stale declaration.

use std::path::PathBuf;

#[test]
fn committed_header_matches_a_fresh_generation() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include/weir.h");
    if std::env::var_os("WEIR_BLESS").is_some() {
        std::fs::write(&path, weir_ffi::GENERATED_HEADER).expect("include/weir.h is writable");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == weir_ffi::GENERATED_HEADER,
        "include/weir.h differs from the header generated from ffi/src; regenerate it with \
         `WEIR_BLESS=1 cargo test -p weir-ffi --test header` and commit it"
    );
}
