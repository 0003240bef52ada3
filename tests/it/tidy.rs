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

/// The file's code with comments cut, lines kept (so offsets map to line numbers).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules of the crate that `code` names, with their line numbers: from plain
/// paths (`crate::storage::Db`) and from grouped imports (`use crate::{api, storage::Db}`,
/// nested groups and line breaks included).
fn crate_modules(code: &str) -> Vec<(usize, String)> {
    let line_of = |offset: usize| code[..offset].matches('\n').count() + 1;
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.trim_start().strip_prefix('{') {
            // Split the group's top level on commas.
            let (mut depth, mut item_start) = (0usize, 0usize);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.push((line_of(at), ident(&group[item_start..i])));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push((line_of(at), ident(&group[item_start..i])));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.push((line_of(at), ident(rest)));
        }
    }
    found.retain(|(_, m)| !m.is_empty());
    found
}

/// Fails when a file under `src/<dir>` names one of the crate's `modules` (in any path or
/// grouped import) or contains one of `words` in its code.
fn assert_no_mention(dir: &str, modules: &[&str], words: &[&str]) {
    for file in rust_files(&src().join(dir)) {
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for (line, module) in crate_modules(&code) {
            assert!(
                !modules.contains(&module.as_str()),
                "{}:{line}: `crate::{module}` crosses a layer boundary",
                file.display()
            );
        }
        for (n, line) in code.lines().enumerate() {
            for word in words {
                assert!(
                    !line.contains(word),
                    "{}:{}: `{word}` crosses a layer boundary: {line}",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}

#[test]
fn the_layer_check_sees_grouped_imports() {
    let code = "use crate::{\n    Error,\n    storage::{Db, Batch},\n};\nuse crate::api::x; // crate::services\n";
    let modules: Vec<String> = crate_modules(&code_of(code)).into_iter().map(|(_, m)| m).collect();
    assert_eq!(modules, ["Error", "storage", "api"]);
    assert_eq!(crate_modules("let x = crate::{a, b::{c, d}, e};")[2].1, "e");
}

#[test]
fn api_never_touches_storage() {
    assert_no_mention("api", &["storage"], &["rocksdb"]);
}

#[test]
fn services_never_name_actix() {
    assert_no_mention("services", &[], &["actix"]);
}

#[test]
fn storage_knows_nothing_above_it() {
    assert_no_mention("storage", &["services", "api"], &["actix", "ruma"]);
}
