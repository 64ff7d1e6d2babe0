//! The `securechat` executable: parse the command line and hand over to the library.

fn main() -> std::process::ExitCode {
    securechat::cli::main()
}
