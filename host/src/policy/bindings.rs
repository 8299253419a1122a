//! Host-side bindings generated from the contract, one module per version of
//! the `cachet:policy` world the host accepts. A component exports one of
//! them; `plugin.rs` finds which and the instance calls it through `Hooks`.

use v1::cachet::policy::types as t1;
use v2::cachet::policy::types as t2;
use wasmtime::component::{
    ComponentExportIndex, ComponentNamedList, Func, InstancePre, Lift, Lower, Resource, TypedFunc,
};
use wasmtime::Store;

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

/// A pre-instantiated component of either version.
pub(crate) struct PolicyPre<T: 'static> {
    instance_pre: InstancePre<T>,
    v2: bool,
    exports: HookExports,
}

// By hand: a derive would ask `T: Clone`, which the store data is not.
impl<T: 'static> Clone for PolicyPre<T> {
    fn clone(&self) -> Self {
        Self {
            instance_pre: self.instance_pre.clone(),
            v2: self.v2,
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
    /// 0.2.0 only.
    on_deliver: Option<ComponentExportIndex>,
    on_error: Option<ComponentExportIndex>,
}

impl<T: Send + 'static> PolicyPre<T> {
    /// The 0.2.0 world when `v2`, else 0.1.0. Fails when a hook is missing or
    /// its type is not its world's: the bindings' indices check every export
    /// against the component's instance type, once, here. Instances made from
    /// `instance_pre` share those types, so hooks are called without a check
    /// per instance (the bindings' own `instantiate` repeats it every time, a
    /// tenth of a fresh instance's cost).
    pub(crate) fn new(instance_pre: InstancePre<T>, v2: bool) -> wasmtime::Result<Self> {
        if v2 {
            v2::PolicyIndices::new(&instance_pre)?;
        } else {
            v1::PolicyIndices::new(&instance_pre)?;
        }
        let component = instance_pre.component();
        let find = |name: &str| {
            component
                .get_export_index(None, name)
                .ok_or_else(|| wasmtime::format_err!("no export named `{name}`"))
        };
        let only_v2 = |name: &str| if v2 { find(name).map(Some) } else { Ok(None) };
        let exports = HookExports {
            on_request: find("on-request")?,
            cache_key: find("cache-key")?,
            on_response: find("on-response")?,
            vary_value: find("vary-value")?,
            self_test: find("self-test")?,
            on_deliver: only_v2("on-deliver")?,
            on_error: only_v2("on-error")?,
        };
        Ok(Self {
            instance_pre,
            v2,
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
        Ok(Hooks {
            v2: self.v2,
            on_request: func(e.on_request)?,
            cache_key: func(e.cache_key)?,
            on_response: func(e.on_response)?,
            vary_value: func(e.vary_value)?,
            self_test: func(e.self_test)?,
            on_deliver,
            on_error,
        })
    }

    /// The contract version, as operators see it.
    pub(crate) fn version(&self) -> &'static str {
        if self.v2 {
            "0.2.0"
        } else {
            "0.1.0"
        }
    }
}

/// The hooks of one instance, of either version, each called with the types
/// of its world (checked in [`PolicyPre::new`]).
pub(crate) struct Hooks {
    v2: bool,
    on_request: Func,
    cache_key: Func,
    on_response: Func,
    vary_value: Func,
    self_test: Func,
    on_deliver: Option<Func>,
    on_error: Option<Func>,
}

/// What `on-request` answered, in its version's types.
pub(crate) enum RequestAnswer {
    V1(t1::RequestDecision),
    V2(t2::RequestPlan),
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

impl Hooks {
    pub(crate) fn on_request<T>(&self, store: &mut Store<T>) -> wasmtime::Result<RequestAnswer> {
        // SAFETY (every call below): the types are those of the export's world,
        // which `PolicyPre::new` checked against this component.
        Ok(if self.v2 {
            RequestAnswer::V2(unsafe {
                call::<_, (Req2,), _>(self.on_request, store, (borrow(),))
            }?)
        } else {
            RequestAnswer::V1(unsafe {
                call::<_, (Req1,), _>(self.on_request, store, (borrow(),))
            }?)
        })
    }

    pub(crate) fn cache_key<T>(&self, store: &mut Store<T>) -> wasmtime::Result<Vec<String>> {
        if self.v2 {
            unsafe { call::<_, (Req2,), _>(self.cache_key, store, (borrow(),)) }
        } else {
            unsafe { call::<_, (Req1,), _>(self.cache_key, store, (borrow(),)) }
        }
    }

    pub(crate) fn on_response<T>(&self, store: &mut Store<T>) -> wasmtime::Result<ResponseAnswer> {
        Ok(if self.v2 {
            let params: (Req2, Resp2) = (borrow(), borrow());
            ResponseAnswer::V2(unsafe { call(self.on_response, store, params) }?)
        } else {
            let params: (Req1, Resp1) = (borrow(), borrow());
            ResponseAnswer::V1(unsafe { call(self.on_response, store, params) }?)
        })
    }

    /// 0.1.0 plugins have no `on-deliver`: no edits.
    pub(crate) fn on_deliver<T>(
        &self,
        store: &mut Store<T>,
    ) -> wasmtime::Result<Vec<t2::HeaderEdit>> {
        match self.on_deliver {
            Some(func) => {
                let params: (Req2, Resp2) = (borrow(), borrow());
                unsafe { call(func, store, params) }
            }
            None => Ok(Vec::new()),
        }
    }

    /// 0.1.0 plugins have no `on-error`: no answer.
    pub(crate) fn on_error<T>(
        &self,
        store: &mut Store<T>,
        failure: t2::OriginFailure,
    ) -> wasmtime::Result<Option<t2::SyntheticResponse>> {
        match self.on_error {
            Some(func) => {
                let params: (Req2, t2::OriginFailure) = (borrow(), failure);
                unsafe { call(func, store, params) }
            }
            None => Ok(None),
        }
    }

    pub(crate) fn vary_value<T>(
        &self,
        store: &mut Store<T>,
        name: &str,
    ) -> wasmtime::Result<Option<String>> {
        if self.v2 {
            let params: (Req2, &str) = (borrow(), name);
            unsafe { call(self.vary_value, store, params) }
        } else {
            let params: (Req1, &str) = (borrow(), name);
            unsafe { call(self.vary_value, store, params) }
        }
    }

    /// The plugin's test vectors, in 0.2.0 types.
    pub(crate) fn self_test<T>(
        &self,
        store: &mut Store<T>,
    ) -> wasmtime::Result<Vec<t2::TestVector>> {
        if self.v2 {
            unsafe { call::<_, (), _>(self.self_test, store, ()) }
        } else {
            let vectors: Vec<t1::TestVector> =
                unsafe { call::<_, (), _>(self.self_test, store, ()) }?;
            Ok(vectors.into_iter().map(vector_from_v1).collect())
        }
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
