//! Herald's domain types, shared by every crate of the server (and usable by clients): tenants
//! and their limits, channel options, API key scopes, signing keys ([`model`]), the naming rules
//! ([`names`]) and client token claims with capability patterns ([`tokens`]).
//!
//! Serde gives the storage and wire form. With the `openapi` feature the same types also
//! derive their poem-openapi schema, so the REST API and the store cannot drift apart; nothing
//! else turns that feature on.

pub mod model;
pub mod names;
pub mod tokens;
