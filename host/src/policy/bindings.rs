//! Host-side bindings generated from the contract, one module per version of
//! the `cachet:policy` world the host accepts. A component exports one of
//! them; `plugin.rs` finds which and the instance calls it through `Hooks`.

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
pub(crate) enum PolicyPre<T: 'static> {
    V1(v1::PolicyPre<T>),
    V2(v2::PolicyPre<T>),
}

// By hand: a derive would ask `T: Clone`, which the store data is not.
impl<T: 'static> Clone for PolicyPre<T> {
    fn clone(&self) -> Self {
        match self {
            Self::V1(pre) => Self::V1(pre.clone()),
            Self::V2(pre) => Self::V2(pre.clone()),
        }
    }
}

/// The exports of one instance, of either version.
pub(crate) enum Hooks {
    V1(v1::Policy),
    V2(v2::Policy),
}

impl<T: Send + 'static> PolicyPre<T> {
    pub(crate) fn instantiate(&self, store: &mut wasmtime::Store<T>) -> wasmtime::Result<Hooks> {
        match self {
            Self::V1(pre) => pre.instantiate(store).map(Hooks::V1),
            Self::V2(pre) => pre.instantiate(store).map(Hooks::V2),
        }
    }

    /// The contract version, as operators see it.
    pub(crate) fn version(&self) -> &'static str {
        match self {
            Self::V1(_) => "0.1.0",
            Self::V2(_) => "0.2.0",
        }
    }
}

/// 0.1.0 test vectors in 0.2.0 types: 0.2.0 only adds an expectation.
pub(crate) fn vector_from_v1(
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
