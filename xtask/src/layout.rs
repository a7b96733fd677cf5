//! The module layout has no import cycles: no module uses one that uses it (directly or
//! through others). Checked on the sources, so a new `use super::…` that closes a loop fails
//! `cargo test -p xtask` with the loop spelled out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`vm::kernel`; the crate root is "") → its source without test modules.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "main") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            (parts.join("::"), text)
        })
        .collect()
}

/// Identifiers following `prefix` in `text` (`crate::vm::kernel` → `vm::kernel` with `::`).
fn paths_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            rest[..end].trim_end_matches(':')
        })
        .collect()
}

/// The longest known module that `path` (relative to `base`) names.
fn resolve(mods: &BTreeMap<String, String>, base: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    while !parts.is_empty() {
        let name = if base.is_empty() {
            parts.join("::")
        } else {
            format!("{base}::{}", parts.join("::"))
        };
        if mods.contains_key(&name) {
            return Some(name);
        }
        parts.pop();
    }
    mods.contains_key(base).then(|| base.to_string())
}

fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (m, text) in mods {
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
        let mut deps = BTreeSet::new();
        for p in paths_after(text, "crate::") {
            deps.extend(resolve(mods, "", p));
        }
        for (i, _) in text.match_indices("super::") {
            let rest = &text[i + "super::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use super::{a, b::c}`: each name is a sibling module or an item of the parent.
                for name in group[..group.find('}').unwrap_or(0)].split(',') {
                    let name = name.trim().split("::").next().unwrap_or("");
                    deps.extend(resolve(mods, parent, name));
                }
            } else {
                let p = paths_after(rest, "").into_iter().next().unwrap_or("");
                deps.extend(resolve(mods, parent, p));
            }
        }
        // A parent using its children by name (`kernel::fetch`, `use kernel::Kernel`).
        for child in mods.keys() {
            let Some(name) = child
                .strip_prefix(&format!("{m}::"))
                .or_else(|| m.is_empty().then_some(child.as_str()))
            else {
                continue;
            };
            if !name.contains("::")
                && (text.contains(&format!(" {name}::")) || text.contains(&format!("({name}::")))
            {
                deps.insert(child.clone());
            }
        }
        deps.remove(m);
        out.insert(m.clone(), deps);
    }
    out
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let mods = modules();
    assert!(mods.contains_key("vm::kernel") && mods.contains_key("util"));
    let g = edges(&mods);
    // The checker sees real imports (or it would pass on anything).
    assert!(
        g["vm::kernel"].contains("vm::cache"),
        "{:?}",
        g["vm::kernel"]
    );
    assert!(g["test"].contains("vm"), "{:?}", g["test"]);
    assert!(g["util"].is_empty(), "util is a leaf: {:?}", g["util"]);
    if let Some(c) = find_cycle(&g) {
        panic!("import cycle: {}", c.join(" → "));
    }
}

#[test]
fn a_cycle_is_found() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&g).is_some());
    g.get_mut("b").unwrap().clear();
    assert!(find_cycle(&g).is_none());
}
