/// Exports a [`Policy`](crate::Policy) as the plugin's implementation of the
/// `cachet:policy` world. Write it once, at the top level of the plugin crate.
///
/// * `export_policy!(MyPolicy)` builds the policy with `Default::default()`.
/// * `export_policy!(MyPolicy, MyPolicy::new(..))` builds it with the given
///   expression instead.
///
/// Either way the value is built lazily on the first hook call and then reused
/// for every request the plugin instance serves.
///
/// On non-wasm targets nothing is exported; the macro only checks that its
/// arguments type-check, so the plugin crate also builds for native tests.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty, $init:expr $(,)?) => {
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _check_policy: fn() = $crate::__private::assert_policy::<$policy>;
            let _check_init: fn() -> $policy = || $init;
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static POLICY: $policy = $init;
            }

            struct PolicyExport;

            impl $crate::__private::Guest for PolicyExport {
                fn on_request(
                    req: &$crate::__private::HostRequest,
                ) -> $crate::__private::HostRequestDecision {
                    POLICY.with(|policy| $crate::__private::on_request(policy, req))
                }

                fn cache_key(
                    req: &$crate::__private::HostRequest,
                ) -> ::std::vec::Vec<::std::string::String> {
                    POLICY.with(|policy| $crate::__private::cache_key(policy, req))
                }

                fn on_response(
                    req: &$crate::__private::HostRequest,
                    resp: &$crate::__private::HostResponse,
                ) -> $crate::__private::HostResponseDecision {
                    POLICY.with(|policy| $crate::__private::on_response(policy, req, resp))
                }
            }

            $crate::__private::bindings::export_world!(
                PolicyExport with_types_in $crate::__private::bindings
            );
        };
    };
    ($policy:ty $(,)?) => {
        $crate::export_policy!($policy, <$policy as ::core::default::Default>::default());
    };
}
