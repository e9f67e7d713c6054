//! `overlayctl mirror start|stop|status`: the copy of decrypted traffic that `overlayd`
//! writes to a local interface for an IDS (tcpdump, ngrep, Suricata, Zeek).
//!
//! The renderings are pure; the handlers do the I/O.

use std::path::Path;

use clap::Subcommand;
use ipnet::IpNet;
use protocol::api::{MIRROR_PATH, MIRROR_STOP_PATH, MirrorStartRequest, MirrorStatus};

use crate::client::{self, LOCAL_TIMEOUT};
use crate::control::print_json;

/// `overlayctl mirror ...`.
#[derive(Subcommand, Debug)]
pub enum MirrorCommand {
    /// Copy every decrypted packet (both ways) to a local interface made for it, in
    /// plaintext: anyone root on this host can read it there. A running mirror is replaced.
    Start {
        /// The interface to make (default: the config's [mirror] interface, or ovlmirror0).
        #[arg(long)]
        interface: Option<String>,
        /// Copy only packets from or to this network (repeat for more; default: all).
        #[arg(long, value_parser = crate::parse::cidr)]
        cidr: Vec<IpNet>,
        /// Copy only TCP and UDP packets from or to this port (repeat for more; default: all).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Vec<u16>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop copying; the interface disappears.
    Stop {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Whether a mirror runs, to where, its filter, and packets copied and dropped.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `mirror` command against the daemon at `socket`.
pub fn run(socket: &Path, command: MirrorCommand) -> anyhow::Result<()> {
    let (status, json, line): (MirrorStatus, bool, fn(&MirrorStatus) -> String) = match command {
        MirrorCommand::Start {
            interface,
            cidr,
            port,
            json,
        } => {
            let request = MirrorStartRequest {
                interface,
                cidrs: cidr,
                ports: port,
            };
            let status = client::post(socket, MIRROR_PATH, &request, LOCAL_TIMEOUT)?;
            (status, json, started)
        }
        MirrorCommand::Stop { json } => {
            let status = client::post(
                socket,
                MIRROR_STOP_PATH,
                &serde_json::json!({}),
                LOCAL_TIMEOUT,
            )?;
            (status, json, stopped)
        }
        MirrorCommand::Status { json } => (client::get(socket, MIRROR_PATH)?, json, show),
    };
    if json {
        return print_json(&status);
    }
    println!("{}", line(&status));
    Ok(())
}

/// `all`, or the items joined with commas.
fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "all".to_owned()
    } else {
        items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
    }
}

fn filter(s: &MirrorStatus) -> String {
    format!("networks {}, ports {}", list(&s.cidrs), list(&s.ports))
}

fn counts(s: &MirrorStatus) -> String {
    let mut text = format!("{} copied, {} dropped", s.copied, s.dropped);
    if s.write_errors > 0 {
        text.push_str(&format!(", {} refused by the interface", s.write_errors));
    }
    if s.active && !s.read {
        text.push_str(" (nobody reads the interface: no copies are made)");
    }
    text
}

fn started(s: &MirrorStatus) -> String {
    let interface = s.interface.as_deref().unwrap_or("?");
    format!(
        "mirroring decrypted traffic to {interface} ({}); read it with e.g. `tcpdump -ni {interface}`",
        filter(s)
    )
}

fn stopped(s: &MirrorStatus) -> String {
    match &s.interface {
        Some(interface) => format!("mirror to {interface} stopped: {}", counts(s)),
        None => "no mirror was running".to_owned(),
    }
}

fn show(s: &MirrorStatus) -> String {
    match (&s.interface, s.active) {
        (Some(interface), true) => {
            format!("mirroring to {interface} ({}): {}", filter(s), counts(s))
        }
        _ => "no mirror runs; start one with `overlayctl mirror start`".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> MirrorStatus {
        MirrorStatus {
            active: true,
            interface: Some("ovlmirror0".into()),
            cidrs: vec!["10.42.2.0/24".parse().unwrap()],
            ports: vec![],
            copied: 120,
            dropped: 3,
            write_errors: 0,
            read: true,
        }
    }

    #[test]
    fn renderings() {
        assert_eq!(
            show(&running()),
            "mirroring to ovlmirror0 (networks 10.42.2.0/24, ports all): 120 copied, 3 dropped"
        );
        assert_eq!(
            show(&MirrorStatus::default()),
            "no mirror runs; start one with `overlayctl mirror start`"
        );
        assert_eq!(
            started(&running()),
            "mirroring decrypted traffic to ovlmirror0 (networks 10.42.2.0/24, ports all); read it with e.g. `tcpdump -ni ovlmirror0`"
        );
        let mut last = running();
        last.active = false;
        last.write_errors = 2;
        assert_eq!(
            stopped(&last),
            "mirror to ovlmirror0 stopped: 120 copied, 3 dropped, 2 refused by the interface"
        );
        assert_eq!(stopped(&MirrorStatus::default()), "no mirror was running");
    }
}
