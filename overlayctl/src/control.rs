//! The control-plane commands (`init`, `token create`, `join`, `revoke`, `node groups`,
//! `leave`): their arguments, the checks that make a bad command line a usage error before
//! the daemon is asked, one POST each, and the text shown for the answer.
//!
//! The renderings are pure (time comes in as `now_unix`); the handlers do the I/O.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use ipnet::IpNet;
use protocol::api::{
    INIT_PATH, InitRequest, JOIN_PATH, JoinRequest, LEAVE_PATH, Membership, NODE_GROUPS_PATH,
    NodeGroupsRequest, NodeGroupsResponse, REVOKE_PATH, RevokeRequest, RevokeResponse, Status,
    TOKENS_PATH, TokenRequest, TokenResponse,
};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::client::{LOCAL_TIMEOUT, REMOTE_TIMEOUT};
use crate::parse::{self, UsageError};
use crate::{client, show, when};

/// `overlayctl init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// The network's address range; every member's subnet is carved from it.
    #[arg(long, value_name = "CIDR", value_parser = parse::cidr)]
    cidr: IpNet,
    /// An extra range of --cidr's size (repeat for more, at most 7): each member also gets
    /// the subnet at its offset in every one, e.g. one range per Docker network to keep
    /// apart (--cidr 10.42.0.0/16 --range 10.43.0.0/16: 10.42.K.0/24 and 10.43.K.0/24).
    #[arg(long = "range", value_name = "CIDR", value_parser = parse::cidr)]
    ranges: Vec<IpNet>,
    /// The network's name (lowercase letters, digits, '-').
    #[arg(long, value_name = "NAME", default_value = "overlay", value_parser = parse::name)]
    network: String,
    /// This host's node name [default: this machine's host name, made valid].
    #[arg(long, value_name = "NODE", value_parser = parse::name)]
    name: Option<String>,
    /// This host's container subnet, inside --cidr or a --range (its parallels in the
    /// other ranges come with it) [default: the first free one].
    #[arg(long, value_name = "CIDR", value_parser = parse::cidr)]
    subnet: Option<IpNet>,
    /// Prefix length of the subnets given to members [default: 24 for IPv4, 64 for IPv6].
    #[arg(long, value_name = "N")]
    subnet_prefix: Option<u8>,
    /// Print overlayd's answer (the status) as JSON.
    #[arg(long)]
    json: bool,
}

/// `overlayctl token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a single-use join token (a secret: pass it on privately) for one new host.
    Create(TokenCreateArgs),
}

/// `overlayctl token create`.
#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    /// How long the token may be used: 90s, 10m, 1h, 2d or plain seconds.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse::duration_s)]
    ttl: u64,
    /// Groups the joining host's certificate gets, separated by commas.
    #[arg(long, value_name = "GROUPS", value_delimiter = ',', value_parser = parse::group)]
    groups: Vec<String>,
    /// Print the token and its expiry as JSON.
    #[arg(long)]
    json: bool,
}

/// `overlayctl join`.
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The token from `overlayctl token create`; `-` reads it from standard input, which
    /// keeps it out of the shell history and `ps`.
    #[arg(value_name = "TOKEN")]
    token: String,
    /// This host's node name, unique in the network: a name a current member holds is
    /// refused until an admin revokes that member [default: this machine's host name, made
    /// valid].
    #[arg(long, value_name = "NODE", value_parser = parse::name)]
    name: Option<String>,
    /// The container subnet this host asks for [default: the admin picks a free one].
    #[arg(long, value_name = "CIDR", value_parser = parse::cidr)]
    subnet: Option<IpNet>,
    /// Print overlayd's answer (the status) as JSON.
    #[arg(long)]
    json: bool,
}

/// `overlayctl node ...`.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Give a member new groups: its certificate is re-issued with them (new serial, same
    /// keys and subnets) and pushed to it; it takes it without a restart, and the policy
    /// follows at once. `overlayctl node groups NAME ""` removes every group.
    Groups(NodeGroupsArgs),
}

/// `overlayctl node groups`.
#[derive(Args, Debug)]
pub struct NodeGroupsArgs {
    /// The member's node name (this host's own name works too).
    #[arg(value_name = "NAME", value_parser = parse::name)]
    name: String,
    /// Its groups, separated by commas (e.g. web,eu); they replace the ones it has.
    #[arg(value_name = "GROUPS")]
    groups: String,
    /// Print overlayd's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// `overlayctl revoke`.
#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The member's node name. Its WireGuard key can never join again; the name can, with a
    /// new token and another key.
    #[arg(value_name = "NAME", value_parser = parse::name)]
    name: String,
    /// Print overlayd's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// `overlayctl leave`.
#[derive(Args, Debug)]
pub struct LeaveArgs {
    /// Print overlayd's answer (the status) as JSON.
    #[arg(long)]
    json: bool,
}

/// Prints `value` as pretty JSON on standard output.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `overlayctl init`.
pub fn init(socket: &Path, args: InitArgs) -> anyhow::Result<()> {
    check_init(&args)?;
    let name = match args.name {
        Some(name) => name,
        None => parse::default_node_name()?,
    };
    let request = InitRequest {
        network: args.network,
        cidr: args.cidr,
        ranges: args.ranges,
        name,
        subnet: args.subnet,
        subnet_prefix: args.subnet_prefix,
    };
    let status: Status = client::post(socket, INIT_PATH, &request, LOCAL_TIMEOUT)?;
    if args.json {
        return print_json(&status);
    }
    print!("{}", summary(Verb::Init, membership(&status)?));
    Ok(())
}

/// The checks overlayd would make anyway, made here so a typo is a usage error (exit 2)
/// with the flag's name in it.
fn check_init(args: &InitArgs) -> Result<(), UsageError> {
    let cidr = args.cidr;
    check_network_address("--cidr", cidr)?;
    for range in &args.ranges {
        check_network_address("--range", *range)?;
    }
    if let Some(subnet) = args.subnet {
        check_network_address("--subnet", subnet)?;
        let inside = std::iter::once(&cidr)
            .chain(&args.ranges)
            .any(|r| r.contains(&subnet) && subnet.prefix_len() > r.prefix_len());
        if !inside {
            return Err(UsageError(format!(
                "--subnet {subnet} is not a subnet of --cidr {cidr}{}: pick a smaller range inside it",
                if args.ranges.is_empty() {
                    ""
                } else {
                    " or a --range"
                }
            )));
        }
    }
    if let Some(prefix) = args.subnet_prefix
        && !(cidr.prefix_len() < prefix && prefix <= cidr.max_prefix_len())
    {
        return Err(UsageError(format!(
            "--subnet-prefix {prefix} does not fit --cidr {cidr}: use a length from {} to {}",
            cidr.prefix_len() + 1,
            cidr.max_prefix_len()
        )));
    }
    Ok(())
}

/// Refuses a range written with host bits (`10.42.0.1/16`), which is most likely a typo.
fn check_network_address(flag: &str, net: IpNet) -> Result<(), UsageError> {
    if net == net.trunc() {
        Ok(())
    } else {
        Err(UsageError(format!(
            "{flag} {net} has host bits set: did you mean {}?",
            net.trunc()
        )))
    }
}

/// `overlayctl token create`.
pub fn token(socket: &Path, command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create(args) = command;
    let request = TokenRequest {
        ttl_s: args.ttl,
        groups: args.groups,
    };
    // Zeroized on drop, as is the JSON text made of it.
    let answer: TokenResponse = client::post(socket, TOKENS_PATH, &request, LOCAL_TIMEOUT)?;
    if args.json {
        let text = Zeroizing::new(serde_json::to_string_pretty(&answer)?);
        println!("{}", text.as_str());
        return Ok(());
    }
    // The token alone on stdout, so `T=$(overlayctl token create)` works.
    println!("{}", answer.token);
    eprintln!("{}", token_expiry(answer.expires_unix, when::now_unix()));
    Ok(())
}

/// The line shown on stderr after a token: `expires 2026-... UTC (in 1h); single use`.
fn token_expiry(expires_unix: u64, now_unix: u64) -> String {
    let left = match expires_unix.checked_sub(now_unix) {
        Some(seconds) if seconds > 0 => format!("in {}", when::span(seconds)),
        _ => "already expired: check this host's clock".to_owned(),
    };
    format!("expires {} ({left}); single use", when::utc(expires_unix))
}

/// The most of standard input read for a token before the buffer would grow (a token is
/// at most ~1,100 characters): growing leaves copies behind that are never zeroized.
const TOKEN_INPUT_CAPACITY: usize = 4096;

/// `overlayctl join`. The token's copies here are zeroized on drop (the command line's
/// own copy is the process's: `-` keeps the token off it).
pub fn join(socket: &Path, mut args: JoinArgs) -> anyhow::Result<()> {
    let input = if args.token == "-" {
        let mut input = Zeroizing::new(String::with_capacity(TOKEN_INPUT_CAPACITY));
        std::io::stdin()
            .read_to_string(&mut input)
            .context("cannot read the token on standard input")?;
        input
    } else {
        Zeroizing::new(std::mem::take(&mut args.token))
    };
    // Into a `JoinRequest`, which zeroizes it on drop.
    let token = input.trim().to_owned();
    if token.is_empty() {
        return Err(UsageError(
            "no token given: pass the output of `overlayctl token create` (or `-` and the token on standard input)".to_owned(),
        )
        .into());
    }
    if let Some(subnet) = args.subnet {
        check_network_address("--subnet", subnet)?;
    }
    let name = match args.name {
        Some(name) => name,
        None => parse::default_node_name()?,
    };
    let request = JoinRequest {
        token,
        name,
        subnet: args.subnet,
    };
    // The daemon waits for the admin host here, so this may take more than a local call.
    let status: Status = client::post(socket, JOIN_PATH, &request, REMOTE_TIMEOUT)?;
    if args.json {
        return print_json(&status);
    }
    print!("{}", summary(Verb::Join, membership(&status)?));
    Ok(())
}

/// `overlayctl revoke`.
pub fn revoke(socket: &Path, args: RevokeArgs) -> anyhow::Result<()> {
    let request = RevokeRequest { name: args.name };
    let answer: RevokeResponse = client::post(socket, REVOKE_PATH, &request, LOCAL_TIMEOUT)?;
    if args.json {
        return print_json(&answer);
    }
    println!(
        "revoked {} (certificate serial {}, key {}); every member closes its tunnel to it",
        answer.name, answer.serial, answer.public_key
    );
    Ok(())
}

/// `overlayctl node ...`.
pub fn node(socket: &Path, command: NodeCommand) -> anyhow::Result<()> {
    let NodeCommand::Groups(args) = command;
    let groups = args
        .groups
        .split(',')
        .filter(|g| !g.is_empty())
        .map(|g| parse::group(g).map_err(|e| UsageError(e).into()))
        .collect::<anyhow::Result<Vec<String>>>()?;
    let request = NodeGroupsRequest {
        name: args.name,
        groups,
    };
    let answer: NodeGroupsResponse =
        client::post(socket, NODE_GROUPS_PATH, &request, LOCAL_TIMEOUT)?;
    if args.json {
        return print_json(&answer);
    }
    let groups = if answer.groups.is_empty() {
        "no groups".to_string()
    } else {
        format!("groups {}", answer.groups.join(","))
    };
    if answer.own {
        println!(
            "re-issued this host's certificate with {groups} (serial {}); in force now",
            answer.serial
        );
    } else {
        println!(
            "re-issued the certificate of {} with {groups} (serial {}); pushed to it, it takes it without a restart",
            answer.name, answer.serial
        );
    }
    Ok(())
}

/// `overlayctl leave`.
pub fn leave(socket: &Path, args: LeaveArgs) -> anyhow::Result<()> {
    let empty = serde_json::Map::new();
    let status: Status = client::post(socket, LEAVE_PATH, &empty, LOCAL_TIMEOUT)?;
    if args.json {
        return print_json(&status);
    }
    match &status.member {
        Some(m) => println!(
            "left network {}; the other members have dropped this host",
            m.network
        ),
        None => println!("left the network; the other members have dropped this host"),
    }
    Ok(())
}

fn membership(status: &Status) -> anyhow::Result<&Membership> {
    status.member.as_ref().context(
        "overlayd answered without a membership (are overlayd and overlayctl the same version?)",
    )
}

/// Which command a [`summary`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Init,
    Join,
}

/// What `init` and `join` print: the membership this host now has and the next step.
fn summary(verb: Verb, m: &Membership) -> String {
    let (done, next) = match verb {
        Verb::Init => (
            "initialised",
            "next: run `overlayctl token create` on this host, then `overlayctl join TOKEN` on each other host",
        ),
        Verb::Join => (
            "joined",
            "next: `overlayctl peers` shows the other members as their tunnels come up",
        ),
    };
    let role = if m.admin {
        "admin (this host holds the network CA key)"
    } else {
        "member"
    };
    let ranges: String = m.ranges.iter().map(|r| format!(", {r}")).collect();
    format!(
        "{done} network {} ({}{ranges})\n  node:     {}\n  subnet:   {}\n  CA:       {}\n  role:     {role}\n  members:  {} alive\n{next}\n",
        m.network,
        m.cidr,
        m.name,
        show::list(&m.subnets),
        m.ca_fingerprint,
        m.member_count,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Membership {
        Membership {
            network: "prod".to_owned(),
            cidr: "10.42.0.0/16".parse().unwrap(),
            ranges: Vec::new(),
            ca_fingerprint: "sha256:3f2a".to_owned(),
            name: "node-a".to_owned(),
            subnets: vec!["10.42.0.0/24".parse().unwrap()],
            groups: vec![],
            certificate_expires_unix: 0,
            certificate_serial: 0,
            certificate_renewed_unix: None,
            certificate_renew_at_unix: 0,
            admin: true,
            control_port: 51821,
            member_count: 1,
            left: false,
            ca: None,
        }
    }

    #[test]
    fn init_summary_names_the_next_step() {
        let text = summary(Verb::Init, &member());
        assert_eq!(
            text,
            "initialised network prod (10.42.0.0/16)\n  node:     node-a\n  subnet:   10.42.0.0/24\n  \
             CA:       sha256:3f2a\n  role:     admin (this host holds the network CA key)\n  \
             members:  1 alive\nnext: run `overlayctl token create` on this host, then \
             `overlayctl join TOKEN` on each other host\n"
        );
    }

    #[test]
    fn join_summary() {
        let m = Membership {
            admin: false,
            member_count: 3,
            ..member()
        };
        let text = summary(Verb::Join, &m);
        assert!(
            text.starts_with("joined network prod (10.42.0.0/16)\n"),
            "{text}"
        );
        assert!(text.contains("  role:     member\n"), "{text}");
        assert!(text.contains("  members:  3 alive\n"), "{text}");
    }

    #[test]
    fn token_expiry_line() {
        let now = 1_700_000_000;
        assert_eq!(
            token_expiry(now + 3600, now),
            "expires 2023-11-14 23:13:20 UTC (in 1h); single use"
        );
        assert!(token_expiry(now, now).contains("already expired"));
    }

    fn init_args(cidr: &str) -> InitArgs {
        InitArgs {
            cidr: cidr.parse().unwrap(),
            ranges: Vec::new(),
            network: "overlay".to_owned(),
            name: None,
            subnet: None,
            subnet_prefix: None,
            json: false,
        }
    }

    #[test]
    fn init_checks() {
        assert!(check_init(&init_args("10.42.0.0/16")).is_ok());
        let err = check_init(&init_args("10.42.0.1/16")).unwrap_err();
        assert_eq!(
            err.0,
            "--cidr 10.42.0.1/16 has host bits set: did you mean 10.42.0.0/16?"
        );
        let with = |subnet: Option<&str>, prefix: Option<u8>| InitArgs {
            subnet: subnet.map(|s| s.parse().unwrap()),
            subnet_prefix: prefix,
            ..init_args("10.42.0.0/16")
        };
        assert!(check_init(&with(Some("10.42.7.0/24"), Some(24))).is_ok());
        assert!(check_init(&with(Some("10.43.0.0/24"), None)).is_err());
        assert!(check_init(&with(Some("10.42.0.0/16"), None)).is_err());
        assert!(check_init(&with(None, Some(16))).is_err());
        assert!(check_init(&with(None, Some(33))).is_err());
        assert!(check_init(&with(None, Some(32))).is_ok());
        let ranged = |subnet: &str, range: &str| InitArgs {
            subnet: Some(subnet.parse().unwrap()),
            ranges: vec![range.parse().unwrap()],
            ..init_args("10.42.0.0/16")
        };
        assert!(check_init(&ranged("10.43.7.0/24", "10.43.0.0/16")).is_ok());
        let err = check_init(&ranged("10.44.7.0/24", "10.43.0.0/16")).unwrap_err();
        assert!(err.0.contains("or a --range"), "{}", err.0);
        let err = check_init(&ranged("10.42.7.0/24", "10.43.0.1/16")).unwrap_err();
        assert!(
            err.0.starts_with("--range 10.43.0.1/16 has host bits"),
            "{}",
            err.0
        );
        let v6 = InitArgs {
            subnet_prefix: Some(64),
            ..init_args("fd42::/48")
        };
        assert!(check_init(&v6).is_ok());
    }
}
