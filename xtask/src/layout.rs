//! The module layout has no import cycles: no module uses one that uses it (directly or
//! through others). Checked on the sources, so a new `use super::…` that closes a loop fails
//! `cargo test -p xtask` with the loop spelled out: xtask's own modules file by file, and
//! tsm-trace's top-level modules (`btf`, `probes`, `session`, ... each with its submodules;
//! a parent and its children may use each other, as `mod.rs` files do).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`vm::kernel`; the crate root is "") → its code without comments, string
/// contents and test modules, for the crate whose sources are in `src`. A crate with both
/// `lib.rs` and `main.rs` (tsm-trace) is read as one: both are the root, and the binary's
/// `tsm_trace::` paths are `crate::` ones.
fn modules(src: &Path) -> BTreeMap<String, String> {
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
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut test_only = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod")
            || parts.len() == 1 && (parts[0] == "main" || parts[0] == "lib")
        {
            parts.pop();
        }
        let name = parts.join("::");
        let text = std::fs::read_to_string(&f).unwrap();
        let (code, tests) = prepare(&text);
        test_only.extend(tests.into_iter().map(|t| join(&name, &t)));
        out.entry(name).or_default().push_str(&code);
    }
    // Modules declared under `#[cfg(test)]` (`mod tests;`), and theirs, are test code.
    out.retain(|m, _| {
        !test_only
            .iter()
            .any(|t| m == t || m.starts_with(&format!("{t}::")))
    });
    out
}

/// A source file's code as the graph reads it (see [`modules`]), and its test modules.
fn prepare(text: &str) -> (String, Vec<String>) {
    let (code, tests) = without_tests(&code_only(text));
    (code.replace("tsm_trace::", "crate::"), tests)
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}::{child}")
    }
}

/// `text` without comments, and with string and character literals emptied (`""`, `' '`), so
/// a path in a doc link or a message is no import and braces match.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let ident = |i: usize| i < b.len() && (b[i].is_alphanumeric() || b[i] == '_');
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && !(i > 0 && ident(i - 1) && !(b[i - 1] == 'b' && !(i > 1 && ident(i - 2))))
        {
            // A raw string: r"…", r#"…"#, br"…".
            let hashes = b[i + 1..].iter().take_while(|&&h| h == '#').count();
            if b.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            i += 2 + hashes;
            while i < b.len() && !(b[i] == '"' && b[i + 1..].iter().take(hashes).all(|&h| h == '#'))
            {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `code` (from [`code_only`]) without the items under `#[cfg(test)]`, and the names of the
/// test modules declared there (`#[cfg(test)] mod tests;`).
fn without_tests(code: &str) -> (String, Vec<String>) {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::new();
    let mut tests = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let item = &rest[at + ATTR.len()..];
        // The item ends at its `;` or at the `}` matching its first `{`.
        let mut depth = 0usize;
        let mut end = item.len();
        for (j, ch) in item.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = j + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = j + 1;
                    break;
                }
                _ => {}
            }
        }
        let words: Vec<&str> = item[..end]
            .split(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(m) = words.iter().position(|w| *w == "mod")
            && item[..end].ends_with(';')
        {
            tests.extend(words.get(m + 1).map(|n| n.to_string()));
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    (out, tests)
}

/// The paths a `use` names after `crate::` or `super::`, one per leaf of its groups
/// (`{a::b, c::{d, self}}` → `a::b`, `c::d`, `c`), or the one path that follows.
fn use_paths(rest: &str) -> Vec<String> {
    fn group(text: &str) -> Vec<String> {
        // Split at the commas outside nested braces.
        let mut items = Vec::new();
        let (mut depth, mut from) = (0, 0);
        for (j, ch) in text.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&text[from..j]);
                    from = j + 1;
                }
                _ => {}
            }
        }
        items.push(&text[from..]);
        let mut out = Vec::new();
        for item in items {
            let item = item.trim();
            let item = item.split(" as ").next().unwrap_or("").trim();
            if let Some(open) = item.find('{') {
                let prefix = item[..open].trim_end_matches("::");
                let close = item.rfind('}').unwrap_or(item.len());
                for p in group(&item[open + 1..close]) {
                    out.push(if p.is_empty() {
                        prefix.to_string()
                    } else {
                        format!("{prefix}::{p}")
                    });
                }
            } else if !item.is_empty() {
                out.push(if item == "self" {
                    String::new()
                } else {
                    item.to_string()
                });
            }
        }
        out
    }
    if let Some(inner) = rest.strip_prefix('{') {
        let mut depth = 1;
        let close = inner
            .char_indices()
            .find(|&(_, ch)| {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(inner.len(), |(j, _)| j);
        group(&inner[..close])
    } else {
        paths_after(rest, "")
            .into_iter()
            .take(1)
            .map(str::to_string)
            .collect()
    }
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
        for (i, _) in text.match_indices("crate::") {
            for p in use_paths(&text[i + "crate::".len()..]) {
                deps.extend(resolve(mods, "", &p));
            }
        }
        for (i, _) in text.match_indices("super::") {
            // Each name is a sibling module or an item of the parent.
            for p in use_paths(&text[i + "super::".len()..]) {
                deps.extend(resolve(mods, parent, &p));
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

/// The graph of top-level modules: each module stands for itself and its submodules.
fn top_level(g: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in g {
        let t = top(m);
        let set = out.entry(t.clone()).or_default();
        set.extend(deps.iter().map(|d| top(d)).filter(|d| *d != t));
    }
    out
}

/// The cycle in `g`, spelled out for the failure message.
fn check(g: &BTreeMap<String, BTreeSet<String>>) -> Result<(), String> {
    match find_cycle(g) {
        Some(c) => Err(format!(
            "import cycle: {}",
            c.iter()
                .map(|m| if m.is_empty() { "(crate root)" } else { m })
                .collect::<Vec<_>>()
                .join(" → ")
        )),
        None => Ok(()),
    }
}

fn sources(krate: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let mods = modules(&sources("xtask"));
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
    if let Err(e) = check(&g) {
        panic!("xtask/src: {e}");
    }
}

/// tsm-trace's modules import downwards: common → targets → btf → probes → session → event
/// loop; events → correlate → pipeline → exporters → http; clock and files at the bottom.
#[test]
fn tsm_trace_modules_import_downwards() {
    let mods = modules(&sources("tsm-trace"));
    assert!(mods.contains_key("probes::attach") && mods.contains_key("files"));
    // Test modules are left out (`#[cfg(test)] mod tests;`, `mod tests { … }`).
    assert!(!mods.contains_key("btf::tests") && !mods.contains_key("cli::tests"));
    let g = top_level(&edges(&mods));
    // The checker sees real imports, `use crate::{a, b::c}` groups and the binary's
    // `tsm_trace::` paths among them.
    for (from, to) in [
        ("probes", "btf"),
        ("pipeline", "correlate"),
        ("commands", "session"),
        ("", "cli"),
    ] {
        assert!(g[from].contains(to), "{from} → {to}: {:?}", g[from]);
    }
    assert!(g["files"].is_empty(), "files is a leaf: {:?}", g["files"]);
    if let Err(e) = check(&g) {
        panic!("tsm-trace/src: {e}");
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

/// The whole chain on a small crate: sources → edges → top-level graph → the cycle named.
#[test]
fn a_cycle_through_submodules_is_reported() {
    let crate_files = [
        (
            "",
            "mod clock; mod probes; mod exporters;\nfn main() { tsm_trace::probes::go(); }",
        ),
        ("clock", "pub fn now() {}"),
        (
            "probes",
            "mod attach;\nuse crate::{clock::now, exporters::{metrics::Counts, self}};",
        ),
        (
            "probes::attach",
            "use super::Probe; // crate::clock in a comment",
        ),
        ("exporters", "pub mod metrics;"),
        (
            "exporters::metrics",
            "use crate::probes::KernelStats;\nconst S: &str = \"crate::http\";\n\
             #[cfg(test)]\nmod tests { use crate::clock; }",
        ),
    ];
    let mut mods: BTreeMap<String, String> = crate_files
        .iter()
        .map(|(m, text)| (m.to_string(), prepare(text).0))
        .collect();
    let g = edges(&mods);
    assert_eq!(
        g["probes"],
        BTreeSet::from([
            "clock".into(),
            "exporters".into(),
            "exporters::metrics".into()
        ])
    );
    assert_eq!(g["probes::attach"], BTreeSet::from(["probes".into()]));
    assert_eq!(g["exporters::metrics"], BTreeSet::from(["probes".into()]));
    let top = top_level(&g);
    assert_eq!(
        check(&top),
        Err("import cycle: probes → exporters → probes".to_string())
    );
    // The parent and its child using each other is no cycle of top-level modules.
    mods.insert("exporters::metrics".into(), "use super::Thing;".into());
    let top = top_level(&edges(&mods));
    assert_eq!(check(&top), Ok(()));
    assert!(top[""].contains("probes"), "{:?}", top[""]);
}

#[test]
fn test_modules_and_literals_are_no_imports() {
    let text = "#[cfg(test)]\nmod tests;\nuse crate::a;\n/// [`crate::b`]\n\
                #[cfg(test)]\npub mod fake { fn f() { let _ = '{'; } }\n\
                fn g() -> &'static str { r#\"crate::c\"# }\nuse crate::d;";
    let (code, tests) = without_tests(&code_only(text));
    assert_eq!(tests, ["tests"]);
    assert_eq!(paths_after(&code, "crate::"), ["a", "d"]);
}
