//! `include/wscap.h` is generated from this crate by cbindgen and committed. This test
//! generates it again, with the pinned cbindgen crate, and fails when the committed copy differs.
//!
//! Regenerate: `WSCAP_BLESS=1 cargo test -p wscap-ffi --test header`.

use std::path::Path;

fn generate() -> String {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("ffi/cbindgen.toml parses");
    // `with_src` parses ffi/src/lib.rs and the modules it declares, without running cargo
    // (a nested cargo could wait on the build lock of the cargo running this test).
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn committed_header_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/wscap.h");
    let generated = generate();
    if std::env::var_os("WSCAP_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/wscap.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/wscap.h is stale (first difference at line {}).\n\
             Regenerate it with:\n    WSCAP_BLESS=1 cargo test -p wscap-ffi --test header\n\
             and commit it.",
            first + 1
        );
    }
}

#[test]
fn header_declares_every_entry_point() {
    let header = generate();
    let src = concat!(
        include_str!("../src/lib.rs"),
        include_str!("../src/global.rs")
    );
    let exported: Vec<&str> = src
        .split("pub extern \"C\" fn ")
        .skip(1)
        .map(|rest| rest.split('(').next().unwrap())
        .collect();
    assert!(exported.len() >= 23, "{exported:?}");
    for name in exported {
        assert!(
            header.contains(&format!("{name}(")),
            "{name} is missing from the header"
        );
    }
}
