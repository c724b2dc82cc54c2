//! `orderflow schemas`: `generate` writes the contracts this build has (and deletes a retired one), and
//! `check` (the compatibility gate) catches each breaking rule on a fixture made from the real schemas,
//! against a directory and against a git revision.

use crate::harness::{shown, text};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

fn orderflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .output()
        .expect("run orderflow")
}

/// Writes this build's schemas into `dir` (as `schemas/` of a repository) with `orderflow schemas
/// generate`.
fn generate(dir: &Path) {
    let root = tempfile::tempdir().unwrap();
    let output = orderflow(&[
        "schemas",
        "generate",
        "--root",
        &root.path().display().to_string(),
    ]);
    assert!(output.status.success(), "{}", shown(&output));
    copy_tree(&root.path().join("schemas"), dir);
}

fn copy_tree(from: &Path, to: &Path) {
    for file in walk(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// Changes one schema file of `dir` (`events/<path>`) in place.
fn edit(dir: &Path, path: &str, change: impl FnOnce(&mut Value)) {
    let file = dir.join("events").join(path);
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    change(&mut schema);
    std::fs::write(&file, serde_json::to_string_pretty(&schema).unwrap()).unwrap();
}

fn check(dir: &Path, against: &str) -> Output {
    orderflow(&[
        "schemas",
        "check",
        "--dir",
        &dir.display().to_string(),
        "--against",
        against,
    ])
}

/// `check` of an edited copy of the schemas against the generated ones: exit 1, naming `expected`.
fn assert_breaking(change: impl FnOnce(&Path), expected: &str) {
    let before = tempfile::tempdir().unwrap();
    let after = tempfile::tempdir().unwrap();
    generate(before.path());
    generate(after.path());
    change(after.path());
    let output = check(after.path(), &before.path().display().to_string());
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    let stdout = text(&output.stdout);
    assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    assert!(stdout.contains("1 breaking change(s)"), "{stdout}");
}

#[test]
fn generate_writes_the_schemas_and_documents_and_deletes_a_retired_version() {
    let root = tempfile::tempdir().unwrap();
    let generate = || {
        orderflow(&[
            "schemas",
            "generate",
            "--root",
            &root.path().display().to_string(),
        ])
    };
    let output = generate();
    assert!(output.status.success(), "{}", shown(&output));
    for path in [
        "schemas/events/envelope.json",
        "schemas/events/orders.created/v1.json",
        "schemas/asyncapi.yaml",
        "docs/events.md",
    ] {
        assert!(root.path().join(path).is_file(), "{path} not written");
    }
    let retired = root.path().join("schemas/events/orders.created/v0.json");
    std::fs::write(&retired, "{}").unwrap();
    let output = generate();
    assert!(output.status.success(), "{}", shown(&output));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("0 written, 16 unchanged, 1 deleted"),
        "{stdout}"
    );
    assert!(!retired.exists());
}

#[test]
fn everything_generate_writes_is_checked_in_as_it_is() {
    let root = tempfile::tempdir().unwrap();
    let output = orderflow(&[
        "schemas",
        "generate",
        "--root",
        &root.path().display().to_string(),
    ]);
    assert!(output.status.success(), "{}", shown(&output));
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fix = "run `cargo run -p orderflow -- schemas generate` and commit what it wrote";
    let mut compared = 0;
    for directory in ["schemas/events", "schemas/openapi"] {
        for entry in walk(&root.path().join(directory)) {
            let relative = entry.strip_prefix(root.path()).unwrap();
            let generated: Value =
                serde_json::from_str(&std::fs::read_to_string(&entry).unwrap()).unwrap();
            let checked_in = std::fs::read_to_string(repository.join(relative))
                .unwrap_or_else(|_| panic!("{} is not checked in: {fix}", relative.display()));
            let checked_in: Value = serde_json::from_str(&checked_in).unwrap();
            assert_eq!(
                generated,
                checked_in,
                "{} differs from the code: {fix}",
                relative.display()
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 14, "10 event schemas and 4 OpenAPI documents");
    for text_file in ["schemas/asyncapi.yaml", "docs/events.md"] {
        let generated = std::fs::read_to_string(root.path().join(text_file)).unwrap();
        let checked_in = std::fs::read_to_string(repository.join(text_file)).unwrap();
        assert!(
            generated == checked_in,
            "{text_file} differs from the code: {fix}"
        );
    }
}

/// Every file under `dir`, however deep.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn generated_schemas_are_compatible_with_themselves_and_the_checked_in_ones() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let output = check(dir.path(), &dir.path().display().to_string());
    assert!(output.status.success(), "{}", shown(&output));
    assert!(
        text(&output.stdout).contains("10 schemas checked"),
        "{}",
        shown(&output)
    );
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let output = check(dir.path(), &repository.display().to_string());
    assert!(output.status.success(), "{}", shown(&output));
}

#[test]
fn the_gate_catches_a_required_field_removed() {
    assert_breaking(
        |dir| {
            edit(dir, "orders.created/v1.json", |schema| {
                schema["properties"]
                    .as_object_mut()
                    .unwrap()
                    .remove("payment_method");
                schema["required"] = json!(["customer_id", "items", "deadline_at"]);
            })
        },
        "orders.created v1: /payment_method: required field removed: no longer in the schema",
    );
}

#[test]
fn the_gate_catches_a_required_field_added_without_a_default() {
    assert_breaking(
        |dir| {
            edit(dir, "orders.confirmed/v1.json", |schema| {
                schema["properties"]["currency"] = json!({"type": "string"});
                schema["required"] = json!(["total_cents", "currency"]);
            })
        },
        "orders.confirmed v1: /currency: required field added without a default",
    );
}

#[test]
fn the_gate_catches_a_type_narrowed_or_changed() {
    assert_breaking(
        |dir| {
            edit(dir, "orders.created/v1.json", |schema| {
                schema["$defs"]["Quantity"]["maximum"] = json!(100);
            })
        },
        "orders.created v1: /items/*/quantity: type narrowed or changed: maximum 1000 → 100",
    );
    assert_breaking(
        |dir| {
            edit(dir, "payments.succeeded/v1.json", |schema| {
                schema["properties"]["charge_id"]["type"] = json!("integer");
            })
        },
        "payments.succeeded v1: /charge_id: type narrowed or changed: string → integer",
    );
}

#[test]
fn the_gate_catches_an_enum_value_removed() {
    assert_breaking(
        |dir| {
            edit(dir, "orders.cancelled/v1.json", |schema| {
                let values = schema["$defs"]["CancelReason"]["enum"]
                    .as_array_mut()
                    .unwrap();
                values.retain(|value| value != "timeout");
            })
        },
        r#"orders.cancelled v1: /reason: enum value removed: "timeout""#,
    );
}

#[test]
fn the_gate_catches_additional_properties_tightened() {
    let before = tempfile::tempdir().unwrap();
    let after = tempfile::tempdir().unwrap();
    generate(before.path());
    generate(after.path());
    edit(before.path(), "payments.failed/v1.json", |schema| {
        schema["additionalProperties"] = json!(true);
    });
    let output = check(after.path(), &before.path().display().to_string());
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert!(
        text(&output.stdout).contains("payments.failed v1: /: additionalProperties tightened"),
        "{}",
        shown(&output)
    );
}

#[test]
fn the_gate_catches_a_version_removed_and_welcomes_a_new_one() {
    assert_breaking(
        |dir| std::fs::remove_file(dir.join("events/payments.refunded/v1.json")).unwrap(),
        "payments.refunded v1: version removed",
    );
    let before = tempfile::tempdir().unwrap();
    let after = tempfile::tempdir().unwrap();
    generate(before.path());
    generate(after.path());
    let v2 = after.path().join("events/orders.created/v2.json");
    std::fs::copy(&v2, after.path().join("events/orders.created/v3.json")).unwrap();
    let output = check(after.path(), &before.path().display().to_string());
    assert!(output.status.success(), "{}", shown(&output));
    assert!(
        text(&output.stdout).contains("(new: orders.created v3)"),
        "{}",
        shown(&output)
    );
}

fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .expect("run git");
    assert!(output.status.success(), "git {args:?}: {}", shown(&output));
}

#[test]
fn by_default_the_gate_checks_uncommitted_changes_against_head() {
    let repository = tempfile::tempdir().unwrap();
    let schemas = repository.path().join("schemas");
    generate(&schemas);
    git(repository.path(), &["init", "--quiet"]);
    git(repository.path(), &["add", "."]);
    git(repository.path(), &["commit", "--quiet", "-m", "contracts"]);
    let in_repository = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .current_dir(repository.path())
            .args(args)
            .output()
            .unwrap()
    };
    let output = in_repository(&["schemas", "check"]);
    assert!(output.status.success(), "{}", shown(&output));
    edit(&schemas, "inventory.reserved/v1.json", |schema| {
        schema["$defs"]["Money"]["minimum"] = json!(1);
    });
    let output = in_repository(&["schemas", "check"]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert!(
        text(&output.stdout).contains("inventory.reserved v1: /lines/*/unit_price_cents: type narrowed or changed: minimum 0 → 1"),
        "{}",
        shown(&output)
    );
    let output = in_repository(&["schemas", "check", "--against", "no-such-revision"]);
    assert_eq!(output.status.code(), Some(2), "{}", shown(&output));
    assert!(
        text(&output.stderr).contains("neither a directory nor a revision"),
        "{}",
        shown(&output)
    );
}
