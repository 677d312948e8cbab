//! The shape of `api/src`, kept by a test: layers whose imports point one way, and files of a
//! readable size.
//!
//! Each top-level module belongs to a layer; a module may import from lower layers only (and
//! from itself). Two modules on one layer do not import each other, so `pos` and `backoffice`
//! stay independent and anything both need moves down. Test code (`#[cfg(test)]` sections) is
//! exempt: a test may build what it needs from anywhere.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lowest first. The README of each layer is ARCHITECTURE.md's `api` section.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["wire"],
    &["store", "keyd", "config"],
    &["domain"],
    &["auth"],
    &["request"],
    &["pos", "backoffice", "portal"],
    &["http", "housekeeping", "webhooks"],
    &["app"],
    &["lib", "main"],
];

/// Exported macros and the module that defines them.
const MACROS: &[(&str, &str)] = &[
    ("body", "wire"),
    ("string_field", "wire"),
    ("secret_string_field", "wire"),
    ("enum_field", "wire"),
    ("reply", "wire"),
];

/// Files longer than this many lines of code (tests and comments not counted) need a reason.
const MAX_CODE_LINES: usize = 800;

/// Files still over the limit, each with why (and what would split it).
const LONG_FILES: &[(&str, &str)] = &[];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` has no layer in LAYERS"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file of `api/src`: its path below `src` and its text.
fn sources() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f.strip_prefix(&root).unwrap().to_owned(), text)
        })
        .collect()
}

/// The file's text up to its tests.
fn non_test(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

fn code_lines(text: &str) -> usize {
    non_test(text)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .count()
}

#[test]
fn imports_point_down_the_layers() {
    let mut wrong = BTreeMap::new();
    for (rel, text) in sources() {
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        for line in non_test(&text).lines() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let used: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used.is_empty() || used == module {
                    continue;
                }
                // An exported macro is named from the crate root (`crate::body!`, `use
                // crate::reply;`); it belongs where it is defined.
                let is_macro = line[at + 7 + used.len()..].starts_with('!')
                    || MACROS.iter().any(|(m, _)| *m == used);
                let used = if is_macro {
                    MACROS
                        .iter()
                        .find(|(m, _)| *m == used)
                        .unwrap_or_else(|| panic!("macro `{used}!` has no home in MACROS"))
                        .1
                        .to_owned()
                } else {
                    used
                };
                if used == module {
                    continue;
                }
                if layer(&used) >= layer(&module) {
                    wrong
                        .entry(format!("{} -> {used}", rel.display()))
                        .or_insert_with(|| line.trim().to_owned());
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up or sideways:\n{wrong:#?}"
    );
}

#[test]
fn files_stay_readable() {
    let mut long = Vec::new();
    for (rel, text) in sources() {
        let rel = rel.to_string_lossy().into_owned();
        let n = code_lines(&text);
        let excused = LONG_FILES.iter().any(|(f, _)| *f == rel);
        if n > MAX_CODE_LINES && !excused {
            long.push(format!("{rel}: {n} lines of code"));
        }
        if excused && n <= MAX_CODE_LINES {
            long.push(format!("{rel} is short now ({n}): drop it from LONG_FILES"));
        }
    }
    assert!(long.is_empty(), "{long:#?}");
}
