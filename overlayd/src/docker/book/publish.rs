//! Ports published with `-p` (`ProgramExternalConnectivity`): which host port goes to
//! which container, one container per host port, and the forwards the nft rules make of
//! them.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{Book, BookError};

/// One `-p HOST_PORT:PORT[/PROTO]` of a container: the host's `host_port` (on `host_ip`, or
/// every address of the host) forwarded to the container's `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// One host address, or `None` for all.
    pub host_ip: Option<Ipv4Addr>,
    /// The host's port.
    pub host_port: u16,
    /// The container's port.
    pub port: u16,
}

/// A published port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (Docker's `Proto` 6).
    Tcp,
    /// UDP (Docker's `Proto` 17).
    Udp,
}

impl Proto {
    /// As nft and `docker run -p` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `com.docker.network.portmap` entry as dockerd sends it (`types.PortBinding`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    /// 6 TCP, 17 UDP.
    pub proto: u8,
    /// The container's port.
    pub port: u16,
    /// The host address, empty for all.
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    /// The host port; 0 when Docker is to pick one.
    pub host_port: u16,
    /// The end of a host port range; 0 or `host_port` for one port.
    pub host_port_end: u16,
}

/// A port forwarded to a container, as the nft rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The published port.
    pub published: Published,
    /// The container's address.
    pub to: Ipv4Addr,
}

impl Book {
    /// `ProgramExternalConnectivity`: publishes `bindings` (`-p`) for the endpoint, replacing
    /// what it published before. Refuses what overlayd cannot do with a sentence that says
    /// what to do instead: no host port (Docker does not learn a port a remote driver
    /// picks), a range, a protocol other than TCP and UDP, a port another container of this
    /// host already publishes. Bindings on an IPv6 host address are skipped (the networks are
    /// IPv4). No bindings (`RevokeExternalConnectivity`, or a container without `-p`) is
    /// [`Book::unpublish`]: idempotent, whatever the endpoint.
    pub fn publish(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        bindings: &[PortBinding],
    ) -> Result<(), BookError> {
        if bindings.is_empty() {
            self.unpublish(endpoint_id);
            return Ok(());
        }
        self.endpoint(network_id, endpoint_id)?;
        let mut wanted: Vec<Published> = Vec::new();
        for b in bindings {
            let proto = match b.proto {
                6 => Proto::Tcp,
                17 => Proto::Udp,
                n => {
                    return Err(BookError::Unsupported(format!(
                        "-p with IP protocol {n}: overlayd publishes tcp and udp ports only"
                    )));
                }
            };
            let host_ip = match b.host_ip.as_str() {
                "" | "0.0.0.0" => None,
                ip => match ip.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(v4)) => Some(v4),
                    Ok(std::net::IpAddr::V6(_)) => continue,
                    Err(_) => {
                        return Err(BookError::Malformed {
                            what: "-p host address",
                            value: ip.to_owned(),
                            kind: "IP address",
                        });
                    }
                },
            };
            if b.host_port == 0 {
                return Err(BookError::Unsupported(format!(
                    "-p {port} without a host port: overlayd cannot tell Docker a port it picks; give one, e.g. -p 8080:{port}",
                    port = b.port
                )));
            }
            if b.host_port_end != 0 && b.host_port_end != b.host_port {
                return Err(BookError::Unsupported(format!(
                    "-p {}-{}: overlayd publishes single host ports, not ranges; give one -p per port",
                    b.host_port, b.host_port_end
                )));
            }
            let p = Published {
                proto,
                host_ip,
                host_port: b.host_port,
                port: b.port,
            };
            let clash = |q: &Published| {
                q.proto == p.proto
                    && q.host_port == p.host_port
                    && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
            };
            let taken = self
                .endpoints
                .iter()
                .filter(|(id, _)| id.as_str() != endpoint_id)
                .any(|(_, e)| e.published.iter().any(clash))
                || wanted.iter().any(clash);
            if taken {
                return Err(BookError::Unsupported(format!(
                    "host port {}/{} is already published on this host; pick another host port",
                    p.host_port,
                    p.proto.name()
                )));
            }
            wanted.push(p);
        }
        if let Some(e) = self.endpoints.get_mut(endpoint_id) {
            e.published = wanted;
        }
        Ok(())
    }

    /// `RevokeExternalConnectivity`: the endpoint publishes nothing any more. Idempotent.
    pub fn unpublish(&mut self, endpoint_id: &str) {
        if let Some(e) = self.endpoints.get_mut(endpoint_id) {
            e.published.clear();
        }
    }

    /// Every published port of this host, for the nft rules.
    pub fn forwards(&self) -> Vec<Forward> {
        self.endpoints
            .values()
            .flat_map(|e| {
                e.published.iter().map(|p| Forward {
                    published: *p,
                    to: e.address.addr(),
                })
            })
            .collect()
    }
}
