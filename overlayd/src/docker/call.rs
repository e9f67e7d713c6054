//! The plugin's calls, pure: [`Call::parse`] turns a method and its JSON body into what
//! the plugin acts on, refusing what no state could make right; [`Ipam::apply`],
//! [`NewNetwork::check`], [`NewEndpoint::check`] and [`join`] are what the calls do to the
//! [`Book`]. `Plugin::call` and the `docker` fuzz target both dispatch through here; the
//! plugin adds the netlink, nft and state file work around it. No I/O, no clock.

use axum::http::StatusCode;
use ipnet::Ipv4Net;
use serde_json::{Value, json};

use super::Failure;
use super::book::{
    Book, BookError, Endpoint, GATEWAY_TYPE, Granted, Network, PortBinding, REQUEST_ADDRESS_TYPE,
};
use super::wire::{self, NetworkRef};

/// One plugin call, parsed.
#[derive(Debug)]
pub enum Call {
    /// Answered the same whatever the state: the handshake, the capabilities, and the calls
    /// overlayd has nothing to do for (`Leave`, discovery, swarm allocation).
    Fixed(Value),
    /// An `IpamDriver` call: bookkeeping only.
    Ipam(Ipam),
    /// `NetworkDriver.CreateNetwork`.
    CreateNetwork(NewNetwork),
    /// `NetworkDriver.DeleteNetwork`.
    DeleteNetwork(NetworkRef),
    /// `NetworkDriver.CreateEndpoint`.
    CreateEndpoint(NewEndpoint),
    /// `NetworkDriver.DeleteEndpoint`.
    DeleteEndpoint(NetworkRef),
    /// `NetworkDriver.Join`.
    Join(NetworkRef),
    /// `NetworkDriver.EndpointOperInfo`.
    EndpointOperInfo(NetworkRef),
    /// `ProgramExternalConnectivity` with its port bindings (`-p`), and
    /// `RevokeExternalConnectivity` with none.
    Publish(NetworkRef, Vec<PortBinding>),
}

/// An `IpamDriver` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipam {
    /// `RequestPool`.
    RequestPool {
        /// `--subnet`, or empty.
        pool: String,
        /// `--ip-range`, or empty.
        sub_pool: String,
        /// The IPv6 round (`--ipv6`).
        v6: bool,
        /// The `--ipam-opt` keys.
        options: Vec<String>,
    },
    /// `ReleasePool`.
    ReleasePool {
        /// Its PoolID.
        pool_id: String,
    },
    /// `RequestAddress`.
    RequestAddress {
        /// Its PoolID.
        pool_id: String,
        /// A wanted address (`--ip`, `--gateway`), or empty.
        address: String,
        /// The gateway's address is asked for.
        gateway: bool,
    },
    /// `ReleaseAddress`.
    ReleaseAddress {
        /// Its PoolID.
        pool_id: String,
        /// The address.
        address: String,
    },
}

/// What an [`Ipam`] call gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamAnswer {
    /// A pool (`RequestPool`).
    Pool(Granted),
    /// An address, with the slice's mask (`RequestAddress`).
    Address(Ipv4Net),
    /// A release.
    Released,
}

/// A `CreateNetwork`, as [`Book::check_network`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNetwork {
    /// Its NetworkID.
    pub network_id: String,
    /// The `IPv4Data` entries as (pool, gateway).
    pub pools: Vec<(String, String)>,
    /// IPv6 was asked for (`--ipv6`, or IPv6 pools).
    pub ipv6: bool,
    /// The `-o` options.
    pub options: Vec<(String, String)>,
}

/// A `CreateEndpoint` with no IPv6 address, as [`Book::check_endpoint`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEndpoint {
    /// Its NetworkID.
    pub network_id: String,
    /// Its EndpointID.
    pub endpoint_id: String,
    /// The IPAM's address (CIDR).
    pub address: String,
}

/// `body` as a `T`: an empty or all-whitespace body is the default request.
fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Failure {
        status: StatusCode::BAD_REQUEST,
        message: format!("malformed request: {e}"),
    })
}

impl Call {
    /// Parses one call: `method` is the path without `/`, `body` its JSON. Refuses a
    /// method overlayd does not implement (404), a body that does not parse (400), an IPv6
    /// endpoint and port bindings that are not a list of them.
    pub fn parse(method: &str, body: &[u8]) -> Result<Call, Failure> {
        Ok(match method {
            "Plugin.Activate" => {
                Call::Fixed(json!({"Implements": ["NetworkDriver", "IpamDriver"]}))
            }
            "NetworkDriver.GetCapabilities" => {
                Call::Fixed(json!({"Scope": "local", "ConnectivityScope": "global"}))
            }
            "IpamDriver.GetCapabilities" => {
                Call::Fixed(json!({"RequiresMACAddress": false, "RequiresRequestReplay": false}))
            }
            "IpamDriver.GetDefaultAddressSpaces" => Call::Fixed(json!({
                "LocalDefaultAddressSpace": "overlayd-local",
                "GlobalDefaultAddressSpace": "overlayd-global",
            })),
            "IpamDriver.RequestPool" => {
                let req: wire::RequestPool = parse(body)?;
                Call::Ipam(Ipam::RequestPool {
                    options: req.options.iter().flat_map(|o| o.keys().cloned()).collect(),
                    pool: req.pool,
                    sub_pool: req.sub_pool,
                    v6: req.v6,
                })
            }
            "IpamDriver.ReleasePool" => {
                let req: wire::ReleasePool = parse(body)?;
                Call::Ipam(Ipam::ReleasePool {
                    pool_id: req.pool_id,
                })
            }
            "IpamDriver.RequestAddress" => {
                let req: wire::AddressRequest = parse(body)?;
                let gateway = req
                    .options
                    .as_ref()
                    .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
                    .and_then(Value::as_str)
                    == Some(GATEWAY_TYPE);
                Call::Ipam(Ipam::RequestAddress {
                    pool_id: req.pool_id,
                    address: req.address,
                    gateway,
                })
            }
            "IpamDriver.ReleaseAddress" => {
                let req: wire::AddressRequest = parse(body)?;
                Call::Ipam(Ipam::ReleaseAddress {
                    pool_id: req.pool_id,
                    address: req.address,
                })
            }
            "NetworkDriver.CreateNetwork" => {
                Call::CreateNetwork(NewNetwork::from(parse::<wire::CreateNetwork>(body)?))
            }
            "NetworkDriver.DeleteNetwork" => Call::DeleteNetwork(parse(body)?),
            "NetworkDriver.CreateEndpoint" => {
                let req: wire::CreateEndpoint = parse(body)?;
                let interface = req.interface.unwrap_or_default();
                if !interface.address_ipv6.is_empty() {
                    return Err(BookError::Ipv6.into());
                }
                Call::CreateEndpoint(NewEndpoint {
                    network_id: req.network_id,
                    endpoint_id: req.endpoint_id,
                    address: interface.address,
                })
            }
            "NetworkDriver.DeleteEndpoint" => Call::DeleteEndpoint(parse(body)?),
            "NetworkDriver.Join" => Call::Join(parse(body)?),
            "NetworkDriver.EndpointOperInfo" => Call::EndpointOperInfo(parse(body)?),
            "NetworkDriver.ProgramExternalConnectivity" => {
                let req: NetworkRef = parse(body)?;
                let raw: Value = parse::<Option<Value>>(body)?.unwrap_or(Value::Null);
                let bindings = match raw.pointer("/Options/com.docker.network.portmap") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                        Failure::new(format!(
                            "com.docker.network.portmap is not a list of port bindings: {e}"
                        ))
                    })?,
                };
                Call::Publish(req, bindings)
            }
            "NetworkDriver.RevokeExternalConnectivity" => Call::Publish(parse(body)?, Vec::new()),
            "NetworkDriver.Leave"
            | "NetworkDriver.DiscoverNew"
            | "NetworkDriver.DiscoverDelete"
            | "NetworkDriver.AllocateNetwork"
            | "NetworkDriver.FreeNetwork" => Call::Fixed(json!({})),
            _ => {
                return Err(Failure {
                    status: StatusCode::NOT_FOUND,
                    message: format!("overlayd does not implement {method}"),
                });
            }
        })
    }
}

impl Ipam {
    /// Applies the call to `book`. `slices` are this host's certificate subnets (`None`:
    /// not a member), `ranges` the overlay's ranges (main, then extra). A refusal changes
    /// nothing.
    pub fn apply(
        &self,
        book: &mut Book,
        slices: Option<&[Ipv4Net]>,
        ranges: &[Ipv4Net],
    ) -> Result<IpamAnswer, BookError> {
        match self {
            Ipam::RequestPool {
                pool,
                sub_pool,
                v6,
                options,
            } => book
                .request_pool(slices, ranges, pool, sub_pool, *v6, options)
                .map(IpamAnswer::Pool),
            Ipam::ReleasePool { pool_id } => {
                book.release_pool(pool_id);
                Ok(IpamAnswer::Released)
            }
            Ipam::RequestAddress {
                pool_id,
                address,
                gateway,
            } => book
                .request_address(pool_id, address, *gateway)
                .map(IpamAnswer::Address),
            Ipam::ReleaseAddress { pool_id, address } => {
                book.release_address(pool_id, address);
                Ok(IpamAnswer::Released)
            }
        }
    }
}

impl IpamAnswer {
    /// The answer's JSON, as dockerd reads it.
    pub fn to_json(&self) -> Value {
        match self {
            IpamAnswer::Pool(g) => json!({"PoolID": g.pool_id, "Pool": g.pool.to_string(),
                                          "Data": {GATEWAY_TYPE: g.gateway.to_string()}}),
            IpamAnswer::Address(a) => json!({"Address": a.to_string(), "Data": {}}),
            IpamAnswer::Released => json!({}),
        }
    }
}

impl From<wire::CreateNetwork> for NewNetwork {
    fn from(req: wire::CreateNetwork) -> NewNetwork {
        let (options, ipv6) = wire::generic_options(&req);
        let ipv6 = ipv6 || req.ipv6_data.as_ref().is_some_and(|d| !d.is_empty());
        let pools = req
            .ipv4_data
            .unwrap_or_default()
            .into_iter()
            .map(|d| (d.pool, d.gateway))
            .collect();
        NewNetwork {
            network_id: req.network_id,
            pools,
            ipv6,
            options,
        }
    }
}

impl NewNetwork {
    /// The network it makes ([`Book::check_network`]); `max_mtu` is the config's.
    pub fn check(&self, book: &Book, max_mtu: u16) -> Result<Network, BookError> {
        book.check_network(
            &self.network_id,
            &self.pools,
            self.ipv6,
            &self.options,
            max_mtu,
        )
    }
}

impl NewEndpoint {
    /// The endpoint it makes ([`Book::check_endpoint`]).
    pub fn check(&self, book: &Book) -> Result<Endpoint, BookError> {
        book.check_endpoint(&self.network_id, &self.endpoint_id, &self.address)
    }
}

/// The `Join` answer for a known endpoint: its container veth, and the network's gateway.
pub fn join(book: &Book, req: &NetworkRef) -> Result<wire::JoinResponse, BookError> {
    let e = book.endpoint(&req.network_id, &req.endpoint_id)?;
    let n = book.network(&req.network_id)?;
    Ok(wire::JoinResponse {
        interface_name: wire::InterfaceName {
            src_name: e.container_veth.clone(),
            dst_prefix: "eth".into(),
        },
        gateway: n.gateway.to_string(),
        disable_gateway_service: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(method: &str, body: &str) -> (StatusCode, String) {
        let f = Call::parse(method, body.as_bytes()).unwrap_err();
        (f.status, f.message)
    }

    #[test]
    fn calls_parse_into_what_the_book_takes() {
        let c = Call::parse(
            "NetworkDriver.CreateNetwork",
            br#"{"NetworkID":"n1","Options":{"com.docker.network.generic":{"k":"v"}},
                "IPv4Data":[{"Pool":"10.42.0.0/16","Gateway":"10.42.7.1/24"}],"IPv6Data":[{}]}"#,
        )
        .unwrap();
        let Call::CreateNetwork(n) = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            n,
            NewNetwork {
                network_id: "n1".into(),
                pools: vec![("10.42.0.0/16".into(), "10.42.7.1/24".into())],
                ipv6: true,
                options: vec![("k".into(), "v".into())],
            }
        );
        let c = Call::parse(
            "IpamDriver.RequestAddress",
            br#"{"PoolID":"p","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap();
        assert!(
            matches!(c, Call::Ipam(Ipam::RequestAddress { gateway: true, .. })),
            "{c:?}"
        );
        let c = Call::parse("NetworkDriver.RevokeExternalConnectivity", b" ").unwrap();
        assert!(matches!(&c, Call::Publish(_, b) if b.is_empty()), "{c:?}");
        assert!(matches!(
            Call::parse("NetworkDriver.Leave", b"not even json").unwrap(),
            Call::Fixed(_)
        ));
    }

    #[test]
    fn refusals_that_need_no_state() {
        let (status, message) = refusal("NetworkDriver.Nope", "{}");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(message, "overlayd does not implement NetworkDriver.Nope");
        let (status, message) = refusal("IpamDriver.RequestPool", "{");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.starts_with("malformed request: "), "{message}");
        let (_, message) = refusal(
            "NetworkDriver.CreateEndpoint",
            r#"{"Interface":{"AddressIPv6":"fd00::2/64"}}"#,
        );
        assert_eq!(message, BookError::Ipv6.to_string());
        let (status, message) = refusal(
            "NetworkDriver.ProgramExternalConnectivity",
            r#"{"Options":{"com.docker.network.portmap":{"Proto":6}}}"#,
        );
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(message.contains("not a list of port bindings"), "{message}");
    }
}
