//! `overlayctl ca ...`: the network's CA (admin hosts).

use std::path::Path;

use clap::{Args, Subcommand};
use protocol::api::{CA_ROTATE_PATH, CaRotateRequest, CaRotateResponse};

use crate::client::{self, REMOTE_TIMEOUT};
use crate::control::print_json;
use crate::parse;

/// `overlayctl ca ...`.
#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Replace the network's CA by a new one: the old CA signs the new one over, every
    /// member trusts both and renews its certificate under the new one during the
    /// transition, then the old CA is retired everywhere (its certificates and tokens are
    /// refused). Unused tokens are void at once: make new ones.
    Rotate(CaRotateArgs),
}

/// `overlayctl ca rotate`.
#[derive(Args, Debug)]
pub struct CaRotateArgs {
    /// How long the old CA stays trusted beside the new one: 90s, 10m, 1h, 2d or plain
    /// seconds (10 s to a year) [default: `[control] ca_transition_s`, 24 h].
    #[arg(long, value_name = "DURATION", value_parser = parse::duration_s)]
    transition: Option<u64>,
    /// Print overlayd's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs an `overlayctl ca` command.
pub fn run(socket: &Path, command: CaCommand) -> anyhow::Result<()> {
    let CaCommand::Rotate(args) = command;
    let request = CaRotateRequest {
        transition_s: args.transition,
    };
    let answer: CaRotateResponse = client::post(socket, CA_ROTATE_PATH, &request, REMOTE_TIMEOUT)?;
    if args.json {
        return print_json(&answer);
    }
    println!(
        "rotated the network's CA to {}; CA {} stays trusted until {} while every member renews, then it is retired (make new tokens: the unused ones are void)",
        answer.new_ca,
        answer.old_ca,
        crate::when::utc(answer.retires_unix)
    );
    Ok(())
}
