//! docs/architecture.md's module tree against the code: every crate of the workspace has its
//! block, every module named there exists, and every source file is named — so the map a new
//! maintainer reads first cannot fall behind the code unnoticed.
//!
//! A block is a fenced code block whose info string is `modules <crate folder>`; each line is a
//! module path below the crate's `src` (`consumer::batch`, `bin::contract-stack`) followed by
//! what the module is for.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (crate folder, module paths) for every `modules` block of the document.
fn documented_blocks(doc: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in doc.lines() {
        if let Some((folder, modules)) = current.as_mut() {
            if line.trim_start().starts_with("```") {
                blocks.push((std::mem::take(folder), std::mem::take(modules)));
                current = None;
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let module = words.next().expect("a module path").to_owned();
            assert!(
                words.next().is_some(),
                "{folder}: `{module}` says what it is for"
            );
            modules.push(module);
        } else if let Some(folder) = line.trim().strip_prefix("```modules ") {
            current = Some((folder.trim().to_owned(), Vec::new()));
        }
    }
    assert!(current.is_none(), "a modules block is not closed");
    blocks
}

/// The module path of every source file below `src` (lib.rs and main.rs are the crate itself).
fn source_modules(src: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir)
            .expect("readable source folder")
            .flatten()
        {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let join = |name: &str| {
                if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}::{name}")
                }
            };
            if path.is_dir() {
                walk(&path, &join(&name), out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                match stem {
                    "lib" | "main" if prefix.is_empty() => {}
                    "mod" => {
                        out.insert(prefix.to_owned());
                    }
                    _ => {
                        out.insert(join(stem));
                    }
                }
            }
        }
    }
    let mut modules = BTreeSet::new();
    walk(src, "", &mut modules);
    modules
}

fn workspace_members() -> Vec<String> {
    let manifest: toml::Value = std::fs::read_to_string(workspace().join("Cargo.toml"))
        .expect("workspace manifest")
        .parse()
        .expect("valid TOML");
    manifest["workspace"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m.as_str().expect("a path").to_owned())
        .collect()
}

#[test]
fn the_module_tree_in_the_architecture_document_matches_the_code() {
    let doc = std::fs::read_to_string(workspace().join("docs/architecture.md")).expect("doc");
    let blocks = documented_blocks(&doc);
    let documented: BTreeSet<&str> = blocks.iter().map(|(f, _)| f.as_str()).collect();
    for member in workspace_members() {
        assert!(
            documented.contains(member.as_str()),
            "docs/architecture.md has no module tree for {member}"
        );
    }
    for (folder, modules) in &blocks {
        let in_code = source_modules(&workspace().join(folder).join("src"));
        let in_doc: BTreeSet<String> = modules.iter().cloned().collect();
        assert_eq!(
            in_doc.len(),
            modules.len(),
            "{folder}: a module named twice"
        );
        let missing: Vec<_> = in_code.difference(&in_doc).collect();
        let stale: Vec<_> = in_doc.difference(&in_code).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "{folder}: modules in the code but not in docs/architecture.md: {missing:?}; \
             named in the document but not in the code: {stale:?}"
        );
    }
}

/// A module's references to other modules of its crate: every `crate::…` and `super::…` path
/// (grouped `use` trees included), resolved to the deepest module of `modules` they name.
fn references(module: &str, source: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    // A file's unit tests (`#[cfg(test)]`, last in the file) may use what they like.
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    let code: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for (start, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `$crate::`, `pub(crate)`, or the tail of a longer path
        }
        let mut base: Vec<&str> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").collect()
        };
        let mut rest = &code[start..];
        if rest.starts_with("crate::") {
            base.clear();
            rest = &rest["crate::".len()..];
        } else {
            while let Some(tail) = rest.strip_prefix("super::") {
                base.pop();
                rest = tail;
            }
        }
        for path in use_tree(rest) {
            let mut full: Vec<&str> = base.clone();
            full.extend(path.iter().map(String::as_str));
            // The deepest module the path names (what follows is an item in it).
            while !full.is_empty() && !modules.contains(&full.join("::")) {
                full.pop();
            }
            found.insert(full.join("::"));
        }
    }
    found
}

/// The paths of a `use` tree that starts at `text`: `a::b::c`, `{a, b::{c, d}}`.
fn use_tree(text: &str) -> Vec<Vec<String>> {
    fn parse(chars: &[char], at: &mut usize) -> Vec<Vec<String>> {
        let skip_space = |at: &mut usize| {
            while *at < chars.len() && chars[*at].is_whitespace() {
                *at += 1;
            }
        };
        skip_space(at);
        if chars.get(*at) == Some(&'{') {
            *at += 1;
            let mut paths = Vec::new();
            loop {
                skip_space(at);
                match chars.get(*at) {
                    None => return paths,
                    Some('}') => {
                        *at += 1;
                        return paths;
                    }
                    Some(',') => *at += 1,
                    Some(_) => {
                        let before = *at;
                        paths.extend(parse(chars, at));
                        if *at == before {
                            *at += 1; // not a path (e.g. `*`): step over it
                        }
                    }
                }
            }
        }
        let start = *at;
        while *at < chars.len() && (chars[*at].is_alphanumeric() || chars[*at] == '_') {
            *at += 1;
        }
        let segment: String = chars[start..*at].iter().collect();
        if segment.is_empty() {
            return vec![Vec::new()];
        }
        if chars.get(*at) == Some(&':') && chars.get(*at + 1) == Some(&':') {
            *at += 2;
            let tails = parse(chars, at);
            return tails
                .into_iter()
                .map(|tail| std::iter::once(segment.clone()).chain(tail).collect())
                .collect();
        }
        vec![vec![segment]]
    }
    let chars: Vec<char> = text.chars().take(4_000).collect();
    parse(&chars, &mut 0)
}

/// The source file of each module below `src`.
fn module_files(src: &Path) -> Vec<(String, PathBuf)> {
    source_modules(src)
        .into_iter()
        .map(|module| {
            let rel = module.replace("::", "/");
            let file = src.join(format!("{rel}.rs"));
            let path = if file.exists() {
                file
            } else {
                src.join(rel).join("mod.rs")
            };
            (module, path)
        })
        .chain(
            ["lib.rs", "main.rs"]
                .into_iter()
                .map(|f| (String::new(), src.join(f)))
                .filter(|(_, p)| p.exists()),
        )
        .collect()
}

/// The child of `parent` that `module` lies in (itself or an ancestor), if it lies below it.
fn child_of<'a>(parent: &str, module: &'a str) -> Option<&'a str> {
    let rest = if parent.is_empty() {
        module
    } else {
        module.strip_prefix(parent)?.strip_prefix("::")?
    };
    if rest.is_empty() {
        return None;
    }
    let len = rest.find("::").unwrap_or(rest.len());
    Some(&module[..module.len() - rest.len() + len])
}

/// Circles among the children of every module: module A's files use module B's and B's use
/// A's, at any depth of the tree. A parent and its own children may use each other (that is
/// how a folder module exposes its parts); siblings may not, both ways.
fn circles(src: &Path) -> Vec<Vec<String>> {
    let modules = source_modules(src);
    let mut all = modules.clone();
    all.insert(String::new());
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for (module, file) in module_files(src) {
        let source = std::fs::read_to_string(&file).expect("readable source");
        for target in references(&module, &source, &all) {
            edges.insert((module.clone(), target));
        }
    }
    let mut found = Vec::new();
    for parent in &all {
        let children: BTreeSet<&str> = all.iter().filter_map(|m| child_of(parent, m)).collect();
        let mut graph: BTreeSet<(&str, &str)> = BTreeSet::new();
        for (from, to) in &edges {
            if let (Some(a), Some(b)) = (child_of(parent, from), child_of(parent, to)) {
                if a != b {
                    graph.insert((a, b));
                }
            }
        }
        // A child that reaches itself again lies on a circle.
        for &start in &children {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<&str> = vec![start];
            let mut circular = false;
            while let Some(node) = stack.pop() {
                for &(a, b) in &graph {
                    if a == node {
                        if b == start {
                            circular = true;
                        }
                        if seen.insert(b) {
                            stack.push(b);
                        }
                    }
                }
            }
            if circular {
                let mut members: Vec<String> = seen
                    .into_iter()
                    .filter(|m| {
                        // Only those on a path back to start.
                        let mut back = BTreeSet::new();
                        let mut stack = vec![*m];
                        while let Some(n) = stack.pop() {
                            for &(a, b) in &graph {
                                if a == n && back.insert(b) {
                                    stack.push(b);
                                }
                            }
                        }
                        back.contains(start)
                    })
                    .map(str::to_owned)
                    .collect();
                members.sort();
                if !found.contains(&members) {
                    found.push(members);
                }
            }
        }
    }
    found
}

#[test]
fn no_module_of_any_crate_uses_a_sibling_that_uses_it_back() {
    let mut report = Vec::new();
    for member in workspace_members() {
        for circle in circles(&workspace().join(&member).join("src")) {
            report.push(format!("{member}: {}", circle.join(" ⇄ ")));
        }
    }
    assert!(report.is_empty(), "import circles:\n{}", report.join("\n"));
}

#[test]
fn use_trees_and_references_resolve_to_modules() {
    let modules: BTreeSet<String> = ["", "a", "a::b", "c", "c::d"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        use_tree("{a::B, c::{d::E, F}, *};"),
        vec![
            vec!["a".to_owned(), "B".to_owned()],
            vec!["c".into(), "d".into(), "E".into()],
            vec!["c".into(), "F".into()],
            vec![], // `*`: the module the tree starts from
        ]
    );
    let source = "use crate::a::b::Thing;\nuse super::{d::X, Y};\n// crate::c::d in a comment\n";
    let found = references("c::d", source, &modules);
    assert_eq!(
        found,
        ["a::b", "c", "c::d"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
    assert_eq!(child_of("", "a::b"), Some("a"));
    assert_eq!(child_of("a", "a::b::c"), Some("a::b"));
    assert_eq!(child_of("a", "a"), None);
    assert_eq!(child_of("a", "ab"), None);
}
