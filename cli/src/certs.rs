//! `replctl certs init`: a CA, node certificates and admin certificates for a first setup.
//!
//! # Identities
//!
//! **The identity of a peer is the subject CN (common name) of its certificate.** A node's
//! certificate has CN = the node name; the daemon knows itself and its peers by that name, and
//! the node name is also what a client checks the server's certificate against (it is in the
//! certificate's SANs, with `localhost`, `127.0.0.1` and `::1`). An admin's certificate has
//! CN = the admin name, which the daemon's configuration lists to allow Admin calls over TCP.
//! Any certificate the CA signed is accepted for the TLS handshake; what it may do is decided by
//! its CN.
//!
//! # Layout of DIR
//!
//! | file | what | mode |
//! | --- | --- | --- |
//! | `ca.pem`, `ca.key` | the CA certificate and key (10 years) | 0644, 0600 |
//! | `NODE.pem`, `NODE.key` | a node: EKU serverAuth + clientAuth (5 years) | 0644, 0600 |
//! | `ADMIN.pem`, `ADMIN.key` | an admin client: EKU clientAuth only (5 years) | 0644, 0600 |
//!
//! Running `init` again on the same DIR reuses the CA to issue the certificates that are not
//! there yet (that is how a node is added), and keeps the ones that are. `--force` makes a new
//! CA and reissues every certificate named on the command line.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long node and admin certificates are valid (never beyond the CA).
const LEAF_VALIDITY: Duration = Duration::days(5 * 365);
/// Tolerated clock skew between nodes: certificates are valid from this long before now.
const BACKDATE: Duration = Duration::hours(1);

/// `replctl certs ...`
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertsCommand {
    /// Create a CA and certificates for nodes and admins in DIR (or add to an existing CA).
    ///
    /// Each node gets NAME.pem and NAME.key with CN = NAME and SANs NAME, localhost, 127.0.0.1
    /// and ::1; each admin gets a client-only certificate with CN = NAME. A peer's identity is
    /// its certificate's CN. Run again with a new --node to add a node with the same CA.
    Init(InitArgs),
}

/// Arguments of `replctl certs init`.
#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Directory for the CA, certificates and keys (created with mode 0700 if missing).
    dir: PathBuf,
    /// A node name (its certificate's CN and a DNS SAN); repeat for several nodes.
    #[arg(long = "node", value_name = "NAME")]
    nodes: Vec<String>,
    /// An admin client name (its certificate's CN); repeat for several admins.
    #[arg(long = "admin", value_name = "NAME")]
    admins: Vec<String>,
    /// An extra SAN for a node, as NODE=HOST where HOST is a DNS name or an IP address
    /// (for example node1=10.0.0.5); repeatable.
    #[arg(long = "san", value_name = "NODE=HOST")]
    sans: Vec<String>,
    /// Replace an existing CA with a new one and reissue the named certificates. Certificates
    /// signed by the old CA stop working.
    #[arg(long)]
    force: bool,
}

/// Runs `replctl certs ...`.
pub fn run(args: CertsArgs) -> Result<()> {
    match args.command {
        CertsCommand::Init(init) => {
            let request = InitRequest::from_args(init)?;
            let report = request.execute(OffsetDateTime::now_utc())?;
            print!("{}", report.render());
            Ok(())
        }
    }
}

/// Whether a certificate is for a node or an admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A node: server and client.
    Node,
    /// An admin: client only.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Admin => "admin",
        }
    }
}

/// A validated `certs init`.
#[derive(Debug)]
struct InitRequest {
    dir: PathBuf,
    /// (name, role, SANs) in command-line order.
    subjects: Vec<(String, Role, Vec<String>)>,
    force: bool,
}

impl InitRequest {
    fn from_args(args: InitArgs) -> Result<InitRequest> {
        let mut seen = BTreeSet::new();
        let mut subjects = Vec::new();
        for name in &args.nodes {
            check_node_name(name)?;
            if !seen.insert(name.clone()) {
                bail!("`{name}` is named twice: each node and admin needs its own name");
            }
            let sans = vec![
                name.clone(),
                "localhost".into(),
                "127.0.0.1".into(),
                "::1".into(),
            ];
            subjects.push((name.clone(), Role::Node, sans));
        }
        for name in &args.admins {
            check_admin_name(name)?;
            if !seen.insert(name.clone()) {
                bail!("`{name}` is named twice: each node and admin needs its own name");
            }
            subjects.push((name.clone(), Role::Admin, Vec::new()));
        }
        for san in &args.sans {
            let (node, host) = san.split_once('=').with_context(|| {
                format!("--san `{san}`: write it as NODE=HOST, e.g. node1=10.0.0.5")
            })?;
            let Some((_, _, sans)) = subjects
                .iter_mut()
                .find(|(n, r, _)| n == node && *r == Role::Node)
            else {
                bail!("--san `{san}`: `{node}` is not one of the --node names");
            };
            if host.parse::<IpAddr>().is_err() {
                check_dns_name(host).with_context(|| format!("--san `{san}`"))?;
            }
            if !sans.iter().any(|s| s == host) {
                sans.push(host.to_owned());
            }
        }
        Ok(InitRequest {
            dir: args.dir,
            subjects,
            force: args.force,
        })
    }

    /// Creates or reuses the CA and issues what is missing.
    fn execute(&self, now: OffsetDateTime) -> Result<Report> {
        if !self.dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .with_context(|| format!("cannot create {}", self.dir.display()))?;
        }
        let ca_pem = self.dir.join("ca.pem");
        let ca_key = self.dir.join("ca.key");
        let (ca, ca_outcome) = match (ca_pem.exists(), ca_key.exists(), self.force) {
            (true, true, false) => (Ca::load(&ca_pem, &ca_key)?, CaOutcome::Reused),
            (false, false, _) => (Ca::create(&ca_pem, &ca_key, now)?, CaOutcome::Created),
            (_, _, true) => (Ca::create(&ca_pem, &ca_key, now)?, CaOutcome::Replaced),
            (has_pem, _, false) => {
                let (there, missing) = if has_pem {
                    (&ca_pem, &ca_key)
                } else {
                    (&ca_key, &ca_pem)
                };
                bail!(
                    "{} exists but {} does not: restore the missing file to keep this CA, or run \
                     again with --force to make a new CA (every certificate the old one signed \
                     must then be reissued)",
                    there.display(),
                    missing.display()
                );
            }
        };

        let mut leaves = Vec::new();
        for (name, role, sans) in &self.subjects {
            let pem = self.dir.join(format!("{name}.pem"));
            let key = self.dir.join(format!("{name}.key"));
            let outcome = if ca_outcome == CaOutcome::Reused && pem.exists() && key.exists() {
                LeafOutcome::Kept
            } else {
                ca.issue(name, *role, sans, &pem, &key, now)?;
                LeafOutcome::Issued
            };
            leaves.push(Leaf {
                name: name.clone(),
                role: *role,
                sans: sans.clone(),
                pem,
                key,
                outcome,
            });
        }
        sync_dir(&self.dir)?;

        // With a new CA, certificates left in DIR from the old one no longer chain to it.
        let mut stale = Vec::new();
        if ca_outcome == CaOutcome::Replaced {
            let named: BTreeSet<&str> = self.subjects.iter().map(|(n, _, _)| n.as_str()).collect();
            for entry in fs::read_dir(&self.dir)
                .with_context(|| format!("cannot list {}", self.dir.display()))?
            {
                let path = entry?.path();
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                if path.extension().is_some_and(|e| e == "pem")
                    && stem != "ca"
                    && !named.contains(stem)
                {
                    stale.push(path);
                }
            }
            stale.sort();
        }
        Ok(Report {
            dir: self.dir.clone(),
            ca_pem,
            ca_key,
            ca_outcome,
            ca_not_after: ca.not_after,
            leaves,
            stale,
        })
    }
}

/// A CA able to sign.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl Ca {
    fn create(pem: &Path, key_path: &Path, now: OffsetDateTime) -> Result<Ca> {
        let key = KeyPair::generate().context("cannot generate the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let stamp = now.unix_timestamp();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "repld");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("repld CA {stamp}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let not_after = params.not_after;
        let cert = params
            .self_signed(&key)
            .context("cannot sign the CA certificate")?;
        write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(pem, cert.pem().as_bytes(), 0o644)?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            not_after,
        })
    }

    fn load(pem_path: &Path, key_path: &Path) -> Result<Ca> {
        let pem = fs::read_to_string(pem_path)
            .with_context(|| format!("cannot read {}", pem_path.display()))?;
        let key_pem = fs::read_to_string(key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .with_context(|| format!("{} is not a PEM certificate", pem_path.display()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
            anyhow::anyhow!("{} is not a valid certificate: {e}", pem_path.display())
        })?;
        if x509.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            bail!(
                "{} does not belong to {}: restore the matching pair, or use --force to make a new CA",
                key_path.display(),
                pem_path.display()
            );
        }
        if !x509.is_ca() {
            bail!("{} is not a CA certificate", pem_path.display());
        }
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .with_context(|| format!("cannot use {} as a CA", pem_path.display()))?;
        Ok(Ca { issuer, not_after })
    }

    fn issue(
        &self,
        name: &str,
        role: Role,
        sans: &[String],
        pem: &Path,
        key_path: &Path,
        now: OffsetDateTime,
    ) -> Result<()> {
        let key = KeyPair::generate().context("cannot generate a key")?;
        let mut params = CertificateParams::new(sans.to_vec())
            .with_context(|| format!("bad SAN for `{name}`"))?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "repld");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            Role::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = (now + LEAF_VALIDITY).min(self.not_after);
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("cannot sign the certificate of `{name}`"))?;
        write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(pem, cert.pem().as_bytes(), 0o644)?;
        Ok(())
    }
}

/// Writes `path` whole, with `mode`, through a temporary file and a rename, so a crash never
/// leaves half a key.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// A node name: a DNS name (it is a SAN), and not `ca`.
fn check_node_name(name: &str) -> Result<()> {
    if name == "ca" {
        bail!("`ca` cannot be a node name: ca.pem and ca.key are the CA's files");
    }
    check_dns_name(name).with_context(|| format!("--node `{name}`"))
}

fn check_dns_name(name: &str) -> Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        bail!(
            "`{name}` is not a valid host name: use letters, digits and -, in dot-separated labels \
             of at most 63 characters that do not start or end with -"
        );
    }
    Ok(())
}

/// An admin name: 1-64 characters from `[A-Za-z0-9._@-]`, not starting with `.` or `-`, and
/// not `ca`.
fn check_admin_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if !ok || name == "ca" {
        bail!(
            "--admin `{name}` is not a valid admin name: use 1-64 characters from A-Z a-z 0-9 . _ @ -, \
             not starting with . or -, and not `ca`"
        );
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CaOutcome {
    Created,
    Reused,
    Replaced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeafOutcome {
    Issued,
    Kept,
}

#[derive(Debug)]
struct Leaf {
    name: String,
    role: Role,
    sans: Vec<String>,
    pem: PathBuf,
    key: PathBuf,
    outcome: LeafOutcome,
}

/// What `init` did, for the operator.
#[derive(Debug)]
struct Report {
    dir: PathBuf,
    ca_pem: PathBuf,
    ca_key: PathBuf,
    ca_outcome: CaOutcome,
    ca_not_after: OffsetDateTime,
    leaves: Vec<Leaf>,
    stale: Vec<PathBuf>,
}

impl Report {
    fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let until = self.ca_not_after.date();
        let _ = match self.ca_outcome {
            CaOutcome::Created => writeln!(
                out,
                "created CA      {} (key {}, mode 0600), valid until {until}",
                self.ca_pem.display(),
                self.ca_key.display()
            ),
            CaOutcome::Replaced => writeln!(
                out,
                "replaced CA     {} (key {}, mode 0600), valid until {until}; certificates signed \
                 by the old CA no longer work with it",
                self.ca_pem.display(),
                self.ca_key.display()
            ),
            CaOutcome::Reused => writeln!(
                out,
                "using the existing CA {} (valid until {until}) to issue new certificates",
                self.ca_pem.display()
            ),
        };
        for leaf in &self.leaves {
            let what = format!("{} {}", leaf.role.as_str(), leaf.name);
            let _ = match leaf.outcome {
                LeafOutcome::Issued => {
                    let usage = match leaf.role {
                        Role::Node => format!("server+client, SAN {}", leaf.sans.join(", ")),
                        Role::Admin => "client only".to_owned(),
                    };
                    writeln!(
                        out,
                        "issued {what:<16} {} + {} (CN {}; {usage})",
                        leaf.pem.display(),
                        leaf.key.display(),
                        leaf.name
                    )
                }
                LeafOutcome::Kept => writeln!(
                    out,
                    "kept   {what:<16} {} exists (delete it and its .key to reissue)",
                    leaf.pem.display()
                ),
            };
        }
        for path in &self.stale {
            let _ = writeln!(
                out,
                "warning: {} was signed by the old CA: reissue it (name it with --node or --admin)",
                path.display()
            );
        }
        let nodes: Vec<&str> = self
            .leaves
            .iter()
            .filter(|l| l.role == Role::Node)
            .map(|l| l.name.as_str())
            .collect();
        let admins: Vec<&str> = self
            .leaves
            .iter()
            .filter(|l| l.role == Role::Admin)
            .map(|l| l.name.as_str())
            .collect();
        let dir = self.dir.display();
        let _ = writeln!(out);
        if !nodes.is_empty() {
            let _ = writeln!(
                out,
                "next: copy {dir}/ca.pem, {dir}/NODE.pem and {dir}/NODE.key to each node (keep the \
                 .key files mode 0600) and point its TLS settings at them."
            );
        }
        if !admins.is_empty() {
            let _ = writeln!(
                out,
                "      list the admins in each node's configuration to allow Admin calls over TCP: {}",
                admins.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "      keep {dir}/ca.key offline; to add a node later run: replctl certs init {dir} --node NEWNAME"
        );
        if let (Some(admin), false) = (admins.first(), nodes.is_empty()) {
            let abs = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
            let abs = abs.display();
            let _ = writeln!(
                out,
                "\na replctl config for {admin} (~/.config/replctl/config.toml; set each node's \
                 address):\n\n    ca = \"{abs}/ca.pem\"\n    cert = \"{abs}/{admin}.pem\"\n    \
                 key = \"{abs}/{admin}.key\""
            );
            for node in &nodes {
                let _ = writeln!(
                    out,
                    "\n    [nodes.{node}]\n    endpoint = \"https://{node}:{}\"",
                    repl_proto::DEFAULT_PORT
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    use super::*;

    fn request(dir: &Path, nodes: &[&str], admins: &[&str], force: bool) -> InitRequest {
        InitRequest::from_args(InitArgs {
            dir: dir.to_owned(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            admins: admins.iter().map(|s| s.to_string()).collect(),
            sans: vec![],
            force,
        })
        .expect("valid request")
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn cert(dir: &Path, name: &str) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from_pem_file(dir.join(format!("{name}.pem"))).expect("certificate")]
    }

    fn key(dir: &Path, name: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).expect("key")
    }

    fn roots(ca_dir: &Path) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for c in cert(ca_dir, "ca") {
            roots.add(c).expect("CA certificate");
        }
        Arc::new(roots)
    }

    /// A server `server` (certificates in `server_dir`) that requires a client certificate from
    /// the CA in `server_dir`, and a client `client` (from `client_dir`) that trusts the CA in
    /// `server_dir`; runs a TLS handshake over in-memory buffers.
    fn handshake(
        server_dir: &Path,
        server: &str,
        client_dir: &Path,
        client: &str,
    ) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(server_dir), provider())
            .build()
            .expect("verifier");
        let server_config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert(server_dir, server), key(server_dir, server))
            .expect("server certificate");
        let client_config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(roots(server_dir))
            .with_client_auth_cert(cert(client_dir, client), key(client_dir, client))
            .expect("client certificate");
        let name = ServerName::try_from(server.to_owned()).expect("server name");
        let mut c = ClientConnection::new(Arc::new(client_config), name).expect("client");
        let mut s = ServerConnection::new(Arc::new(server_config)).expect("server");
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).expect("in-memory write");
            }
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).expect("in-memory read");
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).expect("in-memory write");
            }
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).expect("in-memory read");
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                // The server saw the client's certificate, whose CN is the client's identity.
                let peer = s.peer_certificates().expect("client certificate");
                let (_, x509) = x509_parser::parse_x509_certificate(&peer[0]).expect("parse");
                let cn = x509
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok());
                assert_eq!(cn, Some(client));
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn mode(path: PathBuf) -> u32 {
        fs::metadata(path).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn certificates_chain_to_the_ca_and_only_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("certs");
        let report = request(&d, &["node1", "node2"], &["alice"], false)
            .execute(now())
            .expect("init");
        assert_eq!(report.ca_outcome, CaOutcome::Created);
        for key in ["ca.key", "node1.key", "node2.key", "alice.key"] {
            assert_eq!(mode(d.join(key)), 0o600, "{key}");
        }
        assert_eq!(mode(d.join("node1.pem")), 0o644);
        assert_eq!(mode(d.clone()), 0o700);

        // Node to node, both ways, and an admin client to a node.
        handshake(&d, "node1", &d, "node2").expect("node2 -> node1");
        handshake(&d, "node2", &d, "node1").expect("node1 -> node2");
        handshake(&d, "node1", &d, "alice").expect("alice -> node1");

        // A certificate from another CA is refused by the server.
        let other = dir.path().join("other");
        request(&other, &["mallory"], &[], false)
            .execute(now())
            .expect("init other");
        let err = handshake(&d, "node1", &other, "mallory").expect_err("foreign client");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );

        // An admin certificate cannot serve: it lacks serverAuth.
        let err = handshake(&d, "alice", &d, "node1").expect_err("admin as server");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn init_again_reuses_the_ca_to_add_a_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        request(d, &["node1"], &[], false)
            .execute(now())
            .expect("init");
        let ca = fs::read(d.join("ca.pem")).expect("ca");
        let node1 = fs::read(d.join("node1.pem")).expect("node1");

        let report = request(d, &["node1", "node3"], &[], false)
            .execute(now())
            .expect("add node3");
        assert_eq!(report.ca_outcome, CaOutcome::Reused);
        assert_eq!(report.leaves[0].outcome, LeafOutcome::Kept);
        assert_eq!(report.leaves[1].outcome, LeafOutcome::Issued);
        assert!(
            report.render().contains("using the existing CA"),
            "{}",
            report.render()
        );
        assert_eq!(fs::read(d.join("ca.pem")).expect("ca"), ca);
        assert_eq!(fs::read(d.join("node1.pem")).expect("node1"), node1);
        handshake(d, "node1", d, "node3").expect("node3 -> node1");
        handshake(d, "node3", d, "node1").expect("node1 -> node3");

        // --force makes a new CA: the old node1 certificate is reissued, node3 is flagged.
        let report = request(d, &["node1"], &[], true)
            .execute(now())
            .expect("force");
        assert_eq!(report.ca_outcome, CaOutcome::Replaced);
        assert_ne!(fs::read(d.join("ca.pem")).expect("ca"), ca);
        assert_eq!(report.stale, vec![d.join("node3.pem")]);
        handshake(d, "node1", d, "node1").expect("reissued node1");
    }

    #[test]
    fn half_a_ca_is_refused_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        request(d, &[], &[], false).execute(now()).expect("init");
        fs::remove_file(d.join("ca.key")).expect("remove");
        let err = request(d, &["node1"], &[], false)
            .execute(now())
            .expect_err("no key");
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(!d.join("node1.pem").exists());
        request(d, &["node1"], &[], true)
            .execute(now())
            .expect("force");
        handshake(d, "node1", d, "node1").expect("new CA works");
    }

    #[test]
    fn names_and_sans_are_checked() {
        let args = |nodes: &[&str], admins: &[&str], sans: &[&str]| InitArgs {
            dir: "x".into(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            admins: admins.iter().map(|s| s.to_string()).collect(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            force: false,
        };
        for bad in ["", "ca", "-x", "a_b", "a/b", "a..b", "bad name"] {
            assert!(
                InitRequest::from_args(args(&[bad], &[], &[])).is_err(),
                "node {bad:?}"
            );
        }
        for bad in ["", "ca", ".x", "a/b", "a b"] {
            assert!(
                InitRequest::from_args(args(&[], &[bad], &[])).is_err(),
                "admin {bad:?}"
            );
        }
        assert!(
            InitRequest::from_args(args(&["n1"], &["n1"], &[])).is_err(),
            "duplicate"
        );
        assert!(
            InitRequest::from_args(args(&["n1"], &[], &["n2=10.0.0.1"])).is_err(),
            "unknown node"
        );
        assert!(
            InitRequest::from_args(args(&["n1"], &[], &["n1"])).is_err(),
            "no ="
        );
        assert!(
            InitRequest::from_args(args(&["n1"], &[], &["n1=bad host"])).is_err(),
            "bad host"
        );

        let req = InitRequest::from_args(args(
            &["n1.example.com"],
            &["ops@site"],
            &["n1.example.com=10.0.0.5", "n1.example.com=n1"],
        ))
        .expect("valid");
        assert_eq!(
            req.subjects[0].2,
            [
                "n1.example.com",
                "localhost",
                "127.0.0.1",
                "::1",
                "10.0.0.5",
                "n1"
            ]
        );
    }

    #[test]
    fn extra_sans_are_usable_as_server_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let req = InitRequest::from_args(InitArgs {
            dir: d.to_owned(),
            nodes: vec!["node1".into()],
            admins: vec![],
            sans: vec!["node1=10.0.0.5".into()],
            force: false,
        })
        .expect("valid");
        req.execute(now()).expect("init");
        let der = &cert(d, "node1")[0];
        let (_, x509) = x509_parser::parse_x509_certificate(der).expect("parse");
        let san = x509
            .subject_alternative_name()
            .expect("ok")
            .expect("present");
        let text = format!("{:?}", san.value.general_names);
        assert!(
            text.contains("10.0.0.5") || text.contains("[10, 0, 0, 5]"),
            "{text}"
        );
        assert!(
            text.contains("node1") && text.contains("localhost"),
            "{text}"
        );
    }
}
