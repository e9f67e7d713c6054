//! `overlayctl`: the overlay's command line. Key commands work offline; the rest talk to
//! the local `overlayd` over its API socket. Exit status: 0 done, 1 failed, 2 bad usage.

mod admins;
mod ca;
mod client;
mod control;
mod generate;
mod manage;
mod mirror;
mod observe;
mod parse;
mod policy;
mod rotate;
mod show;
mod when;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use protocol::api::{PEERS_PATH, PeerStatus, STATUS_PATH, Status};

/// Control the encrypted container overlay on this host.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The local overlayd API socket.
    #[arg(long, global = true, env = "OVERLAYD_SOCKET", default_value = protocol::api::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// WireGuard keys, interchangeable with `wg genkey` and `wg pubkey`.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create a network with this host as its first member and admin (it holds the CA).
    Init(control::InitArgs),
    /// Join tokens, for admin hosts.
    #[command(subcommand)]
    Token(control::TokenCommand),
    /// Join a network with a token from `overlayctl token create` on an admin host.
    Join(control::JoinArgs),
    /// This host's daemon: identity, interface, totals.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every peer: name, state, endpoint, path (direct, punched, or relayed through whom),
    /// subnets, last handshake, bytes each way, drops.
    Peers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Container names this host serves by DNS (its own and the other hosts'), with the
    /// host that owns each and how long ago it was published.
    Names {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a member for good (admin hosts): its tunnels close and it cannot rejoin.
    Revoke(control::RevokeArgs),
    /// Members' certificates (admin hosts).
    #[command(subcommand)]
    Node(control::NodeCommand),
    /// The network's CA (admin hosts).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// More than one admin: make a member an admin, remove one, list them.
    #[command(subcommand)]
    Admin(admins::AdminCommand),
    /// A new WireGuard key for this host, certified by an admin and gossiped; peers move
    /// to it without a lost packet, and the old key is refused after a grace.
    RotateKey {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Leave the network: the other members drop this host and close their tunnels to it.
    Leave(control::LeaveArgs),
    /// Security events: spoofed sources, unknown keys, handshake floods, revoked hosts
    /// knocking, refused joins, policy denials, members down and up (the last 1,000).
    Events {
        /// Keep printing new events as they come.
        #[arg(long)]
        follow: bool,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The flow log: packets and bytes per flow and 5-second window, with the policy's
    /// verdict (when `[flows]` is on in overlayd's config).
    Flows {
        /// Keep printing new records as they come.
        #[arg(long)]
        follow: bool,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The network policy: who may talk to whom, on which ports.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// A copy of the decrypted traffic on a local interface, for an IDS or tcpdump.
    #[command(subcommand)]
    Mirror(mirror::MirrorCommand),
    /// Read overlayd's config file again and apply what changed, as SIGHUP does; settings
    /// that need a restart are named and keep their running values.
    Reload {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Static peers of the running daemon (stock WireGuard hosts beside the members):
    /// added, changed and removed at once, kept across restarts.
    #[command(subcommand)]
    Peer(manage::PeerCommand),
    /// Shell completions and man pages, for packaging.
    #[command(subcommand, hide = true)]
    Generate(generate::GenerateCommand),
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Print a new private key (base64), or write it to a file with mode 0600.
    Generate {
        /// Write the key to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Read a private key on standard input and print its public key.
    Public,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A bad value is one self-contained line, shown like every other error;
            // other parse errors keep clap's usage text.
            let one_line = matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            );
            let rendered = e.render().to_string();
            match rendered.lines().next() {
                Some(first) if one_line => {
                    eprintln!("overlayctl: {}", first.trim_start_matches("error: "))
                }
                _ => {
                    let _ = e.print();
                }
            }
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlayctl: {e:#}");
            let usage = e.downcast_ref::<keys::KeyError>().is_some()
                || e.downcast_ref::<parse::UsageError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keys(KeysCommand::Generate { out }) => {
            let key = keys::PrivateKey::generate();
            match out {
                Some(path) => keys::write_private_key_file(&path, &key)?,
                None => {
                    let mut text = key.to_base64();
                    text.push('\n');
                    std::io::stdout().write_all(text.as_bytes())?;
                }
            }
            Ok(())
        }
        Command::Keys(KeysCommand::Public) => {
            let mut input = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut input)
                .context("cannot read a private key on standard input")?;
            let key = keys::PrivateKey::from_base64(&input)?;
            println!("{}", key.public_key());
            Ok(())
        }
        Command::Init(args) => control::init(&cli.socket, args),
        Command::Token(command) => control::token(&cli.socket, command),
        Command::Join(args) => control::join(&cli.socket, args),
        Command::Status { json } => {
            let status: Status = client::get(&cli.socket, STATUS_PATH)?;
            if json {
                control::print_json(&status)
            } else {
                print!("{}", show::status(&status, when::now_unix()));
                Ok(())
            }
        }
        Command::Peers { json } => {
            let peers: Vec<PeerStatus> = client::get(&cli.socket, PEERS_PATH)?;
            if json {
                control::print_json(&peers)
            } else {
                print!("{}", show::peers(&peers));
                Ok(())
            }
        }
        Command::Names { json } => {
            let names: Vec<protocol::api::NameInfo> =
                client::get(&cli.socket, protocol::api::NAMES_PATH)?;
            if json {
                control::print_json(&names)
            } else {
                print!("{}", show::names(&names));
                Ok(())
            }
        }
        Command::Revoke(args) => control::revoke(&cli.socket, args),
        Command::Node(command) => control::node(&cli.socket, command),
        Command::Ca(command) => ca::run(&cli.socket, command),
        Command::Admin(command) => admins::admin(&cli.socket, command),
        Command::RotateKey { json } => rotate::run(&cli.socket, json),
        Command::Leave(args) => control::leave(&cli.socket, args),
        Command::Policy(command) => policy::run(&cli.socket, command),
        Command::Mirror(command) => mirror::run(&cli.socket, command),
        Command::Events { follow, json } => observe::events(&cli.socket, follow, json),
        Command::Flows { follow, json } => observe::flows(&cli.socket, follow, json),
        Command::Reload { json } => manage::reload(&cli.socket, json),
        Command::Peer(command) => manage::peer(&cli.socket, command),
        Command::Generate(command) => generate::run(command, Cli::command()),
    }
}
