//! Everything a typical policy names: `use cachet_sdk::prelude::*;`.

pub use std::time::Duration;

pub use crate::{
    config, defaults, log, CacheControl, HeaderEdits, OriginFailure, Policy, Query, QueryParam,
    Request, RequestDecision, RequestEdits, Response, ResponseDecision, StoreDirective,
    SyntheticResponse, TestVector,
};
