//! `[mirror]`: the mirror of decrypted traffic, started with the daemon when the table
//! names an interface (off by default; `overlayctl mirror start|stop` at runtime too).
//! Parsed, checked and printed here, so that the rest of the config stays as it was.

use std::fmt::Write as _;

use ipnet::IpNet;
use serde::Deserialize;

use crate::mirror::{MirrorFilter, MirrorSpec, check_interface_name, check_ports};

/// `[mirror]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    cidrs: Vec<IpNet>,
    #[serde(default)]
    ports: Vec<u16>,
}

impl RawMirror {
    /// The mirror to start with the daemon, if any; `Err` is one sentence.
    pub(super) fn check(self, tun_name: &str) -> Result<Option<MirrorSpec>, String> {
        let Some(interface) = self.interface else {
            if !self.cidrs.is_empty() || !self.ports.is_empty() {
                return Err(
                    "[mirror] has cidrs or ports but no interface; add interface = \"ovlmirror0\" to turn the mirror on"
                        .into(),
                );
            }
            return Ok(None);
        };
        check_interface_name(&interface).map_err(|e| format!("[mirror] {e}"))?;
        if interface == tun_name {
            return Err(format!(
                "[mirror] interface {interface:?} is the tunnel's tun_name; give the mirror its own (e.g. \"ovlmirror0\")"
            ));
        }
        check_ports(&self.ports).map_err(|e| format!("[mirror] {e}"))?;
        Ok(Some(MirrorSpec {
            interface,
            filter: MirrorFilter {
                cidrs: self.cidrs.iter().map(IpNet::trunc).collect(),
                ports: self.ports,
            },
        }))
    }
}

/// Appends the `[mirror]` table when a mirror is configured.
pub(super) fn print(out: &mut String, mirror: Option<&MirrorSpec>) {
    let Some(m) = mirror else { return };
    let cidrs: Vec<String> = m.filter.cidrs.iter().map(|n| format!("\"{n}\"")).collect();
    let ports: Vec<String> = m.filter.ports.iter().map(u16::to_string).collect();
    let _ = writeln!(
        out,
        "\n[mirror]\ninterface = {:?}\ncidrs = [{}]\nports = [{}]",
        m.interface,
        cidrs.join(", "),
        ports.join(", ")
    );
}
