//! `cachet new-plugin NAME`: a plugin crate that builds and tests as is.

use anyhow::Context;
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

/// Names a crate's library cannot take: Rust's keywords and the built-in crates (Cargo
/// refuses them, or the library's name would not compile).
const RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// What the SDK's prelude brings into scope under a type's name: a policy type named the
/// same would shadow it and the generated code would not compile (`policy` gave
/// `impl Policy for Policy`).
const PRELUDE_TYPES: &[&str] = &[
    "CacheControl",
    "Duration",
    "HeaderEdits",
    "OriginFailure",
    "Policy",
    "Query",
    "QueryParam",
    "Request",
    "RequestDecision",
    "RequestEdits",
    "Response",
    "ResponseDecision",
    "StoreDirective",
    "SyntheticResponse",
    "TestVector",
];

/// Rust's own prelude: the generated code names `Vec`, `String` and `Some` and would not
/// compile with a unit struct of that name in scope (`vec` gave `pub struct Vec;`).
const STD_PRELUDE_TYPES: &[&str] = &[
    "AsMut",
    "AsRef",
    "Box",
    "Clone",
    "Copy",
    "Default",
    "Drop",
    "Eq",
    "Err",
    "Extend",
    "Fn",
    "FnMut",
    "FnOnce",
    "From",
    "FromIterator",
    "Into",
    "IntoIterator",
    "Iterator",
    "None",
    "Ok",
    "Option",
    "Ord",
    "PartialEq",
    "PartialOrd",
    "Result",
    "Send",
    "Sized",
    "Some",
    "String",
    "Sync",
    "ToOwned",
    "ToString",
    "TryFrom",
    "TryInto",
    "Unpin",
    "Vec",
];

/// The crate the generated one depends on: a plugin of that name would depend on itself.
const SDK_CRATE: &str = "cachet_sdk";

/// The policy type's name for crate `name`: its words capitalised, with `Policy` added when
/// that would shadow a prelude item or is no name at all.
fn type_name(name: &str) -> String {
    let words: String = name
        .split(['-', '_'])
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or(String::new(), |f| {
                f.to_ascii_uppercase().to_string() + c.as_str()
            })
        })
        .collect();
    let taken = PRELUDE_TYPES.contains(&words.as_str())
        || STD_PRELUDE_TYPES.contains(&words.as_str())
        || words == "Self";
    if taken {
        words + "Policy"
    } else {
        words
    }
}

fn is_crate_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && !RESERVED.contains(&name.replace('-', "_").as_str())
        && name.replace('-', "_") != SDK_CRATE
}

/// Creates the crate in `dir` (which must not exist yet).
pub fn new_plugin(name: &str, dir: &Path, sdk: &SdkSource) -> anyhow::Result<()> {
    if !is_crate_name(name) {
        anyhow::bail!(
            "{name:?} is not a crate name: use letters, digits, '-' or '_', starting with a letter, and no Rust keyword, built-in crate's name or cachet-sdk"
        );
    }
    // A dangling symlink is there too: writing through it would create its target.
    if dir.symlink_metadata().is_ok() {
        anyhow::bail!("{} already exists", dir.display());
    }
    let type_name = type_name(name);
    let files = [
        ("Cargo.toml", cargo_toml(name, sdk)),
        ("src/lib.rs", lib_rs(&type_name)),
        (".gitignore", "target/\n".to_owned()),
        (".cargo/config.toml", CARGO_CONFIG.to_owned()),
    ];
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // Claims the folder: one made meanwhile by someone else is theirs, never written into or
    // removed below.
    std::fs::create_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!("{} already exists", dir.display()),
        _ => anyhow::Error::new(e).context(format!("cannot create {}", dir.display())),
    })?;
    let written = files.iter().try_for_each(|(name, text)| {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    });
    // Half a crate would make the next try say "already exists": none is left.
    if written.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    written
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

#[cfg(test)]
mod tests {
    use super::{is_crate_name, new_plugin, type_name, SdkSource, PRELUDE_TYPES};

    #[test]
    fn type_names_never_shadow_the_prelude() {
        assert_eq!(type_name("my-policy"), "MyPolicy");
        assert_eq!(type_name("edge_rules"), "EdgeRules");
        assert_eq!(type_name("policy"), "PolicyPolicy");
        assert_eq!(type_name("request"), "RequestPolicy");
        assert_eq!(type_name("duration"), "DurationPolicy");
        assert_eq!(type_name("vec"), "VecPolicy");
        assert_eq!(type_name("some"), "SomePolicy");
        assert!(!is_crate_name("cachet-sdk"));
        assert!(!is_crate_name("cachet_sdk"));
        assert!(!is_crate_name("self"));
        assert!(!is_crate_name("fn"));
        assert!(!is_crate_name("proc-macro"));
        assert!(is_crate_name("selfish"));
    }

    /// Every type the SDK's prelude exports is known here (a new one would be shadowed).
    #[test]
    fn the_prelude_list_matches_the_sdk() {
        let prelude = include_str!("../../guest-sdk/src/prelude.rs");
        let exported = prelude
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .filter(|word| word.starts_with(|c: char| c.is_ascii_uppercase()))
            .filter(|word| !["Everything"].contains(word));
        for word in exported {
            assert!(
                PRELUDE_TYPES.contains(&word),
                "{word} is not in PRELUDE_TYPES"
            );
        }
    }

    /// A folder that cannot be made is named in the error; a dangling link is not followed.
    #[test]
    fn a_folder_that_cannot_be_made_is_named_and_a_dangling_link_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let sdk = SdkSource::Published("0.1.0");
        let file = tmp.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let under_a_file = file.join("sub");
        let err = new_plugin("p", &under_a_file, &sdk).unwrap_err();
        assert!(
            format!("{err:#}").contains(&file.display().to_string()),
            "{err:#}"
        );
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
        let err = new_plugin("p", &dangling, &sdk).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        assert!(!tmp.path().join("nowhere").exists());
        let fresh = tmp.path().join("fresh");
        new_plugin("p", &fresh, &sdk).unwrap();
        assert!(fresh.join("src/lib.rs").is_file());
    }
}
