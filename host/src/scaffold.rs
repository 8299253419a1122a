//! `cachet new-plugin NAME`: a plugin crate that builds and tests as is.

use std::path::{Path, PathBuf};

/// The SDK next to this cachet's sources, when it is there (a checkout).
fn sdk_path() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    path.canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
}

fn is_crate_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
}

/// Creates the crate in `dir` (which must not exist yet).
pub fn new_plugin(name: &str, dir: &Path) -> anyhow::Result<()> {
    if !is_crate_name(name) {
        anyhow::bail!(
            "{name:?} is not a crate name: use letters, digits, '-' or '_', starting with a letter"
        );
    }
    if dir.exists() {
        anyhow::bail!("{} already exists", dir.display());
    }
    let sdk = sdk_path().ok_or_else(|| {
        anyhow::anyhow!("cannot find cachet's guest-sdk next to this binary's sources; run new-plugin from a cachet checkout build")
    })?;
    let type_name: String = name
        .split(['-', '_'])
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or(String::new(), |f| {
                f.to_ascii_uppercase().to_string() + c.as_str()
            })
        })
        .collect();
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("Cargo.toml"), cargo_toml(name, &sdk))?;
    std::fs::write(dir.join("src/lib.rs"), lib_rs(&type_name))?;
    std::fs::write(dir.join(".gitignore"), "target/\n")?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    std::fs::write(dir.join(".cargo/config.toml"), CARGO_CONFIG)?;
    Ok(())
}

/// The example plugins' build settings, shared by every new plugin: a small
/// stack keeps each instance's linear memory small, which is what a fresh
/// instance per request pays to reset.
const CARGO_CONFIG: &str = include_str!("../../plugins/.cargo/config.toml");

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
cachet-sdk = {{ path = {sdk:?} }}

# A plugin is its own workspace, built for wasm32-wasip2.
[workspace]

[profile.release]
opt-level = "s"
lto = true
strip = true
codegen-units = 1
panic = "abort"
"#,
        sdk = sdk.display().to_string()
    )
}

fn lib_rs(type_name: &str) -> String {
    format!(
        r#"//! A cachet cache policy. Build: cargo build --release --target wasm32-wasip2
//! Check before deploying: cachet check target/wasm32-wasip2/release/<crate>.wasm

use cachet_sdk::prelude::*;

#[derive(Default)]
pub struct {type_name};

impl Policy for {type_name} {{
    fn on_request(&self, req: &Request) -> RequestDecision {{
        // Logged-in users get their own pages: never share them.
        if req.cookie("session").is_some() {{
            return RequestDecision::bypass("session cookie");
        }}
        defaults::on_request(req)
    }}

    fn on_response(&self, _req: &Request, resp: &Response) -> ResponseDecision {{
        // Keep pages the origin gave no lifetime for a minute.
        if resp.status() == 200 && !resp.has_explicit_freshness() {{
            return ResponseDecision::store(Duration::from_secs(60));
        }}
        ResponseDecision::FollowOrigin
    }}

    // The host runs these before a new version may serve.
    fn self_test(&self) -> Vec<TestVector> {{
        vec![
            TestVector::get("http://example.com/page")
                .expect_cache()
                .with_response(200, &[])
                .expect_store(Duration::from_secs(60)),
            TestVector::get("http://example.com/page")
                .header("cookie", "session=1")
                .expect_bypass(),
        ]
    }}
}}

cachet_sdk::export_policy!({type_name});

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn self_test_vectors_pass() {{
        cachet_sdk::testing::check_self_tests(&{type_name});
    }}
}}
"#
    )
}
