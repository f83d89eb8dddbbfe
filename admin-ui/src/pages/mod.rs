//! One module per page; `shell` is the frame around them (sidebar, header).

pub mod audit;
pub mod channels;
pub mod hs256;
pub mod keys;
pub mod live;
pub mod login;
pub mod overview;
pub mod presence;
pub mod proxy;
pub mod shell;
pub mod tenant;
pub mod tenants;
pub mod tokens;
pub mod webhooks;
