//! The join client: what a host in no network does with a token (`overlayctl join`). It
//! asks the bootstrap hosts the token names, in turn, over QUIC with the token's CA pinned
//! ([`join`]), and keeps an answer only once [`accept`] has checked it, so nothing is saved
//! from an answer it refuses.
//!
//! The host that answers shows its node certificate in the TLS handshake (from the
//! token's CA, for the token's network, current: `tls::join_client_config` checks that).
//! Its answer brings the network's revocations; a host whose certificate they revoke is
//! refused as an admin: a revoked admin may still hold the CA key, but the network no
//! longer takes its word, so neither does a joining host. (An answer can only show what
//! it holds: a revoked admin that leaves its own revocation out is found out by the
//! members after the join, which then refuse its connections.)
//!
//! The token's secret crosses the QUIC stream once; the copies this module makes of it
//! are zeroized once sent (see `msg::write` for the frame).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use keys::{JoinToken, Name, NodeCertificate, PublicKey, VerifyingKey};
use protocol::api::JoinRequest;
use protocol::records::Directory;
use zeroize::Zeroize;

use super::msg::{self, Bundle, Request, Response};
use super::state::NetworkState;
use super::{ApiFailure, Ctx, name, now_unix, tls};

/// How long one bootstrap host may take to answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the handshake with a bootstrap host may take when the token names another
/// after it (an admin that is down is passed over quickly; the secret is sent only once
/// the handshake is done, so the host passed over never saw it).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Joins with a token: asks the admins it names, saves what the first one that admits
/// this host answers, and returns it (the membership and the directory).
pub(super) async fn join(
    ctx: &Ctx,
    req: JoinRequest,
) -> Result<(NetworkState, Directory), ApiFailure> {
    let token: JoinToken = req
        .token
        .parse()
        .map_err(|e| ApiFailure::bad(format!("not a usable join token: {e}")))?;
    token
        .check_expiry(now_unix())
        .map_err(|e| ApiFailure::bad(e.to_string()))?;
    let node = name(&req.name, "node name")?;
    let control_key = ctx
        .state
        .control_key()
        .map_err(|e| ApiFailure::internal(format!("{e:#}")))?;
    let joiner = Joiner {
        name: node.clone(),
        wireguard_key: ctx.config().private_key.public_key(),
        control_key: control_key.verifying_key(),
    };
    let transport = Arc::new(tls::transport_config(
        Duration::from_secs(2),
        Duration::from_secs(8),
    ));
    let client =
        tls::join_client_config(token.ca_fingerprint(), token.network().clone(), transport)
            .map_err(|e| ApiFailure::internal(format!("{e:#}")))?;
    let claim = keys::JoinClaim {
        network: token.network(),
        ca: token.ca_fingerprint(),
        secret: token.secret(),
        name: &node,
        control_key: &joiner.control_key,
        subnet: req.subnet,
    };
    let endpoint = ctx
        .endpoint()
        .map_err(|e| ApiFailure::internal(format!("{e:#}")))?;
    let mut failures = Vec::new();
    for (n, &addr) in token.endpoints().iter().enumerate() {
        let last = n + 1 == token.endpoints().len();
        let attempt = async {
            let connecting = endpoint.connect_with(client.clone(), addr, tls::SERVER_NAME)?;
            let conn = if last {
                connecting.await?
            } else {
                tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())
                    })??
            };
            let ca = tls::server_ca(&conn)
                .context("the bootstrap host did not show its network's CA")?;
            // The proof is made for the WireGuard key of the host the handshake showed
            // (certified by the token's CA), and holds only for that host.
            let admin = tls::remote_node(&conn)
                .context("the bootstrap host did not show its node certificate")?;
            let proof =
                keys::JoinProof::prove(&claim, &ctx.config().private_key, &admin.wireguard_key)?;
            let mut request = Request::Join {
                secret: *token.secret().as_bytes(),
                name: node.clone(),
                wireguard_key: joiner.wireguard_key,
                control_key: joiner.control_key,
                subnet: req.subnet,
                proof: proof.to_bytes(),
            };
            let (mut send, mut recv) = conn.open_bi().await?;
            let sent = msg::write(&mut send, &request).await;
            if let Request::Join { secret, .. } = &mut request {
                secret.zeroize();
            }
            sent?;
            send.finish()?;
            let response: Response = msg::read(&mut recv).await?;
            conn.close(0u32.into(), b"joined");
            anyhow::Ok((ca, admin, response))
        };
        let (ca, admin, response) = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                failures.push(format!("{addr}: {e:#}"));
                continue;
            }
            Err(_) => {
                failures.push(format!(
                    "{addr}: no answer within {} s",
                    ATTEMPT_TIMEOUT.as_secs()
                ));
                continue;
            }
        };
        let answer = match response {
            Response::Joined {
                certificate,
                cidr,
                ranges,
                subnet_prefix,
                bundle,
            } => Joined {
                certificate,
                cidr,
                ranges,
                subnet_prefix,
                bundle,
            },
            Response::Refused(reason) => {
                return Err(ApiFailure::remote(format!(
                    "{addr} refused the join: {reason}"
                )));
            }
            other => {
                failures.push(format!("{addr}: unexpected answer {other:?}"));
                continue;
            }
        };
        let (net, dir) = accept(&token, addr, ca, &admin, &joiner, answer, now_unix())?;
        let internal = |e: anyhow::Error| ApiFailure::internal(format!("{e:#}"));
        ctx.state.save_directory(&dir).map_err(internal)?;
        ctx.state.save_network(&net).map_err(internal)?;
        tracing::info!(network = %net.network, name = %node, admin = %admin.node, subnets = ?admitted_subnets(&net), "joined the network");
        return Ok((net, dir));
    }
    Err(ApiFailure::remote(format!(
        "cannot join through any bootstrap host of the token: {}",
        failures.join("; ")
    )))
}

/// This host as it asks to join: the name it asks for and its keys.
pub(super) struct Joiner {
    /// The name asked for.
    pub name: Name,
    /// This host's WireGuard key.
    pub wireguard_key: PublicKey,
    /// This host's control key.
    pub control_key: VerifyingKey,
}

/// An admin's `Joined` answer (`msg::Response::Joined`).
pub(super) struct Joined {
    /// `SignedCertificate::to_bytes`.
    pub certificate: Vec<u8>,
    /// The network's range.
    pub cidr: IpNet,
    /// Its extra ranges.
    pub ranges: Vec<IpNet>,
    /// Prefix length of member subnets.
    pub subnet_prefix: u8,
    /// The admin's directory.
    pub bundle: Bundle,
}

/// Checks the answer of the host at `addr` to a join with `token`: that host showed the
/// CA key `ca` (matched to the token's fingerprint) and the node certificate `admin` in the
/// handshake. Refused, with one sentence, when the revocations in the answer revoke `admin`
/// (by serial or by key), or when the certificate it issued is not the CA's, not current,
/// or not for `joiner`. Returns the membership and the directory to save.
pub(super) fn accept(
    token: &JoinToken,
    addr: SocketAddr,
    ca: VerifyingKey,
    admin: &NodeCertificate,
    joiner: &Joiner,
    answer: Joined,
    now: u64,
) -> Result<(NetworkState, Directory), ApiFailure> {
    let mut dir = Directory::new(ca, token.network().clone());
    // During a CA transition: the CA the members not yet renewed hold, trusted until its end.
    let ca_transition = answer
        .bundle
        .ca_transition
        .clone()
        .filter(|t| dir.apply_transition_bytes(t, Some(now)).is_ok());
    for r in &answer.bundle.revocations {
        let _ = dir.apply_revocation_bytes(r);
    }
    if dir.is_certificate_revoked(admin) {
        return Err(ApiFailure::remote(format!(
            "join refused: the host at {addr} is member {} of network {}, whose certificate (serial {}) the network's CA revoked; nothing was saved: ask another admin of the network for a token",
            admin.node,
            token.network(),
            admin.serial
        )));
    }
    let certificate = keys::SignedCertificate::from_bytes(&answer.certificate)
        .map_err(|e| ApiFailure::remote(format!("the admin sent a bad certificate: {e}")))?;
    let cert = certificate
        .verify(&ca, now)
        .map_err(|e| ApiFailure::remote(format!("the admin sent a bad certificate: {e}")))?;
    if cert.node != joiner.name
        || cert.wireguard_key != joiner.wireguard_key
        || cert.control_key != joiner.control_key
    {
        return Err(ApiFailure::remote(
            "the admin's certificate is not for this host's name and keys",
        ));
    }
    for m in &answer.bundle.members {
        let _ = dir.apply_member_bytes(m, now);
    }
    let net = NetworkState {
        network: token.network().clone(),
        cidr: answer.cidr,
        ranges: answer.ranges,
        subnet_prefix: answer.subnet_prefix,
        ca,
        certificate,
        generation: 0,
        record_version: 0,
        left: false,
        renewed_unix: None,
        bootstrap: token.endpoints().to_vec(),
        ca_transition,
        wireguard_key_since: None,
    };
    Ok((net, dir))
}

/// The subnets of the certificate in `net`, for the log.
fn admitted_subnets(net: &NetworkState) -> Vec<IpNet> {
    net.certificate
        .unverified_body()
        .map(|c| c.subnets)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
