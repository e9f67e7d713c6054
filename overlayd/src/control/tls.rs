//! QUIC with mutual authentication by the network CA's node certificates.
