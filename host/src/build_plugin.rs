//! `cachet build` and `cachet componentize`: build a policy crate for `wasm32-unknown-unknown`,
//! wrap each core module into a component (no WASI imports, so fresh instances stay cheap),
//! then load it exactly as `serve` would — imports, world, self-test vectors — before saying
//! where it is.

use anyhow::{bail, Context};
use cachet::policy::{componentize, LoadedPlugin, PolicyEngine};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target policies are built for: the standard library without any I/O.
pub const POLICY_TARGET: &str = "wasm32-unknown-unknown";

/// Builds the crate (or workspace) in `dir` and publishes a component per policy library,
/// in `out_dir` or else `<target dir>/cachet/`; returns the components' paths.
pub fn build(dir: &Path, out_dir: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    // Cargo runs inside the crate and reads `--manifest-path` from there: a folder given
    // relative to where the user is must be made absolute first.
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} has no Cargo.toml: give the folder of the policy crate",
            dir.display()
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // From inside the crate, so its .cargo/config.toml (stack size) applies.
    let output = Command::new(cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", POLICY_TARGET])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!(
            "cargo build failed (above); if the target is missing: \
             rustup target add {POLICY_TARGET}"
        );
    }
    for library in libraries_without_lto(&output.stdout) {
        eprintln!(
            "warning: {library} is also built as an rlib, so Cargo does not run LTO on its \
             component (larger, and slower per request): use crate-type = [\"cdylib\"]"
        );
    }
    let modules = wasm_artifacts(&output.stdout);
    if modules.is_empty() {
        bail!("the build produced no .wasm: a policy crate needs crate-type = [\"cdylib\"]");
    }
    let engine = PolicyEngine::new(8)?;
    let mut published = Vec::new();
    for module in modules {
        let out_dir = match out_dir {
            Some(dir) => dir.to_path_buf(),
            None => default_out_dir(&module),
        };
        published.push(publish(&engine, &module, &out_dir)?);
    }
    Ok(published)
}

/// `cachet componentize IN OUT`: wraps one core module (scripts use it after their own
/// `cargo build`); a component is copied as it is.
pub fn componentize_file(input: &Path, output: &Path) -> anyhow::Result<()> {
    write_atomically(output, &component_of(input)?)
}

/// The component for the file `input`: a core module wrapped, a component as it is.
fn component_of(input: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    if componentize::is_core_module(&bytes) {
        componentize::componentize(&bytes).with_context(|| input.display().to_string())
    } else {
        Ok(bytes)
    }
}

/// Wraps and load-checks one module, and only then writes it: a build that fails its checks
/// leaves the last good component in place, the one a proxy would load on its next start.
fn publish(engine: &PolicyEngine, module: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    let name = module
        .file_name()
        .context("an artifact without a file name")?;
    let out = out_dir.join(name);
    let bytes = component_of(module)?;
    let plugin = LoadedPlugin::from_bytes(engine, &out, &bytes, None)?;
    plugin
        .run_self_tests(engine)
        .with_context(|| format!("{} failed its self-test", out.display()))?;
    write_atomically(&out, &bytes)?;
    println!("built {} ({} bytes)", out.display(), bytes.len());
    println!("  imports: {}", plugin.info.imports.join(", "));
    println!("  self-test vectors: passed");
    Ok(out)
}

/// `<target dir>/cachet/`, beside cargo's `<target dir>/wasm32-unknown-unknown/release/`.
fn default_out_dir(module: &Path) -> PathBuf {
    module
        .ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("."), |target| target.join("cachet"))
}

/// Cargo's `compiler-artifact` messages among its JSON output lines.
fn artifact_messages(messages: &[u8]) -> impl Iterator<Item = serde_json::Value> + '_ {
    messages
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
}

/// The `.wasm` files among cargo's `compiler-artifact` messages.
fn wasm_artifacts(messages: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for message in artifact_messages(messages) {
        let files = message["filenames"].as_array().into_iter().flatten();
        found.extend(
            files
                .filter_map(|f| f.as_str())
                .filter(|f| f.ends_with(".wasm"))
                .map(PathBuf::from),
        );
    }
    found
}

/// Libraries built as a `cdylib` and an `rlib` at once: Cargo runs LTO only when every
/// crate type of a target supports it, so their component is built without.
fn libraries_without_lto(messages: &[u8]) -> Vec<String> {
    artifact_messages(messages)
        .filter(|message| {
            let types = message["target"]["crate_types"].as_array();
            let has = |kind: &str| types.is_some_and(|types| types.iter().any(|t| t == kind));
            has("cdylib") && has("rlib")
        })
        .map(|message| {
            let name = message["target"]["name"].as_str();
            name.unwrap_or("the policy").to_owned()
        })
        .collect()
}

/// Temporary file in the destination folder, then rename: a proxy watching the path
/// hot-reloads the old component or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let staging = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plugin"),
        std::process::id()
    ));
    std::fs::write(&staging, bytes).with_context(|| {
        let _ = std::fs::remove_file(&staging);
        format!("cannot write {}", staging.display())
    })?;
    std::fs::rename(&staging, path).with_context(|| {
        let _ = std::fs::remove_file(&staging);
        format!("cannot replace {}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_wasm_artifacts_in_cargo_messages() {
        let messages = br#"{"reason":"compiler-artifact","filenames":["/t/wasm32-unknown-unknown/release/a.wasm","/t/x.rlib"]}
{"reason":"build-finished","success":true}
{"reason":"compiler-artifact","filenames":["/t/wasm32-unknown-unknown/release/libdep.rlib"]}
not json"#;
        assert_eq!(
            wasm_artifacts(messages),
            vec![PathBuf::from("/t/wasm32-unknown-unknown/release/a.wasm")]
        );
        assert_eq!(
            default_out_dir(Path::new("/t/wasm32-unknown-unknown/release/a.wasm")),
            PathBuf::from("/t/cachet")
        );
    }

    #[test]
    fn names_policies_that_cargo_builds_without_lto() {
        let messages = br#"{"reason":"compiler-artifact","target":{"name":"both","crate_types":["cdylib","rlib"]},"filenames":[]}
{"reason":"compiler-artifact","target":{"name":"lean","crate_types":["cdylib"]},"filenames":[]}
{"reason":"compiler-artifact","target":{"name":"dep","crate_types":["lib"]},"filenames":[]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(libraries_without_lto(messages), ["both"]);
    }
}
