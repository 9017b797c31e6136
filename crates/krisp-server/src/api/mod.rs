//! Request handlers, one module per resource.

pub(crate) mod account;
pub(crate) mod auth;
pub(crate) mod devices;
pub(crate) mod meta;
pub(crate) mod orgs;
