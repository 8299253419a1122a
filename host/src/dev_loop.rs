//! `cachet dev`: the plugin author's loop. Builds the policy crate as `cachet build` does,
//! publishes the component at the path a tenant's `plugin =` names, then rebuilds on every
//! saved change to the crate's sources. The running proxy hot-reloads the file (its plugin
//! watcher, SIGHUP or `POST /reload`). A build that fails, or a component that fails its
//! self-test, is reported and not published: the last good version keeps serving.

use crate::build_plugin;
use anyhow::{bail, Context};
use notify::{RecursiveMode, Watcher};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Saves come in bursts (editors write, rename, touch): changes are gathered this long
/// before a rebuild starts.
const SETTLE: Duration = Duration::from_millis(300);

/// Builds `dir` now and after every change, publishing the component at `out`. Runs until
/// the process is stopped.
pub fn run(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", dir.display()))?;
    if !dir.join("Cargo.toml").is_file() {
        bail!(
            "{} has no Cargo.toml: give the folder of the policy crate",
            dir.display()
        );
    }
    // Components are checked here before one is published; under `target/`, which the
    // watcher ignores.
    let staging = dir.join("target").join("cachet-dev");
    let (changed, changes) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let _ = changed.send(event);
        }
    })
    .context("cannot watch the crate's files")?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    println!(
        "cachet dev: building {} into {} (Ctrl-C stops)",
        dir.display(),
        out.display()
    );
    loop {
        match build_and_publish(&dir, &staging, out) {
            Ok(()) => println!(
                "cachet dev: {} updated; watching for changes",
                out.display()
            ),
            Err(e) => eprintln!(
                "cachet dev: not published, {} keeps its last good version: {e:#}",
                out.display()
            ),
        }
        wait_for_source_change(&dir, &changes)?;
    }
}

/// One build into `staging` (checked there, as `serve` would load it), then one atomic
/// replace of `out`.
fn build_and_publish(dir: &Path, staging: &Path, out: &Path) -> anyhow::Result<()> {
    let built = build_plugin::build(dir, Some(staging))?;
    let [component] = built.as_slice() else {
        bail!(
            "the build produced {} policy components; cachet dev publishes one \
             (build a crate with a single cdylib)",
            built.len()
        );
    };
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    build_plugin::write_atomically(out, &bytes)
}

/// Blocks until a file that affects the build changes, then lets the burst settle.
fn wait_for_source_change(
    dir: &Path,
    changes: &mpsc::Receiver<notify::Event>,
) -> anyhow::Result<()> {
    loop {
        let event = changes.recv().context("the file watcher stopped")?;
        if event.paths.iter().any(|path| affects_build(dir, path)) {
            break;
        }
    }
    std::thread::sleep(SETTLE);
    while changes.try_recv().is_ok() {}
    Ok(())
}

/// Sources, manifests and WIT files of the crate, not its build output or editors' files.
fn affects_build(dir: &Path, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(dir) else {
        return false;
    };
    if relative.starts_with("target") || relative.components().any(is_hidden_folder) {
        return false;
    }
    let name = relative.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    matches!(
        Path::new(name).extension().and_then(|e| e.to_str()),
        Some("rs" | "toml" | "wit")
    ) || name == "Cargo.lock"
}

fn is_hidden_folder(part: std::path::Component<'_>) -> bool {
    // `.cargo/config.toml` changes how the crate builds: it counts.
    matches!(part, std::path::Component::Normal(n)
        if n.to_str().is_some_and(|n| n.starts_with('.') && n != ".cargo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sources_manifests_and_wit_trigger_a_rebuild() {
        let dir = Path::new("/p");
        for path in [
            "/p/src/lib.rs",
            "/p/Cargo.toml",
            "/p/Cargo.lock",
            "/p/wit/policy.wit",
            "/p/.cargo/config.toml",
        ] {
            assert!(affects_build(dir, Path::new(path)), "{path}");
        }
        for path in [
            "/p/target/release/x.rs",
            "/p/src/.lib.rs.swp",
            "/p/src/lib.rs~",
            "/p/README.md",
            "/p/.git/index",
            "/elsewhere/src/lib.rs",
        ] {
            assert!(!affects_build(dir, Path::new(path)), "{path}");
        }
    }
}
