//! The documentation cannot drift silently from the code it cites.
//!
//! Two forms of reference in `docs/*.md` and `README.md` are checked:
//!
//! - a line citation, `` `src/relay/read.rs:146` (`decode`) ``: the file
//!   exists and its line 146 contains `decode`;
//! - a name reference, `` `relay/read.rs: read_frames, decode` ``: the
//!   file (from the root, `src/`, `src/relay/` or `tests/`) exists and
//!   contains each name (a name abbreviated with `…` is not checked).
//!
//! A `path:line` without the name after it is itself an error: every
//! citation says what it points at.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Source extensions a reference can point into.
const SOURCE_EXTENSIONS: [&str; 6] = [".rs", ".toml", ".cfg", ".conf", ".service", ".json"];

#[test]
fn every_citation_in_the_docs_points_at_what_it_names() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (number, line) in text.lines().enumerate() {
            let place = format!("{}:{}", doc.display(), number + 1);
            for (span, after) in code_spans(line) {
                match check_span(span, after) {
                    Ok(true) => checked += 1,
                    Ok(false) => {}
                    Err(problem) => problems.push(format!("{place}: {problem}")),
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "stale references in the docs:\n{}",
        problems.join("\n")
    );
    assert!(
        checked > 50,
        "only {checked} references found: is the parser broken?"
    );
}

/// The markdown files whose references are checked.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.push(Path::new(ROOT).join("README.md"));
    docs.sort();
    docs
}

/// Each inline code span of `line` with the text that follows it.
fn code_spans(line: &str) -> Vec<(&str, &str)> {
    let mut spans = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find('`') {
        let after_open = &rest[open + 1..];
        let Some(close) = after_open.find('`') else {
            break;
        };
        spans.push((&after_open[..close], &after_open[close + 1..]));
        rest = &after_open[close + 1..];
    }
    spans
}

/// Checks one code span; `Ok(true)` when it was a reference.
fn check_span(span: &str, after: &str) -> Result<bool, String> {
    if let Some((path, line)) = line_citation(span) {
        let name = cited_name(after)
            .ok_or_else(|| format!("`{span}` is not followed by the name it cites, as (`name`)"))?;
        let text = read_source(path)?;
        let found = text.lines().nth(line - 1).unwrap_or("");
        if !found.contains(name) {
            let definitions = [
                format!("fn {name}"),
                format!("struct {name}"),
                format!("enum {name}"),
            ];
            let hint = text
                .lines()
                .position(|l| definitions.iter().any(|d| l.contains(d.as_str())))
                .or_else(|| text.lines().position(|l| l.contains(name)))
                .map_or(String::new(), |at| format!(" (it is on line {})", at + 1));
            return Err(format!("`{span}` does not contain `{name}`{hint}"));
        }
        return Ok(true);
    }
    if let Some((path, names)) = name_reference(span) {
        let texts = read_sources(path)?;
        let names: Vec<&str> = names
            .into_iter()
            .filter(|name| !name.contains('…'))
            .collect();
        let missing = |text: &String| {
            names
                .iter()
                .copied()
                .find(|name| !contains_word(text, name))
        };
        if texts.iter().all(|text| missing(text).is_some()) {
            let name = missing(&texts[0]).unwrap_or_default();
            return Err(format!("`{path}` has no `{name}`"));
        }
        return Ok(true);
    }
    Ok(false)
}

/// `path:line`, where path names a source file.
fn line_citation(span: &str) -> Option<(&str, usize)> {
    let (path, line) = span.rsplit_once(':')?;
    let line: usize = line.parse().ok()?;
    is_source_path(path).then_some((path, line))
}

/// The name in ` (`name`)` at the start of `after`.
fn cited_name(after: &str) -> Option<&str> {
    let rest = after.strip_prefix(" (`")?;
    let end = rest.find("`)")?;
    Some(&rest[..end])
}

/// `path: name, name`, where path names a source file.
fn name_reference(span: &str) -> Option<(&str, Vec<&str>)> {
    let (path, names) = span.split_once(": ")?;
    if !is_source_path(path) {
        return None;
    }
    let names: Vec<&str> = names.split(", ").map(str::trim).collect();
    let identifiers = names.iter().all(|name| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '…')
    });
    identifiers.then_some((path, names))
}

fn is_source_path(path: &str) -> bool {
    !path.contains(' ') && SOURCE_EXTENSIONS.iter().any(|ext| path.ends_with(ext))
}

/// Where a path written in the docs may be relative to.
const BASES: [&str; 4] = ["", "src", "src/relay", "tests"];

/// The files `path` may name: from the repository root, `src/`,
/// `src/relay/` or `tests/` (`hostile.rs` is a test suite). Several may
/// exist (`src/registry.rs`, `tests/registry.rs`).
fn read_sources(path: &str) -> Result<Vec<String>, String> {
    let found: Vec<String> = BASES
        .iter()
        .filter_map(|base| std::fs::read_to_string(Path::new(ROOT).join(base).join(path)).ok())
        .collect();
    if found.is_empty() {
        return Err(format!("`{path}` does not exist"));
    }
    Ok(found)
}

/// The file a line citation names: its path is always complete.
fn read_source(path: &str) -> Result<String, String> {
    std::fs::read_to_string(Path::new(ROOT).join(path))
        .map_err(|_| format!("`{path}` does not exist (a line citation needs the full path)"))
}

fn contains_word(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[test]
fn the_checker_catches_a_stale_citation() {
    assert!(check_span("src/relay/read.rs:1", " (`no_such_name_here`)").is_err());
    assert!(check_span("src/relay/read.rs:1", " and more").is_err());
    assert!(check_span("relay/read.rs: no_such_function", "").is_err());
    assert!(check_span("src/no/such/file.rs:3", " (`x`)").is_err());
    assert_eq!(check_span("not a reference", ""), Ok(false));
}
