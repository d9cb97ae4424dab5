//! Prints a bearer JWT for the bench's auth rows: `bench-token --alg ES256
//! --key test-support/jwt-keys/ec.key --issuer I --audience A`, valid for
//! an hour.

use clap::Parser;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    alg: Algorithm,
    /// The signing key (PKCS#8 PEM).
    #[arg(long)]
    key: std::path::PathBuf,
    #[arg(long)]
    issuer: String,
    #[arg(long)]
    audience: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pem = std::fs::read(&args.key)?;
    let key = match args.alg.family() {
        jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem)?,
        jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem)?,
        jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem)?,
        jsonwebtoken::AlgorithmFamily::Hmac => EncodingKey::from_secret(&pem),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({
        "iss": args.issuer, "aud": args.audience, "sub": "bench", "email": "bench@example.com",
        "iat": now, "exp": now + 3600,
    });
    println!("{}", encode(&Header::new(args.alg), &claims, &key)?);
    Ok(())
}
