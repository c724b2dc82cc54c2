//! `orderflow schemas`: the event contracts as files. The Rust types are the source of truth; `generate`
//! writes their JSON Schemas under `schemas/events/` to be checked in beside the code, where reviews and
//! other teams read them and a test holds them to the code.

use anyhow::{Context as _, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Work with the event contracts (JSON Schemas, draft 2020-12).
///
/// Each event type and version has a schema at `schemas/events/<type>/<version>.json`, and the envelope
/// every event travels in one at `schemas/events/envelope.json`. They are generated from the Rust types;
/// consumers check every incoming event against them and dead-letter one that breaks them.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Write the schemas of this build's event types and versions, replacing what is there.
    ///
    /// A file under `<DIR>/events/` that this build no longer generates is deleted, and said so: a
    /// version still in circulation must stay in the code. Run it after changing an event type, and
    /// commit the result with the change.
    Generate {
        /// The schemas directory (the repository's `schemas/`).
        #[arg(long, value_name = "DIR", default_value = "schemas")]
        dir: PathBuf,
    },
}

pub fn run(args: Args) -> ExitCode {
    let outcome = match args.action {
        Action::Generate { dir } => generate(&dir),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn generate(dir: &Path) -> Result<()> {
    let files = contracts::schema::files();
    let mut changed = 0;
    for (path, text) in &files {
        let target = dir.join(path);
        if std::fs::read_to_string(&target).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
        println!("wrote {}", target.display());
        changed += 1;
    }
    let generated: BTreeSet<PathBuf> = files.iter().map(|(path, _)| dir.join(path)).collect();
    let mut deleted = 0;
    for stale in json_files(&dir.join("events"))?.difference(&generated) {
        std::fs::remove_file(stale)
            .with_context(|| format!("cannot delete {}", stale.display()))?;
        println!(
            "deleted {} (this build no longer has that type or version)",
            stale.display()
        );
        deleted += 1;
    }
    println!(
        "{} schema files in {}: {changed} written, {} unchanged, {deleted} deleted",
        files.len(),
        dir.display(),
        files.len() - changed
    );
    Ok(())
}

/// Every `.json` file under `dir`, however deep; none when `dir` does not exist.
fn json_files(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let entries = match std::fs::read_dir(&next) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", next.display()));
            }
        };
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read {}", next.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|extension| extension == "json")
            {
                found.insert(path);
            }
        }
    }
    Ok(found)
}
