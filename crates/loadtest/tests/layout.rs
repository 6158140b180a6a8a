//! The crate's shape, kept by tests: every scenario file is read by the command its folder says,
//! and the modules depend on each other one way only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use loadtest::plan::RunPlan;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("scenario folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn run_scenarios_and_capacity_plans_live_apart_and_all_load() {
    let run = toml_files(&workspace().join("scenarios"));
    let capacity = toml_files(&workspace().join("scenarios/capacity"));
    assert!(run.len() >= 5 && !capacity.is_empty());
    for path in &run {
        RunPlan::scenario(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(RunPlan::capacity(path).is_err(), "{}", path.display());
    }
    for path in &capacity {
        RunPlan::capacity(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let refused = RunPlan::scenario(path).expect_err("a capacity plan is not a run scenario");
        assert!(format!("{refused:#}").contains("loadtest capacity"));
    }
    for path in run.iter().chain(&capacity) {
        let text = std::fs::read_to_string(path).expect("readable");
        assert!(
            text.starts_with('#'),
            "{}: a header says what it is for",
            path.display()
        );
        assert!(
            !text.contains("flock"),
            "{}: the CLI takes its own lock",
            path.display()
        );
        assert!(
            !text.contains("results/20"),
            "{}: cites a results folder that is not in the repository",
            path.display()
        );
    }
}

/// The top-level modules each may use (besides itself); anything else is a layering error.
/// `modes` → `session` → the rest → `deploy` (→ the `stack` crate, which is not a module here);
/// nothing below `modes` uses a mode.
const ALLOWED: &[(&str, &[&str])] = &[
    ("deploy", &[]),
    ("plan", &["deploy"]),
    ("loadgen", &["plan"]),
    ("seed", &["deploy", "plan"]),
    ("observe", &["deploy", "loadgen", "plan"]),
    // `loadgen`: the audit holds every stored order to what its request was told (answers).
    ("audit", &["observe", "deploy", "loadgen"]),
    ("report", &["audit", "loadgen", "observe", "plan"]),
    (
        "chaos",
        &[
            "audit", "deploy", "loadgen", "observe", "plan", "report", "seed",
        ],
    ),
    (
        "session",
        &[
            "audit", "chaos", "deploy", "loadgen", "observe", "plan", "report", "seed",
        ],
    ),
    (
        "modes",
        &[
            "audit", "deploy", "loadgen", "observe", "plan", "report", "session",
        ],
    ),
    ("commands", &["audit", "deploy", "observe", "plan", "seed"]),
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

#[test]
fn modules_depend_on_each_other_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("inside src");
        let first = relative.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        let Some(may_use) = allowed.get(module.as_str()) else {
            violations.push(format!("{module}: not in the layering table"));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable");
        for (at, _) in text.match_indices("crate::") {
            let used: String = text[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if used != module
                && allowed.contains_key(used.as_str())
                && !may_use.contains(used.as_str())
            {
                violations.push(format!("{} uses crate::{used}", relative.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}

/// The harness knows the services by the event contract (`platform::contract::SERVICES`) and
/// drives them from outside: it depends on none of their crates (only its tests reach them,
/// through the in-process harness of `system-tests`).
#[test]
fn the_harness_links_no_service_crate() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("readable");
    let manifest: toml::Table = manifest.parse().expect("a TOML manifest");
    for section in ["dependencies", "dev-dependencies"] {
        let Some(deps) = manifest.get(section).and_then(toml::Value::as_table) else {
            continue;
        };
        for service in ["order-service", "inventory-service", "payment-service"] {
            assert!(!deps.contains_key(service), "[{section}] links {service}");
        }
    }
}
