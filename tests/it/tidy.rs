//! Architecture invariants, checked on the source tree (rust-analyzer's tidy test in spirit):
//! every module opens with a `//!` note, `api/` never reaches into `storage`, `services/` never
//! names actix, and `storage/` knows nothing of HTTP or services.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    for file in rust_files(&src()) {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} must open with a `//!` comment saying what it owns",
            file.display()
        );
    }
}

fn assert_no_mention(dir: &str, forbidden: &[&str]) {
    for file in rust_files(&src().join(dir)) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                assert!(
                    !code.contains(word),
                    "{}:{}: `{word}` crosses a layer boundary: {line}",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}

#[test]
fn api_never_touches_storage() {
    assert_no_mention("api", &["crate::storage", "rocksdb"]);
}

#[test]
fn services_never_name_actix() {
    assert_no_mention("services", &["actix"]);
}

#[test]
fn storage_knows_nothing_above_it() {
    assert_no_mention("storage", &["actix", "crate::services", "crate::api", "ruma"]);
}
