//! Writes a local CA and a certificate signed by it, for the demo and the
//! tests: `dev-certs <dir> [--name NAME]... [--expired]`.
//!
//! Files: `ca.pem` (trust it: `curl --cacert ca.pem`), `cert.pem`, `key.pem`.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Generate a local CA and a server certificate (rcgen)")]
struct Cli {
    /// Output directory.
    dir: std::path::PathBuf,
    /// DNS names of the certificate (wildcards allowed).
    #[arg(long = "name", default_values_t = ["*.preview.localhost".to_string(), "localhost".to_string()])]
    names: Vec<String>,
    /// Issue a certificate that has already expired.
    #[arg(long)]
    expired: bool,
    /// File name prefix for the certificate and key (`<prefix>cert.pem`).
    #[arg(long, default_value = "")]
    prefix: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let files = test_support::certs::write(&cli.dir, &cli.prefix, &cli.names, cli.expired)?;
    println!("{}", files.ca.display());
    Ok(())
}
