//! Per-tenant hard limits on a plugin, enforced by the host.

use std::time::Duration;

/// Limits applied to every instance of one tenant's plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginLimits {
    /// Maximum linear memory of the guest, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget of one hook call (enforced by epoch interruption).
    pub hook_timeout: Duration,
    /// Maximum total bytes of the key parts a plugin returns.
    pub max_key_bytes: usize,
    /// Maximum number of key parts a plugin returns.
    pub max_key_parts: usize,
    /// Maximum body size of a synthetic response.
    pub max_synthetic_body_bytes: usize,
    /// How many requests one instance serves before it is discarded; 1 means a
    /// fresh instance per request (no state can leak between requests).
    pub instance_reuse: u32,
    /// Most instances of this tenant's plugin alive at once (in calls and idle).
    pub max_instances: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 16 << 20,
            hook_timeout: Duration::from_millis(10),
            max_key_bytes: 4096,
            max_key_parts: 32,
            max_synthetic_body_bytes: 1 << 20,
            instance_reuse: 1,
            max_instances: 64,
        }
    }
}

/// What a hook's answer may hold besides its body and key: request edits and a path (each up
/// to a request head's size), reasons, synthetic headers, a load-time self-test's vectors.
const ANSWER_ALLOWANCE: usize = 4 << 20;

impl PluginLimits {
    /// Most bytes the host copies out of the guest in one call (wasmtime's hostcall fuel,
    /// 128 MiB unless set): the largest answer the host could accept, with room to spare.
    /// Returned strings and lists are copied whole before the host checks them, and a guest
    /// can hand back thousands of key parts that all point at one buffer: cheap for it, a
    /// copy each for the host, outside the guest's memory limit and its deadline.
    pub fn copy_budget(&self) -> usize {
        let per_part = std::mem::size_of::<String>();
        ANSWER_ALLOWANCE
            .saturating_add(self.max_synthetic_body_bytes)
            .saturating_add(self.max_key_bytes)
            .saturating_add(self.max_key_parts.saturating_mul(per_part))
    }
}

/// Store-level resource limiter that also remembers whether it refused memory,
/// so a guest that traps after a failed allocation is reported as "memory",
/// and whether the guest grew its memory past the initial size.
pub(crate) struct MemoryLimiter {
    /// The tenant's memory limit, for all of an instance's memories together.
    pub max_bytes: usize,
    pub refused: bool,
    pub grew: bool,
    /// Bytes of all the instance's memories so far.
    pub held: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let held = self.held.saturating_sub(current).saturating_add(desired);
        if held > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        self.held = held;
        // Instantiation asks for the initial size (from 0); later asks are `memory.grow`.
        if current > 0 && desired > current {
            self.grew = true;
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; 100k entries is far beyond any policy.
        Ok(desired <= 100_000)
    }
}
