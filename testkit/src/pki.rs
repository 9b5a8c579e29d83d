//! A throwaway public-key infrastructure for TLS tests: one CA, a server certificate for
//! `127.0.0.1` / `localhost`, and a client certificate, written as PEM files (made with
//! `rcgen`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// The PEM files of a test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (trust anchor for both sides).
    pub ca_file: PathBuf,
    /// Server certificate (SANs `127.0.0.1`, `localhost`) and key.
    pub server_cert_file: PathBuf,
    /// Server private key.
    pub server_key_file: PathBuf,
    /// Client certificate (for mutual TLS) and key.
    pub client_cert_file: PathBuf,
    /// Client private key.
    pub client_key_file: PathBuf,
    /// A second CA's certificate, which signed nothing here: a client trusting only it must
    /// refuse the server.
    pub other_ca_file: PathBuf,
}

impl TestPki {
    /// Generates a fresh PKI into `dir`.
    pub fn generate(dir: &Path) -> TestPki {
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write PEM");
            p
        };
        let ca = |cn: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().expect("CA key");
            let cert = params.self_signed(&key).expect("CA cert");
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("wscap test CA");
        let (other_pem, _) = ca("wscap other CA");
        let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
            let mut params = CertificateParams::new(sans).expect("leaf params");
            params.extended_key_usages = vec![usage];
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &issuer).expect("leaf cert");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "wscap test redis",
        );
        let (client_cert, client_key) = leaf(
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            "wscap test proxy",
        );
        TestPki {
            ca_file: write("ca.pem", ca_pem),
            server_cert_file: write("server.pem", server_cert),
            server_key_file: write("server.key", server_key),
            client_cert_file: write("client.pem", client_cert),
            client_key_file: write("client.key", client_key),
            other_ca_file: write("other-ca.pem", other_pem),
        }
    }

    /// The server side for [`crate::RedisOptions::tls`].
    pub fn redis_tls(&self, require_client_cert: bool) -> crate::RedisTls {
        crate::RedisTls {
            cert_file: self.server_cert_file.clone(),
            key_file: self.server_key_file.clone(),
            ca_file: self.ca_file.clone(),
            require_client_cert,
        }
    }
}
