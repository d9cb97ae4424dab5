//! Local certificates (rcgen): a CA and server certificates it signs.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

pub struct CertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca.pem` (reused if present with its key `ca.key`) and
/// `<prefix>cert.pem` / `<prefix>key.pem` for `names` into `dir`.
pub fn write(
    dir: &Path,
    prefix: &str,
    names: &[String],
    expired: bool,
) -> anyhow::Result<CertFiles> {
    std::fs::create_dir_all(dir)?;
    let (ca_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca_key = match std::fs::read_to_string(&ca_key_path) {
        Ok(pem) => KeyPair::from_pem(&pem)?,
        Err(_) => KeyPair::generate()?,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "preview-edge local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;
    if !ca_path.exists() {
        std::fs::write(&ca_path, ca.pem())?;
        std::fs::write(&ca_key_path, ca_key.serialize_pem())?;
    }
    // Re-signing with the same key and name: certificates issued before stay valid.
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &issuer)?;
    let files = CertFiles {
        ca: ca_path,
        cert: dir.join(format!("{prefix}cert.pem")),
        key: dir.join(format!("{prefix}key.pem")),
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    Ok(files)
}
