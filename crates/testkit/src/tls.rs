//! A certificate authority of a test's own (rcgen) and the certificates it signs, as PEM files in a
//! temp dir: TLS to NATS and PostgreSQL is tested for real, with nothing trusted by accident.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A CA, and a server and a client certificate it signed.
pub struct TestCa {
    dir: TempDir,
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA, with a server certificate for `127.0.0.1` and `localhost` and a client certificate.
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("orderflow-ca-")
            .tempdir()
            .expect("create a temp dir for the test CA");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names is valid");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "orderflow test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("generate the CA key");
        let cert = params.self_signed(&key).expect("sign the CA");
        write(&dir.path().join("ca.pem"), &cert.pem());
        let issuer = Issuer::new(params, key);
        let ca = TestCa { dir };
        ca.sign(
            "server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        );
        ca.sign(
            "client",
            &["orderflow-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        );
        ca
    }

    /// The CA's certificate: what a client trusts.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn server(&self) -> CertFiles {
        self.files("server")
    }

    pub fn client(&self) -> CertFiles {
        self.files("client")
    }

    fn files(&self, name: &str) -> CertFiles {
        CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
        }
    }

    fn sign(
        &self,
        name: &str,
        subject_names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        issuer: &Issuer<'_, KeyPair>,
    ) {
        let names: Vec<String> = subject_names
            .iter()
            .map(|name| (*name).to_owned())
            .collect();
        let mut params = CertificateParams::new(names).expect("valid subject names");
        params
            .distinguished_name
            .push(DnType::CommonName, subject_names[0]);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate a key");
        let cert = params.signed_by(&key, issuer).expect("sign a certificate");
        let files = self.files(name);
        write(&files.cert, &cert.pem());
        write(&files.key, &key.serialize_pem());
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

fn write(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}
