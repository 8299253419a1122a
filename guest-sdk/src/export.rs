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
///
/// ```
/// use cachet_sdk::prelude::*;
///
/// struct Tunable {
///     ttl: Duration,
/// }
///
/// impl Tunable {
///     fn from_config() -> Self {
///         let seconds = config("ttl_seconds").and_then(|v| v.parse().ok());
///         Self { ttl: Duration::from_secs(seconds.unwrap_or(30)) }
///     }
/// }
///
/// impl Policy for Tunable {
///     fn on_response(&self, _req: &Request, _resp: &Response) -> ResponseDecision {
///         ResponseDecision::store(self.ttl)
///     }
/// }
///
/// cachet_sdk::export_policy!(Tunable, Tunable::from_config());
/// ```
#[macro_export]
macro_rules! export_policy {
    ($policy:ty, $init:expr $(,)?) => {
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _check_policy: fn() = $crate::__private::assert_policy::<$policy>;
            let _check_init: fn() -> $policy = || $init;
        };

        // Names inside are prefixed: macro_rules items are not hygienic, and
        // they must not shadow the plugin's own type named by `$policy`.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static __CACHET_POLICY: $policy = $init;
            }

            struct __CachetPolicyExport;

            impl $crate::__private::Guest for __CachetPolicyExport {
                fn configure(settings: ::std::vec::Vec<$crate::__private::HostSetting>) {
                    $crate::__private::configure(settings)
                }

                fn on_request(
                    req: $crate::__private::HostRequestHead,
                ) -> $crate::__private::HostRequestAnswer {
                    __CACHET_POLICY.with(|policy| $crate::__private::on_request(policy, req))
                }

                fn cache_key(
                    req: $crate::__private::HostRequestHead,
                ) -> ::std::vec::Vec<::std::string::String> {
                    __CACHET_POLICY.with(|policy| $crate::__private::cache_key(policy, req))
                }

                fn on_response(
                    req: $crate::__private::HostRequestHead,
                    resp: $crate::__private::HostResponseHead,
                ) -> $crate::__private::HostResponsePlan {
                    __CACHET_POLICY.with(|policy| $crate::__private::on_response(policy, req, resp))
                }

                fn on_deliver(
                    req: $crate::__private::HostRequestHead,
                    resp: $crate::__private::HostResponseHead,
                ) -> ::std::vec::Vec<$crate::__private::HostHeaderEdit> {
                    __CACHET_POLICY.with(|policy| $crate::__private::on_deliver(policy, req, resp))
                }

                fn on_error(
                    req: $crate::__private::HostRequestHead,
                    failure: $crate::__private::HostOriginFailure,
                ) -> ::std::option::Option<$crate::__private::HostSyntheticResponse> {
                    __CACHET_POLICY.with(|policy| $crate::__private::on_error(policy, req, failure))
                }

                fn vary_value(
                    req: $crate::__private::HostRequestHead,
                    name: ::std::string::String,
                ) -> ::std::option::Option<::std::string::String> {
                    __CACHET_POLICY.with(|policy| $crate::__private::vary_value(policy, req, name))
                }

                fn self_test() -> ::std::vec::Vec<$crate::__private::HostTestVector> {
                    __CACHET_POLICY.with(|policy| $crate::__private::self_test(policy))
                }
            }

            $crate::__private::bindings::export_world!(
                __CachetPolicyExport with_types_in $crate::__private::bindings
            );
        };
    };
    ($policy:ty $(,)?) => {
        $crate::export_policy!($policy, <$policy as ::core::default::Default>::default());
    };
}
