//! `overlayctl admin ...`: more than one admin (each holds the CA key).

use std::path::Path;

use clap::{Args, Subcommand};
use protocol::api::{ADMIN_ADD_PATH, ADMIN_REMOVE_PATH, ADMINS_PATH, AdminRequest, AdminsResponse};

use crate::client::REMOTE_TIMEOUT;
use crate::control::print_json;
use crate::{client, parse};

/// `overlayctl admin ...`.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Make a member an admin (run on an admin): it gets the CA key over its
    /// authenticated control connection, a serial slot and part of the subnets; it can then
    /// issue tokens, admit, renew and revoke while this host is down.
    Add(AdminArgs),
    /// Remove an admin (run on another admin): its record is retired and it destroys its
    /// copy of the CA key when it sees that. A copy it kept can only be made useless by
    /// rotating the CA.
    Remove(AdminArgs),
    /// The network's admins, with their serial slots and how many blocks of the range each
    /// gives subnets from.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `overlayctl admin add|remove`.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The member's node name.
    #[arg(value_name = "NAME", value_parser = parse::name)]
    name: String,
    /// Print overlayd's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// `overlayctl admin ...`.
pub fn admin(socket: &Path, command: AdminCommand) -> anyhow::Result<()> {
    let (answer, json, said): (AdminsResponse, bool, String) = match command {
        AdminCommand::Add(args) => {
            let request = AdminRequest {
                name: args.name.clone(),
            };
            let answer = client::post(socket, ADMIN_ADD_PATH, &request, REMOTE_TIMEOUT)?;
            (
                answer,
                args.json,
                format!("{} is an admin now\n", args.name),
            )
        }
        AdminCommand::Remove(args) => {
            let request = AdminRequest {
                name: args.name.clone(),
            };
            let answer = client::post(socket, ADMIN_REMOVE_PATH, &request, REMOTE_TIMEOUT)?;
            (
                answer,
                args.json,
                format!(
                    "{} is no admin any more (it destroys its CA key when it hears of it)\n",
                    args.name
                ),
            )
        }
        AdminCommand::List { json } => (client::get(socket, ADMINS_PATH)?, json, String::new()),
    };
    if json {
        return print_json(&answer);
    }
    print!("{said}");
    if answer.admins.is_empty() {
        println!("one admin: the host that made the network (no admin records)");
    }
    for a in &answer.admins {
        let state = if a.removed { "removed" } else { "admin" };
        println!(
            "{:<20} {state:<8} slot {:>2}  blocks {:>2}  serials from {}",
            a.name, a.slot, a.blocks, a.serial_floor
        );
    }
    Ok(())
}
