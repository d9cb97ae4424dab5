//! Prints a credential for the bench's auth rows, valid for an hour:
//!
//! - `bench-token --alg ES256 --key test-support/jwt-keys/ec.key --issuer I
//!   --audience A`: a bearer JWT;
//! - `bench-token --session-secret FILE --host H`: a session cookie
//!   (`name=value`) for host H, sealed as the edge seals them.

use clap::Parser;
use edge_proxy::auth::session::{Purpose, Sealer, Session};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    alg: Option<Algorithm>,
    /// The signing key (PKCS#8 PEM).
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    #[arg(long, default_value = "")]
    issuer: String,
    #[arg(long, default_value = "")]
    audience: String,
    /// The edge's `auth.session.secret_file`.
    #[arg(long, conflicts_with_all = ["alg", "key"])]
    session_secret: Option<std::path::PathBuf>,
    /// The host the session cookie is for.
    #[arg(long, requires = "session_secret")]
    host: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    if let Some(secret) = &args.session_secret {
        let secret = std::fs::read(secret)?;
        let session = Session {
            sid: "bench".into(),
            host: args.host.clone().unwrap_or_default(),
            iss: "bench".into(),
            sub: "bench".into(),
            email: Some("bench@example.com".into()),
            groups: Vec::new(),
            orgs: Vec::new(),
            claims: Vec::new(),
            expires: now + 3600,
            seen: now,
        };
        let sealed = Sealer::new(secret.trim_ascii()).seal(Purpose::Session, &session);
        println!(
            "{}={sealed}",
            edge_proxy::config::auth::DEFAULT_SESSION_COOKIE
        );
        return Ok(());
    }
    let (Some(alg), Some(key)) = (args.alg, &args.key) else {
        anyhow::bail!("give --alg and --key (a JWT) or --session-secret and --host (a cookie)");
    };
    let pem = std::fs::read(key)?;
    let key = match alg.family() {
        jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem)?,
        jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem)?,
        jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem)?,
        jsonwebtoken::AlgorithmFamily::Hmac => EncodingKey::from_secret(&pem),
    };
    let claims = serde_json::json!({
        "iss": args.issuer, "aud": args.audience, "sub": "bench", "email": "bench@example.com",
        "iat": now, "exp": now + 3600,
    });
    println!("{}", encode(&Header::new(alg), &claims, &key)?);
    Ok(())
}
