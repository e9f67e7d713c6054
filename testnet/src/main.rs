//! `testnet`: overlay hosts on one machine from network namespaces. See the library's docs;
//! the commands are in `testnet::cli`.

fn main() -> std::process::ExitCode {
    testnet::cli::main()
}
