/// A value from the tenant's `[tenant.plugin_config]` table, if set.
///
/// Natively (in tests) values come from `testing::set_config`.
pub fn config(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::__private::host_config(key)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::config_value(key)
    }
}
