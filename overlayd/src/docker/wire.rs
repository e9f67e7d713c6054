//! The JSON of Docker's legacy (v1) plugin protocol, network driver and IPAM, as dockerd
//! 20.10 sends it (moby's plugins_network.md and plugins_ipam.md): PascalCase names, unknown fields ignored,
//! any map or list may be `null`, option values of mixed types.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `IpamDriver.RequestPool`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestPool {
    /// `--subnet`, or empty.
    pub pool: String,
    /// `--ip-range`, or empty.
    pub sub_pool: String,
    /// `--ipam-opt`s.
    pub options: Option<serde_json::Map<String, Value>>,
    /// The IPv6 round (`--ipv6`).
    #[serde(rename = "V6")]
    pub v6: bool,
}

/// `IpamDriver.ReleasePool`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReleasePool {
    /// Its PoolID.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `IpamDriver.RequestAddress` and `ReleaseAddress`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AddressRequest {
    /// Its PoolID.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// A wanted address (`--ip`, `--gateway`), or empty.
    pub address: String,
    /// `RequestAddressType` marks the gateway.
    pub options: Option<serde_json::Map<String, Value>>,
}

/// One entry of `IPv4Data`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamData {
    /// The pool (CIDR).
    pub pool: String,
    /// The gateway (CIDR).
    pub gateway: String,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateNetwork {
    /// Its ID (differs per host: local scope).
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// `com.docker.network.generic` holds the `-o` options.
    #[serde(rename = "Options")]
    pub options: Option<serde_json::Map<String, Value>>,
    /// The IPAM's IPv4 pools.
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpamData>>,
    /// The IPAM's IPv6 pools.
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// A request naming a network and maybe an endpoint (`DeleteNetwork`, `Join`, `Leave`,
/// `DeleteEndpoint`, `EndpointOperInfo`, the external connectivity calls).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NetworkRef {
    /// The NetworkID.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The EndpointID, if any.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// The interface of `CreateEndpoint`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Interface {
    /// The IPAM's address (CIDR).
    pub address: String,
    /// An IPv6 address (CIDR), or empty.
    #[serde(rename = "AddressIPv6")]
    pub address_ipv6: String,
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateEndpoint {
    /// The NetworkID.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The EndpointID.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The addresses.
    #[serde(rename = "Interface")]
    pub interface: Option<Interface>,
}

/// The `Join` answer's interface names.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    /// The veth end dockerd moves into the container.
    pub src_name: String,
    /// Its name there, plus an index (`eth0`).
    pub dst_prefix: String,
}

/// The `Join` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    /// The interface.
    pub interface_name: InterfaceName,
    /// The default gateway: the network's bridge.
    pub gateway: String,
    /// Keep Docker's `docker_gwbridge` away: we give the default route.
    pub disable_gateway_service: bool,
}

/// The `-o` options of a `CreateNetwork`, as text, and whether IPv6 was asked for.
pub fn generic_options(req: &CreateNetwork) -> (Vec<(String, String)>, bool) {
    let options = req.options.as_ref();
    let ipv6 = options
        .and_then(|o| o.get("com.docker.network.enable_ipv6"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let generic = options
        .and_then(|o| o.get("com.docker.network.generic"))
        .and_then(Value::as_object)
        .map(|g| {
            g.iter()
                .map(|(k, v)| {
                    let text = v
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), text)
                })
                .collect()
        })
        .unwrap_or_default();
    (generic, ipv6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_requests_parse_with_nulls_and_unknown_fields() {
        let r: AddressRequest = serde_json::from_str(
            r#"{"PoolID":"overlayd:10.42.0.0/16","Address":"","Options":null,"X":1}"#,
        )
        .unwrap();
        assert_eq!(r.pool_id, "overlayd:10.42.0.0/16");
        let c: CreateNetwork = serde_json::from_str(
            r#"{"NetworkID":"94a1","Options":{"com.docker.network.enable_ipv6":false,
               "com.docker.network.generic":{"foo":"bar","n":3}},
               "IPv4Data":[{"AddressSpace":"s","Pool":"10.42.0.0/16","Gateway":"10.42.7.1/24"}],
               "IPv6Data":[]}"#,
        )
        .unwrap();
        let (options, ipv6) = generic_options(&c);
        assert!(!ipv6);
        assert_eq!(
            options,
            [
                ("foo".to_owned(), "bar".to_owned()),
                ("n".to_owned(), "3".to_owned())
            ]
        );
        assert_eq!(c.ipv4_data.unwrap()[0].gateway, "10.42.7.1/24");
        let e: CreateEndpoint = serde_json::from_str(r#"{"NetworkID":"a","EndpointID":"b","Interface":{"Address":"10.42.7.2/24","AddressIPv6":"","MacAddress":""},"Options":null}"#).unwrap();
        assert_eq!(e.interface.unwrap().address, "10.42.7.2/24");
        let p: RequestPool = serde_json::from_str(
            r#"{"AddressSpace":"x","Pool":"","SubPool":"","Options":null,"V6":false}"#,
        )
        .unwrap();
        assert!(p.pool.is_empty() && !p.v6);
    }
}
