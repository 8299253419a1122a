//! Host-side bindings generated from the contract, one module per version of
//! the `cachet:policy` world the host accepts. A component exports one of
//! them; `plugin.rs` finds which and the instance calls it through `Hooks`.

use super::heads::{RequestAnswerV3, RequestHead, ResponseHead, Setting};
use super::pending::PendingFields;
use pingora::http::{RequestHeader, ResponseHeader};
use v1::cachet::policy::types as t1;
use v2::cachet::policy::types as t2;
use wasmtime::component::{
    ComponentExportIndex, ComponentNamedList, Func, InstancePre, Lift, Lower, Resource, TypedFunc,
};
use wasmtime::{AsContextMut, Store};

/// `cachet:policy@0.1.0` (`wit/policy.wit`): plugins built for it keep
/// loading and behaving as they did.
pub mod v1 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        // Host functions return `wasmtime::Result` so a call outside a hook (no
        // current request) traps the guest instead of panicking the host.
        imports: { default: trappable },
    });
}

/// `cachet:policy@0.2.0` (`wit/v0.2/policy.wit`): request, store and delivery
/// edits, backend choice, pass-for and the error hook.
pub mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2",
        world: "policy",
        imports: { default: trappable },
    });
}

/// `cachet:policy@0.3.0` (`wit/v0.3/policy.wit`): the decisions and types of
/// 0.2.0, the request handed to each hook as a value, and no import that
/// returns a string (so no shim modules in the component).
pub mod v3 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.3",
        world: "policy",
        imports: { default: trappable },
    });
}

/// The contract versions the host accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contract {
    V1,
    V2,
    V3,
}

impl Contract {
    /// The version a component implements, from the hooks only it exports.
    pub(crate) fn of_exports(exports: &[String]) -> Self {
        let has = |name: &str| exports.iter().any(|e| e == name);
        if has("configure") {
            Self::V3
        } else if has("on-error") {
            Self::V2
        } else {
            Self::V1
        }
    }

    /// As operators see it.
    pub(crate) fn version(self) -> &'static str {
        match self {
            Self::V1 => "0.1.0",
            Self::V2 => "0.2.0",
            Self::V3 => "0.3.0",
        }
    }
}

/// A pre-instantiated component of any accepted version.
pub(crate) struct PolicyPre<T: 'static> {
    instance_pre: InstancePre<T>,
    contract: Contract,
    exports: HookExports,
}

// By hand: a derive would ask `T: Clone`, which the store data is not.
impl<T: 'static> Clone for PolicyPre<T> {
    fn clone(&self) -> Self {
        Self {
            instance_pre: self.instance_pre.clone(),
            contract: self.contract,
            exports: self.exports,
        }
    }
}

/// Where each hook sits among a component's exports, found once per plugin.
#[derive(Clone, Copy)]
struct HookExports {
    on_request: ComponentExportIndex,
    cache_key: ComponentExportIndex,
    on_response: ComponentExportIndex,
    vary_value: ComponentExportIndex,
    self_test: ComponentExportIndex,
    /// 0.2.0 and later.
    on_deliver: Option<ComponentExportIndex>,
    on_error: Option<ComponentExportIndex>,
    /// 0.3.0 only.
    configure: Option<ComponentExportIndex>,
    /// The state reset the host wrote into the component (`reset.rs`), 0.3.0 only.
    reset: Option<ComponentExportIndex>,
}

impl<T: Send + 'static> PolicyPre<T> {
    /// Fails when a hook is missing or its type is not its world's: the
    /// bindings' indices check every export against the component's instance
    /// type, once, here. Instances made from `instance_pre` share those types,
    /// so hooks are called without a check per instance (the bindings' own
    /// `instantiate` repeats it every time, a tenth of a fresh instance's cost).
    ///
    /// `resettable`: the host wrote `cachet-reset` into this component. It is used for 0.3.0
    /// plugins only, whose hooks receive values: older ones receive resource handles, state
    /// of the component instance that the reset would not cover.
    pub(crate) fn new(
        instance_pre: InstancePre<T>,
        contract: Contract,
        resettable: bool,
    ) -> wasmtime::Result<Self> {
        match contract {
            Contract::V1 => {
                v1::PolicyIndices::new(&instance_pre)?;
            }
            Contract::V2 => {
                v2::PolicyIndices::new(&instance_pre)?;
            }
            Contract::V3 => {
                v3::PolicyIndices::new(&instance_pre)?;
            }
        }
        let component = instance_pre.component();
        let find = |name: &str| {
            component
                .get_export_index(None, name)
                .ok_or_else(|| wasmtime::format_err!("no export named `{name}`"))
        };
        let since = |first: Contract, name: &str| {
            if contract as u8 >= first as u8 {
                find(name).map(Some)
            } else {
                Ok(None)
            }
        };
        let exports = HookExports {
            on_request: find("on-request")?,
            cache_key: find("cache-key")?,
            on_response: find("on-response")?,
            vary_value: find("vary-value")?,
            self_test: find("self-test")?,
            on_deliver: since(Contract::V2, "on-deliver")?,
            on_error: since(Contract::V2, "on-error")?,
            configure: since(Contract::V3, "configure")?,
            reset: match contract {
                Contract::V3 if resettable => Some(find(super::reset::RESET_EXPORT)?),
                _ => None,
            },
        };
        Ok(Self {
            instance_pre,
            contract,
            exports,
        })
    }

    pub(crate) fn instantiate(&self, store: &mut Store<T>) -> wasmtime::Result<Hooks> {
        let instance = self.instance_pre.instantiate(&mut *store)?;
        let mut func = |index: ComponentExportIndex| {
            instance
                .get_func(&mut *store, index)
                .ok_or_else(|| wasmtime::format_err!("a hook export is not a function"))
        };
        let e = &self.exports;
        let on_deliver = e.on_deliver.map(&mut func).transpose()?;
        let on_error = e.on_error.map(&mut func).transpose()?;
        let configure = e.configure.map(&mut func).transpose()?;
        let reset = e.reset.map(&mut func).transpose()?;
        Ok(Hooks {
            contract: self.contract,
            on_request: func(e.on_request)?,
            cache_key: func(e.cache_key)?,
            on_response: func(e.on_response)?,
            vary_value: func(e.vary_value)?,
            self_test: func(e.self_test)?,
            on_deliver,
            on_error,
            configure,
            reset,
        })
    }

    pub(crate) fn contract(&self) -> Contract {
        self.contract
    }
}

/// The hooks of one instance, of any version, each called with the types of
/// its world (checked in [`PolicyPre::new`]). 0.1.0 and 0.2.0 hooks receive
/// resource handles and read the request through the store's call scope;
/// 0.3.0 hooks receive the request and response heads as values.
pub(crate) struct Hooks {
    contract: Contract,
    on_request: Func,
    cache_key: Func,
    on_response: Func,
    vary_value: Func,
    self_test: Func,
    on_deliver: Option<Func>,
    on_error: Option<Func>,
    configure: Option<Func>,
    reset: Option<Func>,
}

/// What `on-request` answered, in its version's types.
pub(crate) enum RequestAnswer {
    V1(t1::RequestDecision),
    V2(t2::RequestPlan),
    /// 0.3.0: a 0.2.0 plan and, maybe, the key of the unedited request.
    V3(t2::RequestPlan, Option<Vec<String>>),
}

/// What `on-response` answered, in its version's types.
pub(crate) enum ResponseAnswer {
    V1(t1::ResponseDecision),
    V2(t2::ResponsePlan),
}

type Req1 = Resource<t1::Request>;
type Resp1 = Resource<t1::Response>;
type Req2 = Resource<t2::Request>;
type Resp2 = Resource<t2::Response>;

// SAFETY (every `call` below): the types are those of the export's world,
// which `PolicyPre::new` checked against this component. 0.3.0 results are
// lifted into 0.2.0's Rust types: 0.3.0 declares those types field for field
// and case for case, and component types are structural (`Hooks::check_types`
// has wasmtime confirm it for every 0.3.0 plugin before it serves).
impl Hooks {
    /// Hands a 0.3.0 instance the tenant's settings; other versions ask the
    /// host for them instead.
    pub(crate) fn configure<T>(
        &self,
        store: &mut Store<T>,
        settings: &[Setting<'_>],
    ) -> wasmtime::Result<()> {
        match self.configure {
            Some(func) if !settings.is_empty() => {
                let typed = unsafe { TypedFunc::<(&[Setting<'_>],), ()>::new_unchecked(func) };
                typed.call(store, (settings,))
            }
            _ => Ok(()),
        }
    }

    /// Whether [`Hooks::reset`] can put this instance back in its initial state.
    pub(crate) fn can_reset(&self) -> bool {
        self.reset.is_some()
    }

    /// Restores the instance's memory and globals as instantiation left them. False when
    /// it cannot (no reset, or the memory grew): the instance must then be dropped.
    pub(crate) fn reset<T>(&self, store: &mut Store<T>) -> wasmtime::Result<bool> {
        match self.reset {
            Some(func) => unsafe { call::<_, (), bool>(func, store, ()) },
            None => Ok(false),
        }
    }

    /// `pending` fields reach a 0.3.0 plugin in its head; older versions read
    /// the request through the host, so the caller has written them already.
    pub(crate) fn on_request<T>(
        &self,
        store: &mut Store<T>,
        request: &RequestHeader,
        pending: &PendingFields,
    ) -> wasmtime::Result<RequestAnswer> {
        Ok(match self.contract {
            Contract::V3 => {
                let head = RequestHead::of(request, pending);
                let answer: RequestAnswerV3 = unsafe { call(self.on_request, store, (head,)) }?;
                RequestAnswer::V3(answer.plan, answer.key)
            }
            Contract::V2 => RequestAnswer::V2(unsafe {
                call::<_, (Req2,), _>(self.on_request, store, (borrow(),))
            }?),
            Contract::V1 => RequestAnswer::V1(unsafe {
                call::<_, (Req1,), _>(self.on_request, store, (borrow(),))
            }?),
        })
    }

    pub(crate) fn cache_key<T>(
        &self,
        store: &mut Store<T>,
        request: &RequestHeader,
        pending: &PendingFields,
    ) -> wasmtime::Result<Vec<String>> {
        match self.contract {
            Contract::V3 => unsafe {
                call(self.cache_key, store, (RequestHead::of(request, pending),))
            },
            Contract::V2 => unsafe { call::<_, (Req2,), _>(self.cache_key, store, (borrow(),)) },
            Contract::V1 => unsafe { call::<_, (Req1,), _>(self.cache_key, store, (borrow(),)) },
        }
    }

    pub(crate) fn on_response<T>(
        &self,
        store: &mut Store<T>,
        request: &RequestHeader,
        response: &ResponseHeader,
    ) -> wasmtime::Result<ResponseAnswer> {
        Ok(match self.contract {
            Contract::V3 => {
                let params = (RequestHead::as_is(request), ResponseHead::of(response));
                ResponseAnswer::V2(unsafe { call(self.on_response, store, params) }?)
            }
            Contract::V2 => {
                let params: (Req2, Resp2) = (borrow(), borrow());
                ResponseAnswer::V2(unsafe { call(self.on_response, store, params) }?)
            }
            Contract::V1 => {
                let params: (Req1, Resp1) = (borrow(), borrow());
                ResponseAnswer::V1(unsafe { call(self.on_response, store, params) }?)
            }
        })
    }

    /// 0.1.0 plugins have no `on-deliver`: no edits.
    pub(crate) fn on_deliver<T>(
        &self,
        store: &mut Store<T>,
        request: &RequestHeader,
        response: &ResponseHeader,
    ) -> wasmtime::Result<Vec<t2::HeaderEdit>> {
        match (self.on_deliver, self.contract) {
            (Some(func), Contract::V3) => {
                let params = (RequestHead::as_is(request), ResponseHead::of(response));
                unsafe { call(func, store, params) }
            }
            (Some(func), _) => {
                let params: (Req2, Resp2) = (borrow(), borrow());
                unsafe { call(func, store, params) }
            }
            (None, _) => Ok(Vec::new()),
        }
    }

    /// 0.1.0 plugins have no `on-error`: no answer.
    pub(crate) fn on_error<T>(
        &self,
        store: &mut Store<T>,
        request: &RequestHeader,
        failure: t2::OriginFailure,
    ) -> wasmtime::Result<Option<t2::SyntheticResponse>> {
        match (self.on_error, self.contract) {
            (Some(func), Contract::V3) => {
                let params = (RequestHead::as_is(request), failure);
                unsafe { call(func, store, params) }
            }
            (Some(func), _) => {
                let params: (Req2, t2::OriginFailure) = (borrow(), failure);
                unsafe { call(func, store, params) }
            }
            (None, _) => Ok(None),
        }
    }

    pub(crate) fn vary_value<T>(
        &self,
        store: &mut Store<T>,
        request: &RequestHeader,
        name: &str,
    ) -> wasmtime::Result<Option<String>> {
        match self.contract {
            Contract::V3 => {
                let params = (RequestHead::as_is(request), name);
                unsafe { call(self.vary_value, store, params) }
            }
            Contract::V2 => {
                let params: (Req2, &str) = (borrow(), name);
                unsafe { call(self.vary_value, store, params) }
            }
            Contract::V1 => {
                let params: (Req1, &str) = (borrow(), name);
                unsafe { call(self.vary_value, store, params) }
            }
        }
    }

    /// The plugin's test vectors, in 0.2.0 types.
    pub(crate) fn self_test<T>(
        &self,
        store: &mut Store<T>,
    ) -> wasmtime::Result<Vec<t2::TestVector>> {
        match self.contract {
            Contract::V2 | Contract::V3 => unsafe { call::<_, (), _>(self.self_test, store, ()) },
            Contract::V1 => {
                let vectors: Vec<t1::TestVector> =
                    unsafe { call::<_, (), _>(self.self_test, store, ()) }?;
                Ok(vectors.into_iter().map(vector_from_v1).collect())
            }
        }
    }

    /// Has wasmtime type-check every 0.3.0 hook against the Rust types the
    /// calls above use for it; the other versions are called with their own
    /// bindings' types. Run once per plugin, before it may serve.
    pub(crate) fn check_types<T>(
        &self,
        mut store: impl AsContextMut<Data = T>,
    ) -> wasmtime::Result<()> {
        if self.contract != Contract::V3 {
            return Ok(());
        }
        let store = &mut store;
        type Head = RequestHead<'static>;
        type Resp = ResponseHead;
        self.on_request
            .typed::<(Head,), (RequestAnswerV3,)>(&*store)?;
        self.cache_key.typed::<(Head,), (Vec<String>,)>(&*store)?;
        self.on_response
            .typed::<(Head, Resp), (t2::ResponsePlan,)>(&*store)?;
        self.vary_value
            .typed::<(Head, &str), (Option<String>,)>(&*store)?;
        self.self_test
            .typed::<(), (Vec<t2::TestVector>,)>(&*store)?;
        if let Some(func) = self.on_deliver {
            func.typed::<(Head, Resp), (Vec<t2::HeaderEdit>,)>(&*store)?;
        }
        if let Some(func) = self.on_error {
            func.typed::<(Head, t2::OriginFailure), (Option<t2::SyntheticResponse>,)>(&*store)?;
        }
        if let Some(func) = self.configure {
            func.typed::<(&[Setting<'static>],), ()>(&*store)?;
        }
        if let Some(func) = self.reset {
            func.typed::<(), (bool,)>(&*store)?;
        }
        Ok(())
    }
}

/// Calls `func` with `params`, returning its one result.
///
/// # Safety
/// `func`'s component type must be `P -> R`.
unsafe fn call<T, P, R>(func: Func, store: &mut Store<T>, params: P) -> wasmtime::Result<R>
where
    P: ComponentNamedList + Lower,
    (R,): ComponentNamedList + Lift,
{
    let typed = unsafe { TypedFunc::<P, (R,)>::new_unchecked(func) };
    typed.call(store, params).map(|(result,)| result)
}

/// The handle a hook receives for the request or response in scope: the host
/// resolves it through the call scope, never through the resource table.
fn borrow<T: 'static>() -> Resource<T> {
    Resource::new_borrow(0)
}

/// 0.1.0 test vectors in 0.2.0 types: 0.2.0 only adds an expectation.
fn vector_from_v1(
    v: v1::cachet::policy::types::TestVector,
) -> v2::cachet::policy::types::TestVector {
    use v1::cachet::policy::types as old;
    use v2::cachet::policy::types as new;
    let headers = |h: Vec<old::Header>| -> Vec<new::Header> {
        h.into_iter()
            .map(|h| new::Header {
                name: h.name,
                value: h.value,
            })
            .collect()
    };
    new::TestVector {
        name: v.name,
        request: new::TestRequest {
            method: v.request.method,
            uri: v.request.uri,
            headers: headers(v.request.headers),
        },
        expect: match v.expect {
            old::ExpectedRequest::Cache => new::ExpectedRequest::Cache,
            old::ExpectedRequest::Bypass => new::ExpectedRequest::Bypass,
            old::ExpectedRequest::Respond(s) => new::ExpectedRequest::Respond(s),
        },
        expect_key: v.expect_key,
        response: v.response.map(|r| new::TestResponse {
            status: r.status,
            headers: headers(r.headers),
            expect: match r.expect {
                old::ExpectedResponse::Store(ttl) => new::ExpectedResponse::Store(ttl),
                old::ExpectedResponse::FollowOrigin => new::ExpectedResponse::FollowOrigin,
                old::ExpectedResponse::NoStore => new::ExpectedResponse::NoStore,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::Contract;

    fn exports(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_contract_is_told_by_the_hooks_only_it_exports() {
        let v1 = [
            "on-request",
            "cache-key",
            "on-response",
            "vary-value",
            "self-test",
        ];
        assert_eq!(Contract::of_exports(&exports(&v1)), Contract::V1);
        let v2 = [&v1[..], &["on-deliver", "on-error"]].concat();
        assert_eq!(Contract::of_exports(&exports(&v2)), Contract::V2);
        let v3 = [&v2[..], &["configure"]].concat();
        assert_eq!(Contract::of_exports(&exports(&v3)), Contract::V3);
        assert_eq!(Contract::V3.version(), "0.3.0");
    }
}
