//! Core WebAssembly modules → policy components.
//!
//! A policy built for `wasm32-unknown-unknown` with wit-bindgen is a core module that imports
//! only the `cachet:policy` interfaces (its standard library has no I/O: no stdio, environment,
//! clocks or exit). Wrapping it into a component here, instead of building for `wasm32-wasip2`,
//! leaves out the WASI adapter, its shim modules and ~30 lowered WASI imports that every fresh
//! instance would otherwise have to set up: that is most of what a fresh instance per request
//! costs (see `tests/bench/profile.sh`). Components from any toolchain still load unchanged.

/// A core module's preamble: magic, then version 1 with layer 0.
const CORE_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// Whether `bytes` is a core WebAssembly module (not a component).
pub fn is_core_module(bytes: &[u8]) -> bool {
    bytes.starts_with(&CORE_PREAMBLE)
}

/// Wraps a core module built with wit-bindgen (it carries its WIT world in a custom section)
/// into a component, validating the result.
pub fn componentize(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder.module(module).map_err(|e| {
        anyhow::anyhow!(
            "the core module carries no usable WIT world (build it with cachet-sdk or \
             wit-bindgen): {e:#}"
        )
    })?;
    encoder
        .validate(true)
        .encode()
        .map_err(|e| anyhow::anyhow!("cannot turn the core module into a component: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid core module and component: a preamble and nothing else.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn tells_core_modules_from_components() {
        assert!(is_core_module(EMPTY_MODULE));
        assert!(!is_core_module(EMPTY_COMPONENT));
        assert!(!is_core_module(b"\0asm"));
    }

    #[test]
    fn a_module_without_a_policy_world_does_not_become_a_policy() {
        // No component-type section: either refused here, or a component that exports
        // nothing, which loading refuses for not implementing the policy world.
        if let Ok(component) = componentize(EMPTY_MODULE) {
            assert!(!is_core_module(&component));
            let engine = crate::policy::PolicyEngine::new(1).expect("engine");
            let path = std::path::Path::new("empty.wasm");
            let loaded = crate::policy::LoadedPlugin::from_bytes(&engine, path, &component, None);
            let err = loaded.err().expect("an empty component is no policy");
            assert!(err.to_string().contains("world"), "{err}");
        }
    }
}
