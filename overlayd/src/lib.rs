//! `overlayd`: one daemon per host. It owns a TUN device, keeps a WireGuard tunnel
//! (boringtun) to every peer, and routes each peer's subnets to it.
//!
//! Seams: [`router`] is the I/O-free tunnel logic; [`datapath`] the threads that move
//! batches between the TUN and the UDP socket; [`udp`] the batched socket calls;
//! [`netlink`] routes; [`api`] the local API; [`config`] the file.

pub mod config;
pub mod router;
