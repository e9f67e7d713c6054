//! `overlayctl`: the overlay's command line. Key commands work offline; the rest talk to
//! the local `overlayd` over its API socket.

mod client;
mod show;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    /// This host's daemon: identity, interface, totals.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every peer: endpoint, subnets, last handshake, bytes each way, drops.
    Peers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
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
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlayctl: {e:#}");
            let usage = e.downcast_ref::<keys::KeyError>().is_some();
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
        Command::Status { json } => {
            let status: Status = client::get(&cli.socket, STATUS_PATH)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", show::status(&status));
            }
            Ok(())
        }
        Command::Peers { json } => {
            let peers: Vec<PeerStatus> = client::get(&cli.socket, PEERS_PATH)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&peers)?);
            } else {
                print!("{}", show::peers(&peers));
            }
            Ok(())
        }
    }
}
