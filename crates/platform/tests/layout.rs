//! The platform's shape, kept by a test: its modules form layers, each using only the ones the
//! table below allows, and no two modules use each other, directly or around a circle.
//!
//! A module is a top-level module of `src/` with all its submodules; a use is any `crate::<name>`
//! path in its code (comments are not code), also inside `crate::{…}` groups.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, bottom layer first, and the modules each may use (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("dev", &[]),
    ("pacing", &[]),
    ("telemetry", &[]),
    ("server", &[]),
    ("fd_limit", &["server"]),
    ("envelope", &[]),
    ("contract", &[]),
    ("events", &["contract", "envelope"]),
    ("auth", &["dev"]),
    ("config", &["auth", "dev", "fd_limit", "pacing", "server"]),
    ("db", &["config"]),
    ("supervisor", &["config", "pacing"]),
    ("broker", &["config", "contract", "events"]),
    ("broker_access", &["broker", "contract", "events"]),
    (
        "outbox",
        &[
            "broker",
            "config",
            "envelope",
            "events",
            "pacing",
            "supervisor",
            "telemetry",
        ],
    ),
    ("dead_letters", &[]),
    ("fault_hooks", &["events"]),
    (
        "consumer",
        &[
            "broker",
            "config",
            "contract",
            "db",
            "dead_letters",
            "envelope",
            "events",
            "fault_hooks",
            "outbox",
            "pacing",
            "supervisor",
            "telemetry",
        ],
    ),
    ("retention", &["config", "supervisor"]),
    // HTTP never reaches the consumer: database errors are classified in `db`.
    (
        "http",
        &[
            "auth",
            "db",
            "envelope",
            "fault_hooks",
            "server",
            "supervisor",
            "telemetry",
        ],
    ),
    ("openapi", &["http"]),
    ("records", &["http"]),
    (
        "desk",
        &["consumer", "dead_letters", "http", "openapi", "outbox"],
    ),
    (
        "saga",
        &["dead_letters", "desk", "envelope", "http", "openapi"],
    ),
    (
        "app",
        &[
            "broker",
            "config",
            "consumer",
            "contract",
            "db",
            "desk",
            "events",
            "fd_limit",
            "http",
            "openapi",
            "outbox",
            "retention",
            "saga",
            "server",
            "supervisor",
        ],
    ),
    ("testing", &["dev"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The text without its `//` comments (doc comments name other modules freely).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The modules a source text names through `crate::`.
fn uses(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                used.insert(identifier(item.trim()));
            }
        } else {
            used.insert(identifier(rest));
        }
    }
    used.retain(|name| !name.is_empty());
    used
}

/// Every module and the modules its code uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("inside src");
        let first = relative.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable");
        let used = uses(&code(&text));
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(used.into_iter().filter(|used| *used != module));
    }
    graph
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let graph = graph();
    let mut violations = Vec::new();
    for (module, used) in &graph {
        let Some(may_use) = allowed.get(module.as_str()) else {
            violations.push(format!("{module}: not in the layering table"));
            continue;
        };
        for name in used {
            if !may_use.contains(name.as_str()) {
                violations.push(format!("{module} uses crate::{name}"));
            }
        }
    }
    for module in allowed.keys() {
        if !graph.contains_key(*module) {
            violations.push(format!("{module}: in the table but not in src/"));
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_module_reaches_itself_around_a_circle() {
    let graph = graph();
    // Depth-first search from each module; a module met again on the current path closes a
    // circle.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| *m == module) {
            let mut circle: Vec<String> = path[at..].iter().map(|m| m.to_string()).collect();
            circle.push(module.to_owned());
            return Some(circle);
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(circle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" → "));
        }
    }
}

#[test]
fn the_parser_sees_grouped_paths_and_skips_comments() {
    let text =
        "use crate::{db, http::Problem};\n// crate::desk in a comment\nlet x = crate::app::run;";
    let found = uses(&code(text));
    let expected: BTreeSet<String> = ["app", "db", "http"].map(String::from).into();
    assert_eq!(found, expected);
}
