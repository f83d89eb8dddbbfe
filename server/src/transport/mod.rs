//! Transports: thin adapters that move bytes between a socket and a realtime
//! [`Session`](herald_core::Session). Protocol meaning lives in the session, not here.

pub mod cursor;
pub mod http;
pub mod longpoll;
pub mod sse;
pub mod ws;
