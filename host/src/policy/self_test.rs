//! Checks a plugin must pass before it may serve: it instantiates under the
//! default limits, and the test vectors it declares give the decisions it
//! expects.

use super::engine::PolicyEngine;
use super::instance::InstancePool;
use super::limits::PluginLimits;
use super::plugin::LoadedPlugin;
use super::TenantContext;
use std::sync::Arc;

pub(crate) fn run(engine: &PolicyEngine, plugin: &LoadedPlugin) -> anyhow::Result<()> {
    let pool = InstancePool::for_checks(
        engine.clone(),
        plugin,
        Arc::new(TenantContext::default()),
        PluginLimits::default(),
    );
    pool.instantiate_check().map_err(|fault| {
        anyhow::anyhow!(
            "{} failed its start-up check: {fault}",
            plugin.info.path.display()
        )
    })
}
