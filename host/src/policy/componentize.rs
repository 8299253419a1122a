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

    #[test]
    fn tells_core_modules_from_components() {
        let core = wasmtime::wat::parse_str("(module)").expect("core module");
        let component = wasmtime::wat::parse_str("(component)").expect("component");
        assert!(is_core_module(&core));
        assert!(!is_core_module(&component));
        assert!(!is_core_module(b"\0asm"));
    }

    #[test]
    fn a_module_without_a_world_is_refused_with_the_reason() {
        let core = wasmtime::wat::parse_str("(module)").expect("core module");
        let err = componentize(&core).expect_err("no component-type section");
        assert!(err.to_string().contains("WIT world"), "{err}");
    }
}
