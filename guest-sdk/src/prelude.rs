//! Everything a typical policy names: `use cachet_sdk::prelude::*;`.

pub use std::time::Duration;

pub use crate::{
    config, defaults, log, CacheControl, Policy, Query, QueryParam, Request, RequestDecision,
    Response, ResponseDecision, StoreDirective, SyntheticResponse, TestVector,
};
