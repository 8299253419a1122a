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
/// into a component, validating the result. wit-component asserts on some modules it should
/// refuse (a function exported under both of its naming styles, `f` and `cm32p2||f`): that
/// panic took down the start, or the reload thread and with it every later reload of every
/// tenant. It is a refusal here.
pub fn componentize(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    super::contained_panic::contain(|| wrap(module)).unwrap_or_else(|panic| {
        anyhow::bail!(
            "cannot turn the core module into a component: wit-component failed on it (an \
             export named twice, once as `cm32p2||name`?): {panic}"
        )
    })
}

fn wrap(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    if !carries_world(module) {
        anyhow::bail!(
            "not a valid WebAssembly component: a core module without a WIT world \
             (build policies with `cachet build`, or with cachet-sdk / wit-bindgen)"
        );
    }
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

/// A component for `bytes` (a policy's core module, or a component wit-component made from
/// one) with the host's state reset written in (`reset.rs`), or why none can be made. Other
/// components (several core modules: a WASI adapter, shims, another language's runtime) are
/// re-created per request instead.
///
/// Reading a component's world back (wit-parser) and rewriting its module (wasmparser,
/// wasm-encoder) happen on every plugin load, on bytes the plugin's author chose, in crates
/// that assert as well as refuse: a panic there would stop the reload thread, and every later
/// reload with it, as [`componentize`]'s once did. It is a refusal here too.
pub fn with_reset(bytes: &[u8]) -> Result<Vec<u8>, String> {
    super::contained_panic::contain(|| reset_component(bytes)).unwrap_or_else(|panic| {
        Err(format!(
            "the tools that write the reset in failed on it: {panic}"
        ))
    })
}

fn reset_component(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let module = if is_core_module(bytes) {
        if !carries_world(bytes) {
            return Err("a core module without a WIT world".into());
        }
        bytes.to_vec()
    } else {
        core_module_of(bytes)?
    };
    let module = super::reset::inject(&module)?;
    componentize(&module).map_err(|e| format!("{e:#}"))
}

/// The one core module of a component, with the component's world embedded again so it can
/// be wrapped anew. Refused when the component holds more than the module and its canonical
/// glue, or passes strings in another encoding than UTF-8 (the world does not record it).
fn core_module_of(component: &[u8]) -> Result<Vec<u8>, String> {
    use wasmparser::{CanonicalFunction, CanonicalOption, Payload};
    let invalid = |e: wasmparser::BinaryReaderError| format!("not a valid component: {e}");
    let mut modules = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.map_err(invalid)? {
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                if depth == 0 {
                    modules.push(unchecked_range);
                }
                depth += 1;
            }
            Payload::ComponentSection { .. } if depth == 0 => {
                return Err("it nests components".into());
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentCanonicalSection(reader) => {
                for function in reader {
                    let options = match function.map_err(invalid)? {
                        CanonicalFunction::Lift { options, .. }
                        | CanonicalFunction::Lower { options, .. } => options,
                        _ => continue,
                    };
                    let unsupported = options.iter().any(|o| {
                        !matches!(
                            o,
                            CanonicalOption::UTF8
                                | CanonicalOption::Memory(_)
                                | CanonicalOption::Realloc(_)
                                | CanonicalOption::PostReturn(_)
                        )
                    });
                    if unsupported {
                        return Err("it uses canonical options other than UTF-8 sync calls".into());
                    }
                }
            }
            _ => {}
        }
    }
    let [range] = &modules[..] else {
        return Err(format!("it is made of {} core modules", modules.len()));
    };
    let mut module = component
        .get(range.start as usize..range.end as usize)
        .ok_or("a core module runs past the end of the component")?
        .to_vec();
    let wit_parser::decoding::DecodedWasm::Component(resolve, world) =
        wit_component::decode(component).map_err(|e| format!("cannot read its world: {e:#}"))?
    else {
        return Err("a WIT package, not a component".into());
    };
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .map_err(|e| format!("cannot embed its world: {e:#}"))?;
    Ok(module)
}

/// Whether a core module has the `component-type` custom section wit-bindgen embeds (without
/// it the encoder would produce an empty component, refused later with a less useful reason).
fn carries_world(module: &[u8]) -> bool {
    let mut rest = module.get(CORE_PREAMBLE.len()..).unwrap_or_default();
    while let Some((&id, after_id)) = rest.split_first() {
        let Some((size, body)) = leb128(after_id) else {
            return false;
        };
        let Some((section, next)) = body.split_at_checked(size) else {
            return false;
        };
        if id == 0 {
            let name = leb128(section)
                .and_then(|(len, bytes)| bytes.get(..len))
                .unwrap_or_default();
            if name.starts_with(b"component-type") {
                return true;
            }
        }
        rest = next;
    }
    false
}

/// An unsigned LEB128 number and the bytes after it.
fn leb128(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate().take(5) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
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

    /// A core module exporting `f` under both naming styles, with a world that exports it.
    fn exported_twice() -> Vec<u8> {
        let mut module = wat::parse_str(
            r#"(module
                (memory (export "memory") 1)
                (func $f)
                (export "f" (func $f))
                (export "cm32p2||f" (func $f)))"#,
        )
        .unwrap();
        let mut resolve = wit_parser::Resolve::default();
        let package = resolve
            .push_str(
                "w.wit",
                "package test:twice;\nworld w {\n  export f: func();\n}\n",
            )
            .unwrap();
        let world = resolve.select_world(&[package], Some("w")).unwrap();
        wit_component::embed_component_metadata(
            &mut module,
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
        )
        .unwrap();
        module
    }

    #[test]
    fn a_module_wit_component_fails_on_is_refused_not_a_panic() {
        let module = exported_twice();
        let err = componentize(&module).expect_err("refused");
        assert!(err.to_string().contains("cannot turn"), "{err}");
        let err = with_reset(&module).expect_err("refused");
        assert!(err.contains("cannot turn"), "{err}");
    }

    #[test]
    fn a_module_without_a_world_is_refused_with_the_reason() {
        let err = componentize(EMPTY_MODULE).expect_err("no component-type section");
        assert!(err.to_string().contains("without a WIT world"), "{err}");
        // A custom section of another name is no world either.
        let mut other = EMPTY_MODULE.to_vec();
        other.extend_from_slice(b"\x00\x05\x04name");
        assert!(!carries_world(&other));
        let mut world = EMPTY_MODULE.to_vec();
        world.extend_from_slice(b"\x00\x0f\x0ecomponent-type");
        assert!(carries_world(&world));
    }
}
