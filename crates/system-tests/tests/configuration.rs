//! Configuration refuses mistakes: a misspelt `APP_…` variable or an unknown key in the settings
//! file stops a service before it starts, naming the key; and the variables the README and the
//! load-test CLI name are the settings' own (the table lists every one).

use platform::config::{known_keys, variable_name, ServiceSettings, CONFIG_FILE_VARIABLE};
use platform::testing::unique_token;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use system_tests::{fresh_database, nats_url};

type Inventory = inventory_service::config::Settings;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every setting of every service, as its variable.
fn every_variable() -> BTreeSet<String> {
    [
        known_keys(&order_service::config::Settings::default()),
        known_keys(&Inventory::default()),
        known_keys(&payment_service::config::Settings::default()),
    ]
    .into_iter()
    .flatten()
    .map(|key| variable_name(&key))
    .collect()
}

/// The `APP_…` names in a text (`APP_FAIR_USE__…` stands for a section: `APP_FAIR_USE__`).
fn variables_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("APP_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded_by_word && end > "APP_".len() {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end.max(1)..];
    }
    names
}

/// The variables of the README's configuration table, from each row's first cell.
fn readme_table() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## ")
        .find(|section| section.starts_with("Configuration\n"))
        .expect("a Configuration section");
    section
        .lines()
        .filter(|line| line.starts_with("| `APP_"))
        .flat_map(|row| variables_in(row.split('|').nth(1).unwrap_or_default()))
        .collect()
}

#[test]
fn the_readme_table_lists_every_setting_and_nothing_else() {
    let documented = readme_table();
    let settings = every_variable();
    let undocumented: Vec<_> = settings.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&settings).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "settings missing from the README's table: {undocumented:?}; \
         variables in it that are no setting: {unknown:?}"
    );
}

/// What the README, the deployment guide and the load-test CLI (its `access` output, the
/// environment it deploys with) name is a setting, or a section of settings.
#[test]
fn every_variable_the_docs_and_the_cli_name_is_a_setting() {
    let settings = every_variable();
    let is_known = |name: &str| {
        // The README's example of a misspelt variable is misspelt on purpose.
        name == CONFIG_FILE_VARIABLE
            || name == "APP_HTTP__PORTT"
            || settings.contains(name)
            || (name.ends_with("__") && settings.iter().any(|s| s.starts_with(name)))
    };
    let mut files = vec![
        repository().join("README.md"),
        repository().join("docs/deployment.md"),
    ];
    let mut folders = vec![repository().join("crates/loadtest/src")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("a source folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut unknown = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        for name in variables_in(&text) {
            if !is_known(&name) {
                unknown.push(format!("{name} in {}", file.display()));
            }
        }
    }
    assert!(unknown.is_empty(), "no such settings: {unknown:#?}");
}

/// What a deployment of the inventory service would set: its database, the test's NATS.
async fn deployment_variables() -> Vec<(String, String)> {
    vec![
        (
            "APP_DATABASE__URL".into(),
            fresh_database("inventory").await,
        ),
        ("APP_NATS__URL".into(), nats_url().await),
        ("APP_NATS__PREFIX".into(), format!("t{}", unique_token())),
        ("APP_NATS__STREAM_MAX_BYTES".into(), "-1".into()),
        ("APP_HTTP__PORT".into(), "0".into()),
        ("APP_HTTP__ADMIN_PORT".into(), "0".into()),
        ("PATH".into(), "/usr/bin:/bin".into()),
    ]
}

/// The loader `main` runs (`ServiceSettings::load` is `load(PORT, std::env::vars())`), given the
/// variables here rather than the test process's own.
fn load(variables: &[(String, String)]) -> Result<Inventory, platform::config::SettingsError> {
    platform::config::load(Inventory::PORT, variables.iter().cloned())
}

#[tokio::test]
async fn a_misspelt_variable_or_an_unknown_key_in_the_file_refuses_the_start_naming_it() {
    let mut variables = deployment_variables().await;

    // As deployed, the service starts: what follows is refused for the mistake alone.
    let settings = load(&variables).expect("the deployment's settings load");
    let app = inventory_service::startup::build(&settings)
        .await
        .expect("the inventory service starts");
    assert_ne!(app.port(), 0);
    drop(app);

    variables.push(("APP_HTTP__PORTT".into(), "1".into()));
    let refused = load(&variables).expect_err("a misspelt variable is refused");
    assert_eq!(
        refused.to_string(),
        "unknown setting `http.portt` (from APP_HTTP__PORTT); did you mean `http.port`?"
    );
    variables.pop();

    let file = std::env::temp_dir().join(format!("inventory-{}.toml", unique_token()));
    std::fs::write(
        &file,
        "[inventory]\nmax_units = 10\n[database]\nlock_timout = \"1s\"\n",
    )
    .expect("write the settings file");
    variables.push((CONFIG_FILE_VARIABLE.into(), file.display().to_string()));
    let refused = load(&variables).expect_err("an unknown key in the file is refused");
    std::fs::remove_file(&file).ok();
    let message = refused.to_string();
    assert!(
        message.contains("unknown setting `database.lock_timout`")
            && message.contains(&file.display().to_string())
            && message.contains("did you mean `database.lock_timeout`?"),
        "{message}"
    );
}
