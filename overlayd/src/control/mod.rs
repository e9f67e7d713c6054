//! The control plane: network CA, join, gossip membership (foca over QUIC), revocation.

pub mod admin;
pub mod state;
pub mod tls;
pub mod msg;
