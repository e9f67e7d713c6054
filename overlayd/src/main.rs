//! `overlayd`: parse flags, load the config, install logging, run. All logic is in the lib.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use overlayd::config::Config;

/// The overlay daemon: WireGuard tunnels to every peer host through a TUN device.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, default_value = "/etc/overlayd/overlayd.toml")]
    config: PathBuf,
    /// Validate the configuration, print it with secrets redacted, and exit.
    #[arg(long)]
    check_config: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let (config, text) = match Config::load_with_text(&args.config) {
        Ok(c) => c,
        Err(e) => {
            // Every config problem (ConfigError) is the operator's to fix: exit code 2.
            eprintln!("overlayd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        print!("{}", config.redacted());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("overlayd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(overlayd::run(config, text)) {
        Ok(()) => {
            // The data plane threads block in system calls; exiting closes the TUN,
            // which removes the device.
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("overlayd: {e:#}");
            let usage = e.downcast_ref::<overlayd::UsageError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
