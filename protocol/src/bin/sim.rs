//! `sim`: runs the membership simulation ([`protocol::sim`]) and prints progress lines,
//! then, last, one JSON line with the figures. Wrapped by `scripts/sim`.
//!
//! Usage: sim [--nodes N] [--loss P] [--seed S] [--duration SECONDS]
//! Exit status: 0 on success, 2 for bad usage or settings, 1 if the simulation failed.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use protocol::sim::{self, SimConfig, SimError};

const USAGE: &str = "usage: sim [--nodes N] [--loss P] [--seed S] [--duration SECONDS]
  --nodes N           members in the converged cluster (default 1000)
  --loss P            probability that a datagram is lost, 0 to <1 (default 0.01)
  --seed S            seed of every random choice (default 1)
  --duration SECONDS  simulated seconds of the no-failure run (default 600)";

/// What the command line asked for.
enum Command {
    Help,
    Run(Box<SimConfig>),
}

fn value<T: FromStr>(flag: &str, value: Option<String>) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .parse()
        .map_err(|error| format!("{flag}: cannot parse {value:?}: {error}"))
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let (mut nodes, mut loss, mut seed, mut duration) = (1000, 0.01, 1, 600.0);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--nodes" => nodes = value(&flag, args.next())?,
            "--loss" => loss = value(&flag, args.next())?,
            "--seed" => seed = value(&flag, args.next())?,
            "--duration" => duration = value(&flag, args.next())?,
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    let duration = Duration::try_from_secs_f64(duration)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or("--duration must be a positive number of seconds")?;
    Ok(Command::Run(Box::new(SimConfig::new(
        nodes, loss, seed, duration,
    ))))
}

fn main() -> ExitCode {
    let config = match parse(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("sim: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!("membership settings: {:?}", config.membership);
    match sim::run(&config, |line| println!("{line}")) {
        Ok(report) => {
            println!(
                "datagrams={} lost={} foca_errors={} steady datagrams per member per second={:.2}",
                report.datagrams,
                report.datagrams_lost,
                report.foca_errors,
                report.datagrams_per_member_per_s
            );
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Err(error @ (SimError::Invalid(_) | SimError::Config(_))) => {
            eprintln!("sim: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("sim: {error}");
            ExitCode::FAILURE
        }
    }
}
