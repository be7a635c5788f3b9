//! Certificates made at run time for TLS tests: a CA of the test's own, a
//! server certificate for `localhost` and 127.0.0.1, and client
//! certificates, as PEM files in a directory removed on drop. No private key
//! is ever committed.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA and the files of what it signed.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// A certificate and its key, as PEM text and as files.
pub struct Signed {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Pki {
    /// A new CA named `name`, its files in a fresh directory.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pulse-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let ca_pem = params.self_signed(&key).expect("CA certificate").pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).expect("write the CA certificate");
        Self { dir, issuer: Issuer::new(params, key), ca_pem }
    }

    /// The CA certificate (what clients and servers are told to trust).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server certificate for `localhost` and 127.0.0.1, files `<name>.pem` and `<name>.key`.
    pub fn server(&self, name: &str) -> Signed {
        self.sign(name, vec!["localhost".into(), "127.0.0.1".into()])
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, name: &str) -> Signed {
        self.sign(name, vec![name.into()])
    }

    fn sign(&self, name: &str, names: Vec<String>) -> Signed {
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert_pem = params.signed_by(&key, &self.issuer).expect("sign").pem();
        let key_pem = key.serialize_pem();
        let (cert_file, key_file) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        std::fs::write(&cert_file, &cert_pem).expect("write the certificate");
        std::fs::write(&key_file, &key_pem).expect("write the key");
        Signed { cert_pem, key_pem, cert_file, key_file }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
