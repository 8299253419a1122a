//! Host-side bindings generated from the single source of the contract, `wit/policy.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    // Host functions return `wasmtime::Result` so a call outside a hook (no
    // current request) traps the guest instead of panicking the host.
    imports: { default: trappable },
});

pub use self::cachet::policy::types::{Header, SyntheticResponse};
