//! The layout rule of every crate in the workspace: its modules form layers. No module
//! refers to one that refers back to it, directly or through others, and a module takes
//! from the crate root (`lib.rs`, `main.rs`) only what the root re-exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The first path segments named after each `crate::` in `line` (`crate::a::b` gives `a`,
/// `crate::{a::x, b}` gives `a` and `b`).
fn crate_refs(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `islb_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item, mut at_start) = (0, String::new(), true);
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        at_start = true;
                        out.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && at_start {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        at_start = false;
                    }
                }
            }
            out.push(item);
        } else {
            out.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The code of a file without comments (whole comment lines) and without its
/// `#[cfg(test)] mod tests` (tests may reach anywhere).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

struct Crate {
    name: String,
    /// Module name -> the modules and root items it refers to.
    refs: BTreeMap<String, BTreeSet<String>>,
    /// The text of the crate root.
    root: String,
}

fn load(src: &Path) -> Option<Crate> {
    let root_file = ["lib.rs", "main.rs"].iter().map(|f| src.join(f)).find(|p| p.exists())?;
    let mut refs = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let (module, files): (String, Vec<PathBuf>) = if path.is_dir() {
            let files = walk(&path);
            (path.file_name().unwrap().to_string_lossy().into_owned(), files)
        } else if path.extension().is_some_and(|e| e == "rs") && path != root_file {
            (path.file_stem().unwrap().to_string_lossy().into_owned(), vec![path.clone()])
        } else {
            continue;
        };
        let set: &mut BTreeSet<String> = refs.entry(module.clone()).or_default();
        for f in files {
            for line in code(&f).lines() {
                set.extend(crate_refs(line).into_iter().filter(|r| *r != module));
            }
        }
    }
    let name = src.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    Some(Crate { name, refs, root: code(&root_file) })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// Whether the crate root re-exports `item` (`pub use …item…`).
fn reexports(root: &str, item: &str) -> bool {
    root.split(';')
        .filter(|s| s.trim_start().starts_with("pub use"))
        .any(|s| s.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|w| w == item))
}

/// A cycle through `start`, if any (depth-first over module references).
fn cycle(refs: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn go(
        refs: &BTreeMap<String, BTreeSet<String>>,
        at: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in refs.get(at).into_iter().flatten().filter(|n| refs.contains_key(*n)) {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if go(refs, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    go(refs, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn every_crates_modules_form_layers() {
    let crates_dir = islb_testkit::workspace_root().join("crates");
    let mut problems = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates_dir).unwrap() {
        let Some(krate) = load(&entry.unwrap().path().join("src")) else { continue };
        checked += 1;
        for (module, refs) in &krate.refs {
            if let Some(path) = cycle(&krate.refs, module) {
                problems.push(format!("{}: a cycle: {}", krate.name, path.join(" -> ")));
            }
            for item in refs.iter().filter(|r| !krate.refs.contains_key(*r)) {
                if !reexports(&krate.root, item) {
                    problems.push(format!(
                        "{}: {module} takes {item} from the crate root, which does not re-export it",
                        krate.name
                    ));
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} crates found under {}", crates_dir.display());
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_cycles_and_root_items() {
    assert_eq!(crate_refs("use crate::{a::X, b, c::{d, e}};"), ["a", "b", "c"]);
    assert_eq!(crate_refs("let x = crate::lock(&m); islb_crate::no;"), ["lock"]);
    let refs: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), ["b".to_owned()].into()),
        ("b".to_owned(), ["c".to_owned()].into()),
        ("c".to_owned(), ["a".to_owned()].into()),
        ("d".to_owned(), ["a".to_owned()].into()),
    ]
    .into();
    assert_eq!(cycle(&refs, "a"), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(cycle(&refs, "d"), None);
    assert!(reexports("pub use config::{Config, Overrides};", "Overrides"));
    assert!(!reexports("pub(crate) fn lock() {}", "lock"));
}
