//! `cachet new-plugin NAME`: a plugin crate that builds and tests as is.

use std::path::{Path, PathBuf};

/// Where the new crate gets `cachet-sdk` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// A local SDK folder (a cachet checkout's `guest-sdk/`).
    Path(PathBuf),
    /// The published crate, at this cachet's version.
    Published(&'static str),
}

impl SdkSource {
    /// `--sdk DIR` when given (it must hold the SDK); otherwise the SDK of the
    /// checkout this binary sits in (found from the running executable, so a
    /// moved checkout still works); otherwise the published crate. Nothing is
    /// baked in at compile time.
    pub fn find(flag: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(dir) = flag {
            return match sdk_in(dir) {
                Some(sdk) => Ok(Self::Path(sdk)),
                None => anyhow::bail!(
                    "{} is not the cachet SDK (no Cargo.toml for cachet-sdk there)",
                    dir.display()
                ),
            };
        }
        let exe = std::env::current_exe().ok();
        let beside_binary = exe
            .iter()
            .flat_map(|exe| exe.ancestors().skip(1))
            .find_map(|dir| sdk_in(&dir.join("guest-sdk")));
        Ok(beside_binary.map_or(Self::Published(env!("CARGO_PKG_VERSION")), Self::Path))
    }

    fn dependency(&self) -> String {
        match self {
            Self::Path(path) => format!("{{ path = {:?} }}", path.display().to_string()),
            Self::Published(version) => format!("{version:?}"),
        }
    }
}

/// `dir` canonicalised when it holds the `cachet-sdk` crate.
fn sdk_in(dir: &Path) -> Option<PathBuf> {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    manifest
        .lines()
        .any(|l| l.trim() == "name = \"cachet-sdk\"")
        .then(|| dir.canonicalize().ok())
        .flatten()
}

fn is_crate_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
}

/// Creates the crate in `dir` (which must not exist yet).
pub fn new_plugin(name: &str, dir: &Path, sdk: &SdkSource) -> anyhow::Result<()> {
    if !is_crate_name(name) {
        anyhow::bail!(
            "{name:?} is not a crate name: use letters, digits, '-' or '_', starting with a letter"
        );
    }
    if dir.exists() {
        anyhow::bail!("{} already exists", dir.display());
    }
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
    std::fs::write(dir.join("Cargo.toml"), cargo_toml(name, sdk))?;
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

fn cargo_toml(name: &str, sdk: &SdkSource) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
# cdylib only: with an rlib as well, Cargo skips LTO and the component is slower.
crate-type = ["cdylib"]

[dependencies]
cachet-sdk = {sdk}

# A plugin is its own workspace, built by `cachet build` (wasm32-unknown-unknown).
[workspace]

[profile.release]
opt-level = 3
lto = true
strip = true
codegen-units = 1
panic = "abort"
"#,
        sdk = sdk.dependency()
    )
}

fn lib_rs(type_name: &str) -> String {
    format!(
        r#"//! A cachet cache policy. Build, check and self-test: cachet build
//! It writes target/cachet/<crate>.wasm, the component to name in `plugin = ...`.

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
