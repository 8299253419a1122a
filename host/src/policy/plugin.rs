//! Loading a plugin: compile, check its imports against the allow-list and its
//! exports against the `policy` world, and pre-instantiate it.

use super::artifact_cache::ArtifactCache;
use super::bindings::{Contract, PolicyPre};
use super::engine::PolicyEngine;
use super::host_api::HostState;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;

/// Interfaces a plugin may import. The `cachet:policy` ones are what the host
/// grants; the WASI ones are what the Rust standard library of a
/// `wasm32-wasip2` guest imports on its own, linked against an empty context
/// (no preopened directories, no environment or arguments). Anything else —
/// filesystem, sockets, HTTP — is refused at load time.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "cachet:policy/types@0.1.0",
    "cachet:policy/host@0.1.0",
    "cachet:policy/types@0.2.0",
    "cachet:policy/host@0.2.0",
    "cachet:policy/types@0.3.0",
    "cachet:policy/host@0.3.0",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// Whether one import name is on the allow-list. WASI entries match any
/// version; `cachet:` entries must match exactly.
fn import_allowed(name: &str) -> bool {
    ALLOWED_IMPORTS.iter().any(|allowed| {
        if allowed.starts_with("wasi:") {
            name.split('@').next() == Some(*allowed)
        } else {
            name == *allowed
        }
    })
}

/// The result of checking a component's imports.
#[derive(Debug, Clone)]
pub struct ImportCheck {
    pub imports: Vec<String>,
    pub refused: Vec<String>,
}

/// What operators see about a loaded plugin.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: usize,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Time to compile, or to load the compiled artifact from disk.
    pub compile_time: Duration,
    /// Whether the compiled code came from the on-disk artifact cache.
    pub from_artifact_cache: bool,
    pub loaded_at: SystemTime,
    /// How an instance starts each request afresh with `instance_reuse = 1`.
    pub state_reset: StateReset,
}

/// How a plugin's instance gets a new instance's state for each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateReset {
    /// The host wrote a reset into the component: one instance serves many requests, its
    /// memory and globals restored after each.
    Written,
    /// A new instance per request, for this reason (the component's shape).
    Unavailable(String),
}

impl StateReset {
    /// As `/status` and the startup log show it.
    pub fn describe(&self) -> String {
        match self {
            Self::Written => "reset between requests".into(),
            Self::Unavailable(why) => format!("new instance per request ({why})"),
        }
    }
}

/// A checked, pre-instantiated plugin, ready for instances.
pub struct LoadedPlugin {
    pub(crate) pre: PolicyPre<HostState>,
    pub info: PluginInfo,
    /// What was compiled (the file's bytes, state reset written in): names its artifact.
    pub(crate) compiled_sha256: String,
}

impl LoadedPlugin {
    /// Reads and loads the plugin at `path` exactly as `serve` does.
    /// Compiling takes 10–200 ms: call this off the request path.
    pub fn load(engine: &PolicyEngine, path: &Path) -> anyhow::Result<Self> {
        Self::load_cached(engine, path, None)
    }

    /// Like [`LoadedPlugin::load`], reusing compiled code from `cache`.
    pub fn load_cached(
        engine: &PolicyEngine,
        path: &Path,
        cache: Option<&ArtifactCache>,
    ) -> anyhow::Result<Self> {
        let bytes = crate::file_read::read(path, crate::file_read::PLUGIN_MAX)
            .map_err(|e| anyhow::anyhow!("cannot read plugin {}: {e}", path.display()))?;
        Self::from_bytes(engine, path, &bytes, cache)
    }

    pub fn from_bytes(
        engine: &PolicyEngine,
        path: &Path,
        bytes: &[u8],
        cache: Option<&ArtifactCache>,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let sha256 = hex::encode(Sha256::digest(bytes));
        // A core module from wit-bindgen (wasm32-unknown-unknown) is wrapped here, so
        // `plugin = "target/.../x.wasm"` works straight from cargo; `cachet build` does the
        // same ahead of time. Either way the host writes its state reset in when the module
        // allows it (`reset.rs`). The hash stays the file's: it names what the operator deployed.
        let (component_bytes, state_reset) = match super::componentize::with_reset(bytes) {
            Ok(resettable) => (resettable, StateReset::Written),
            Err(why) if super::componentize::is_core_module(bytes) => (
                super::componentize::componentize(bytes)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                StateReset::Unavailable(why),
            ),
            Err(why) => (bytes.to_vec(), StateReset::Unavailable(why)),
        };
        // Compiled code is named by what is compiled: the reset changes the bytes.
        let compiled_sha256 = hex::encode(Sha256::digest(&component_bytes));
        let compiled = match cache {
            Some(cache) => {
                cache.component(engine.engine(), path, &component_bytes, &compiled_sha256)
            }
            None => Component::new(engine.engine(), &component_bytes).map(|c| (c, false)),
        };
        let (component, from_artifact_cache) = compiled.map_err(|e| {
            anyhow::anyhow!(
                "{} is not a valid WebAssembly component: {}",
                path.display(),
                root_cause(&e)
            )
        })?;
        let check = check_imports(engine, &component);
        if !check.refused.is_empty() {
            anyhow::bail!(
                "{} imports interfaces the host does not grant: {}",
                path.display(),
                check.refused.join(", ")
            );
        }
        let ty = component.component_type();
        // The reset is the host's, not the plugin's: operators see what the plugin exports.
        let exports: Vec<String> = ty
            .exports(engine.engine())
            .map(|(name, _)| name.to_owned())
            .filter(|name| name != super::reset::RESET_EXPORT)
            .collect();
        let instance_pre = engine.linker().instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!("{} cannot be linked: {}", path.display(), root_cause(&e))
        })?;
        // Each version adds hooks the earlier ones lack; `PolicyPre::new` then
        // checks every export's type against that version's world, once, here.
        let contract = Contract::of_exports(&exports);
        let state_reset = match state_reset {
            StateReset::Written if contract != Contract::V3 => StateReset::Unavailable(format!(
                "its hooks take cachet:policy@{} resources, which a reset does not cover",
                contract.version()
            )),
            other => other,
        };
        let resettable = state_reset == StateReset::Written;
        let pre = PolicyPre::new(instance_pre, contract, resettable).map_err(|e| {
            anyhow::anyhow!(
                "{} does not implement the cachet:policy/policy world (0.1.0, 0.2.0 or 0.3.0): {}",
                path.display(),
                root_cause(&e)
            )
        })?;
        Ok(Self {
            pre,
            compiled_sha256,
            info: PluginInfo {
                path: path.to_path_buf(),
                sha256,
                size_bytes: bytes.len(),
                imports: check.imports,
                exports,
                compile_time: started.elapsed(),
                from_artifact_cache,
                loaded_at: SystemTime::now(),
                state_reset,
            },
        })
    }
}

impl LoadedPlugin {
    /// The `cachet:policy` version the component implements.
    pub fn contract_version(&self) -> &'static str {
        self.pre.contract().version()
    }

    /// Proves the plugin can be instantiated under default limits and runs
    /// the test vectors it declares, before it may serve.
    pub fn run_self_tests(&self, engine: &PolicyEngine) -> anyhow::Result<()> {
        super::self_test::run(engine, self)
    }

    /// Marks this plugin's compiled code as what its file serves now, in the artifact cache's
    /// bound. Call once the plugin is accepted: a refused build must not evict the serving one.
    pub fn keep_artifact(&self, cache: Option<&ArtifactCache>) {
        if let Some(cache) = cache {
            cache.remember(&self.info.path, &self.compiled_sha256);
        }
    }
}

fn check_imports(engine: &PolicyEngine, component: &Component) -> ImportCheck {
    let ty = component.component_type();
    // Type and resource-type imports (from a world's `use`) name types, not
    // capabilities: only instances and functions can be called.
    let imports: Vec<String> = ty
        .imports(engine.engine())
        .filter(|(_, item)| !matches!(item.ty, ComponentItem::Type(_) | ComponentItem::Resource(_)))
        .map(|(name, _)| name.to_owned())
        .collect();
    let refused = imports
        .iter()
        .filter(|name| !import_allowed(name))
        .cloned()
        .collect();
    ImportCheck { imports, refused }
}

/// Longest error chain kept, in bytes: a backtrace of many frames is cut in its middle.
const MAX_CAUSE_BYTES: usize = 2048;

/// The full chain of a wasmtime error on one line: a trap's wasm backtrace
/// spans several, and a log line (or a status field) must stay one record.
/// Control, line-separator and bidi characters are escapes: the backtrace
/// carries the plugin's own module and function names, which wrote raw CRs,
/// terminal escapes and right-to-left overrides into the log and onto the
/// terminal of `cachet status` and `cachet explain`. Bounded in length.
pub(crate) fn root_cause(e: &wasmtime::Error) -> String {
    let joined = format!("{e:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    let line = crate::one_line::one_line(&joined);
    if line.len() <= MAX_CAUSE_BYTES {
        return line.into_owned();
    }
    // The chain ends with the trap itself, after the backtrace: both ends are kept.
    let mut head = MAX_CAUSE_BYTES / 2;
    while !line.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = line.len() - MAX_CAUSE_BYTES / 2;
    while !line.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{} … {}", &line[..head], &line[tail..])
}

#[cfg(test)]
mod tests {
    use super::import_allowed;

    #[test]
    fn allow_list_matches_wasi_by_name_and_cachet_exactly() {
        assert!(import_allowed("wasi:io/streams@0.2.6"));
        assert!(import_allowed("cachet:policy/host@0.1.0"));
        assert!(import_allowed("cachet:policy/host@0.2.0"));
        assert!(import_allowed("cachet:policy/host@0.3.0"));
        assert!(!import_allowed("cachet:policy/host@0.4.0"));
        assert!(!import_allowed("wasi:filesystem/types@0.2.6"));
        assert!(!import_allowed("wasi:sockets/tcp@0.2.6"));
        assert!(!import_allowed("wasi:io/streamsx@0.2.6"));
    }

    /// Names a plugin chose (its module's, its functions') reach a trap's text: they come out
    /// on one line, their control and bidi characters escaped, and the whole bounded.
    #[test]
    fn an_error_chain_is_one_escaped_bounded_line() {
        let e = wasmtime::Error::msg("trap in EVIL\r\u{1b}[31mRED\u{202e}X\u{2028}Y")
            .context("calling on-request\nbacktrace: frame 1");
        let cause = super::root_cause(&e);
        assert!(!cause
            .chars()
            .any(|c| c.is_control() || c == '\u{202e}' || c == '\u{2028}'));
        assert!(
            cause.contains("calling on-request | backtrace: frame 1"),
            "{cause}"
        );
        let long = wasmtime::Error::msg("wasm trap: unreachable")
            .context(format!("backtrace: {}", "é".repeat(4000)));
        let cut = super::root_cause(&long);
        assert!(
            cut.len() <= super::MAX_CAUSE_BYTES + " … ".len(),
            "{}",
            cut.len()
        );
        assert!(cut.starts_with("backtrace: é") && cut.ends_with("wasm trap: unreachable"));
    }
}
