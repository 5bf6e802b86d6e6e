//! How replctl reaches a node: flags, environment, and the replctl config that names nodes.
//!
//! # Which node a command talks to
//!
//! 1. A target with `NODE:` (`node1:data/docs`) talks to `[nodes.node1]` of the replctl config.
//! 2. Otherwise `--endpoint URL` (or `REPLCTL_ENDPOINT`): `https://host:port` with mutual TLS
//!    (`--ca`, `--cert`, `--key`), or `http://127.0.0.1:port` plaintext on loopback, or
//!    `unix:/path`.
//! 3. Otherwise `--socket PATH` (or `REPLCTL_SOCKET`): a node's local admin socket.
//! 4. Otherwise the config's `default_node`, if it sets one.
//! 5. Otherwise the local admin socket, `/run/repld/admin.sock`.
//!
//! # The replctl config
//!
//! TOML, found at `--config FILE`, else `$REPLCTL_CONFIG`, else
//! `$XDG_CONFIG_HOME/replctl/config.toml` (`~/.config/replctl/config.toml`), else
//! `/etc/repld/replctl.toml`. A file named by `--config` or `$REPLCTL_CONFIG` must exist; the
//! others are read when they exist. Relative paths in it are relative to the file's directory,
//! and `~/` is the home directory.
//!
//! ```toml
//! default_node = "node1"            # optional
//! ca = "/etc/repld/tls/ca.pem"      # defaults for every https node
//! cert = "~/.config/replctl/alice.pem"
//! key = "~/.config/replctl/alice.key"
//!
//! [nodes.node1]
//! endpoint = "https://10.0.0.5:7420"
//! # server_name = "node1"          # default: the node's name here, which is its certificate's CN
//!
//! [nodes.local]
//! socket = "/run/repld/admin.sock"
//! ```
//!
//! `--ca`, `--cert`, `--key` and `--server-name` override the file's values; the top-level
//! `ca`, `cert` and `key` also serve `--endpoint https://...` when the flags are not given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use repl_proto::{AdminClient, DEFAULT_ADMIN_SOCKET, Endpoint, StorageClient, TlsFiles};
use serde::Deserialize;

use crate::target::NodeName;

/// Global flags that say how to reach a node.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Reaching a node (global)")]
pub struct EndpointArgs {
    /// The node's local admin socket [default: /run/repld/admin.sock].
    #[arg(long, global = true, env = "REPLCTL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Reach a node over the network: https://HOST:PORT (mutual TLS, needs --ca, --cert and
    /// --key) or http://127.0.0.1:PORT (plaintext, loopback only).
    #[arg(long, global = true, env = "REPLCTL_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// The CA certificate that signed the node's certificate (PEM).
    #[arg(long, global = true, env = "REPLCTL_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Your client certificate (PEM), signed by the same CA.
    #[arg(long, global = true, env = "REPLCTL_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key of your client certificate (PEM).
    #[arg(long, global = true, env = "REPLCTL_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The node name to check the server's certificate against [default: the node's name in
    /// the config, or the URL's host].
    #[arg(long, global = true, env = "REPLCTL_SERVER_NAME", value_name = "NAME")]
    pub server_name: Option<String>,
    /// The replctl config that names nodes [default: $REPLCTL_CONFIG,
    /// ~/.config/replctl/config.toml, then /etc/repld/replctl.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The replctl config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The node used when a target names none and no endpoint flag is given.
    pub default_node: Option<String>,
    /// Default CA certificate for https nodes.
    pub ca: Option<PathBuf>,
    /// Default client certificate for https nodes.
    pub cert: Option<PathBuf>,
    /// Default client key for https nodes.
    pub key: Option<PathBuf>,
    /// Nodes by name.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeConfig>,
}

/// One `[nodes.NAME]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `https://host:port`, `http://127.0.0.1:port` or `unix:/path`.
    pub endpoint: Option<String>,
    /// A local admin socket (instead of `endpoint`).
    pub socket: Option<PathBuf>,
    /// CA certificate (overrides the top-level `ca`).
    pub ca: Option<PathBuf>,
    /// Client certificate (overrides the top-level `cert`).
    pub cert: Option<PathBuf>,
    /// Client key (overrides the top-level `key`).
    pub key: Option<PathBuf>,
    /// The name the node's certificate must carry (default: the table's name).
    pub server_name: Option<String>,
}

/// A config as loaded, with where it came from.
#[derive(Clone, Debug)]
struct Loaded {
    path: Option<PathBuf>,
    config: Config,
    searched: Vec<PathBuf>,
}

impl Config {
    /// Parses a config; `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Config> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.take() {
                *p = Some(resolve_path(&path, base));
            }
        };
        fix(&mut config.ca);
        fix(&mut config.cert);
        fix(&mut config.key);
        for (name, node) in &mut config.nodes {
            NodeName::new(name).map_err(|e| anyhow!("[nodes.{name}]: {e}"))?;
            match (&node.endpoint, &node.socket) {
                (Some(_), Some(_)) => {
                    bail!("[nodes.{name}]: give either endpoint or socket, not both")
                }
                (None, None) => bail!(
                    "[nodes.{name}]: give endpoint = \"https://HOST:7420\" or socket = \"/run/repld/admin.sock\""
                ),
                _ => {}
            }
            fix(&mut node.socket);
            fix(&mut node.ca);
            fix(&mut node.cert);
            fix(&mut node.key);
        }
        if let Some(default) = &config.default_node
            && !config.nodes.contains_key(default)
        {
            bail!("default_node = {default:?}, but there is no [nodes.{default}] table");
        }
        Ok(config)
    }
}

/// `~/x` is in the home directory; a relative path is relative to `base`.
fn resolve_path(p: &Path, base: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Resolves nodes to endpoints and connects to them.
#[derive(Debug)]
pub struct Connector {
    args: EndpointArgs,
    loaded: std::sync::OnceLock<Result<Loaded, String>>,
}

/// An endpoint and how to describe it to the operator.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The node's name, when it came from the config.
    pub node: Option<NodeName>,
}

impl Connector {
    /// A connector for the global flags.
    pub fn new(args: EndpointArgs) -> Connector {
        Connector {
            args,
            loaded: std::sync::OnceLock::new(),
        }
    }

    fn config(&self) -> Result<&Loaded> {
        self.loaded
            .get_or_init(|| load_config(self.args.config.as_deref()).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    /// Where `node` (or, for `None`, the default node) is.
    pub fn resolve(&self, node: Option<&NodeName>) -> Result<Resolved> {
        let a = &self.args;
        if let Some(node) = node {
            return self.resolve_named(node);
        }
        if let Some(url) = &a.endpoint {
            // Flags first; for https, the config's top-level files fill what they leave out.
            let (mut ca, mut cert, mut key) = (a.ca.clone(), a.cert.clone(), a.key.clone());
            if url.starts_with("https://") && (ca.is_none() || cert.is_none() || key.is_none()) {
                let c = &self.config()?.config;
                ca = ca.or_else(|| c.ca.clone());
                cert = cert.or_else(|| c.cert.clone());
                key = key.or_else(|| c.key.clone());
            }
            let tls = match (ca, cert, key) {
                (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                    ca,
                    cert,
                    key,
                    server_name: a.server_name.clone(),
                }),
                (None, None, None) => None,
                _ => bail!(
                    "--ca, --cert and --key go together: give all three (or REPLCTL_CA, \
                     REPLCTL_CERT and REPLCTL_KEY, or ca, cert and key in the replctl config)"
                ),
            };
            let is_https = url.starts_with("https://");
            if is_https && tls.is_none() {
                bail!(
                    "{url} is mutual TLS: give --ca CA.pem --cert YOU.pem --key YOU.key (or \
                     REPLCTL_CA, REPLCTL_CERT, REPLCTL_KEY), or name the node in the replctl \
                     config and write NODE:PFS (`replctl certs init` makes the files)"
                );
            }
            let endpoint = Endpoint::parse(url, tls)?;
            return Ok(Resolved {
                endpoint,
                node: None,
            });
        }
        if let Some(socket) = &a.socket {
            return Ok(Resolved {
                endpoint: Endpoint::Unix(socket.clone()),
                node: None,
            });
        }
        if let Some(default) = self.config()?.config.default_node.clone() {
            let name = NodeName::new(&default)?;
            return self.resolve_named(&name);
        }
        Ok(Resolved {
            endpoint: Endpoint::Unix(PathBuf::from(DEFAULT_ADMIN_SOCKET)),
            node: None,
        })
    }

    fn resolve_named(&self, node: &NodeName) -> Result<Resolved> {
        let loaded = self.config()?;
        let Some(entry) = loaded.config.nodes.get(node.as_str()) else {
            let known: Vec<&str> = loaded.config.nodes.keys().map(String::as_str).collect();
            let where_ = match &loaded.path {
                Some(p) => format!("the replctl config {} has no [nodes.{node}]", p.display()),
                None => format!(
                    "no replctl config was found (looked for {})",
                    loaded
                        .searched
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let known = if known.is_empty() {
                String::new()
            } else {
                format!(" (it names: {})", known.join(", "))
            };
            bail!(
                "unknown node `{node}`: {where_}{known}; add\n\n  [nodes.{node}]\n  endpoint = \
                 \"https://HOST:7420\"\n\nwith ca, cert and key, or drop `{node}:` to use \
                 --endpoint or the local admin socket"
            );
        };
        let c = &loaded.config;
        let endpoint = if let Some(socket) = &entry.socket {
            Endpoint::Unix(socket.clone())
        } else {
            let url = entry.endpoint.as_deref().unwrap_or_default();
            let tls = if url.starts_with("https://") {
                let pick = |flag: &Option<PathBuf>,
                            own: &Option<PathBuf>,
                            top: &Option<PathBuf>,
                            what: &str|
                 -> Result<PathBuf> {
                    flag.clone()
                        .or_else(|| own.clone())
                        .or_else(|| top.clone())
                        .ok_or_else(|| {
                            anyhow!(
                                "node `{node}` is reached over mutual TLS ({url}), but no {what} \
                                 is set: add {what} = \"FILE\" to [nodes.{node}] or to the top \
                                 of the replctl config, or give --{what} FILE"
                            )
                        })
                };
                let a = &self.args;
                Some(TlsFiles {
                    ca: pick(&a.ca, &entry.ca, &c.ca, "ca")?,
                    cert: pick(&a.cert, &entry.cert, &c.cert, "cert")?,
                    key: pick(&a.key, &entry.key, &c.key, "key")?,
                    server_name: Some(
                        a.server_name
                            .clone()
                            .or_else(|| entry.server_name.clone())
                            .unwrap_or_else(|| node.to_string()),
                    ),
                })
            } else {
                None
            };
            Endpoint::parse(url, tls).with_context(|| format!("[nodes.{node}] endpoint"))?
        };
        Ok(Resolved {
            endpoint,
            node: Some(node.clone()),
        })
    }

    /// A Storage client for `node`.
    pub async fn storage(&self, node: Option<&NodeName>) -> Result<StorageClient> {
        let r = self.resolve(node)?;
        let channel = connect(&r).await?;
        Ok(StorageClient::new(channel))
    }

    /// An Admin client for `node`.
    pub async fn admin(&self, node: Option<&NodeName>) -> Result<AdminClient> {
        let r = self.resolve(node)?;
        let channel = connect(&r).await?;
        Ok(AdminClient::new(channel))
    }
}

/// Connects, with messages that say what to do when it fails.
async fn connect(r: &Resolved) -> Result<tonic::transport::Channel> {
    if let Endpoint::Unix(path) = &r.endpoint
        && let Err(e) = std::fs::symlink_metadata(path)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return Err(anyhow!(
            "no admin socket at {}: is repld running on this node? Start it with `systemctl \
             start repld` (or `repld run --config FILE`). If it listens elsewhere, give \
             --socket PATH (or REPLCTL_SOCKET), or reach a node over the network with \
             --endpoint https://HOST:7420 or a NODE: prefix from the replctl config",
            path.display()
        ));
    }
    r.endpoint.connect().await.map_err(|e| {
        let msg = e.to_string();
        let hint = match &r.endpoint {
            Endpoint::Unix(_) if msg.contains("mode 0600") || msg.contains("ermission denied") => {
                "\nhint: the admin socket belongs to the user repld runs as: run replctl as \
                 that user (sudo -u repld replctl ...) or as root"
            }
            _ => "",
        };
        anyhow!("{msg}{hint}")
    })
}

fn load_config(explicit: Option<&Path>) -> Result<Loaded> {
    let mut searched = Vec::new();
    let env = std::env::var_os("REPLCTL_CONFIG").filter(|v| !v.is_empty());
    let must = explicit
        .map(Path::to_owned)
        .or_else(|| env.map(PathBuf::from));
    if let Some(path) = must {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the replctl config {}", path.display()))?;
        return parsed(path, &text, searched);
    }
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    let mut candidates: Vec<PathBuf> = xdg
        .map(|d| d.join("replctl/config.toml"))
        .into_iter()
        .collect();
    candidates.push(PathBuf::from("/etc/repld/replctl.toml"));
    for path in candidates {
        match std::fs::read_to_string(&path) {
            Ok(text) => return parsed(path, &text, searched),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => searched.push(path),
            Err(e) => {
                return Err(anyhow!(
                    "cannot read the replctl config {}: {e}",
                    path.display()
                ));
            }
        }
    }
    Ok(Loaded {
        path: None,
        config: Config::default(),
        searched,
    })
}

fn parsed(path: PathBuf, text: &str, searched: Vec<PathBuf>) -> Result<Loaded> {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let config = Config::parse(text, &base)
        .with_context(|| format!("the replctl config {} is invalid", path.display()))?;
    Ok(Loaded {
        path: Some(path),
        config,
        searched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(config: &str, args: EndpointArgs) -> (tempfile::TempDir, Connector) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).expect("write");
        let args = EndpointArgs {
            config: Some(path),
            ..args
        };
        (dir, Connector::new(args))
    }

    fn node(n: &str) -> NodeName {
        NodeName::new(n).expect("valid")
    }

    const CONFIG: &str = r#"
        ca = "tls/ca.pem"
        cert = "tls/alice.pem"
        key = "tls/alice.key"

        [nodes.node1]
        endpoint = "https://10.0.0.5:7420"

        [nodes.node2]
        endpoint = "https://node2.example"
        cert = "/other/bob.pem"
        server_name = "storage-b"

        [nodes.here]
        socket = "/tmp/repld.sock"

        [nodes.lo]
        endpoint = "http://127.0.0.1:7444"
    "#;

    #[test]
    fn named_nodes_come_from_the_config_with_inherited_tls_files() {
        let (dir, c) = connector(CONFIG, EndpointArgs::default());
        let r = c.resolve(Some(&node("node1"))).expect("node1");
        let Endpoint::Https { uri, tls } = r.endpoint else {
            panic!("https expected");
        };
        assert_eq!(uri.to_string(), "https://10.0.0.5:7420/");
        assert_eq!(tls.ca, dir.path().join("tls/ca.pem"));
        assert_eq!(tls.key, dir.path().join("tls/alice.key"));
        // The server name defaults to the node's name: its certificate's CN and SAN.
        assert_eq!(tls.server_name.as_deref(), Some("node1"));

        let r = c.resolve(Some(&node("node2"))).expect("node2");
        let Endpoint::Https { uri, tls } = r.endpoint else {
            panic!("https expected");
        };
        assert_eq!(uri.port_u16(), Some(7420), "default port");
        assert_eq!(tls.cert, PathBuf::from("/other/bob.pem"));
        assert_eq!(tls.server_name.as_deref(), Some("storage-b"));

        assert_eq!(
            c.resolve(Some(&node("here"))).expect("here").endpoint,
            Endpoint::Unix("/tmp/repld.sock".into())
        );
        assert!(matches!(
            c.resolve(Some(&node("lo"))).expect("lo").endpoint,
            Endpoint::Http(_)
        ));

        let e = c.resolve(Some(&node("nope"))).expect_err("unknown");
        let msg = e.to_string();
        assert!(
            msg.contains("[nodes.nope]") && msg.contains("node1, node2"),
            "{msg}"
        );
    }

    #[test]
    fn flags_override_the_config_and_choose_the_default_node() {
        let args = EndpointArgs {
            key: Some("/flag.key".into()),
            ..Default::default()
        };
        let (_dir, c) = connector(CONFIG, args);
        let Endpoint::Https { tls, .. } = c.resolve(Some(&node("node1"))).expect("ok").endpoint
        else {
            panic!("https");
        };
        assert_eq!(tls.key, PathBuf::from("/flag.key"));

        // No node, no flags: the local admin socket.
        assert_eq!(
            c.resolve(None).expect("default").endpoint,
            Endpoint::Unix(DEFAULT_ADMIN_SOCKET.into())
        );

        // default_node.
        let (_dir, c) = connector(
            &format!("default_node = \"here\"\n{CONFIG}"),
            EndpointArgs::default(),
        );
        assert_eq!(
            c.resolve(None).expect("default node").endpoint,
            Endpoint::Unix("/tmp/repld.sock".into())
        );
        // ... which --socket overrides.
        let (_dir, c) = connector(
            &format!("default_node = \"here\"\n{CONFIG}"),
            EndpointArgs {
                socket: Some("/s".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            c.resolve(None).expect("socket").endpoint,
            Endpoint::Unix("/s".into())
        );
    }

    #[test]
    fn endpoint_flag_needs_all_tls_files_for_https() {
        let https = |ca: Option<&str>| EndpointArgs {
            endpoint: Some("https://node1:7420".into()),
            ca: ca.map(PathBuf::from),
            ..Default::default()
        };
        let (_dir, c) = connector("", https(None));
        let e = c.resolve(None).expect_err("no TLS files").to_string();
        assert!(e.contains("--ca") && e.contains("certs init"), "{e}");
        let (_dir, c) = connector("", https(Some("ca.pem")));
        let e = c.resolve(None).expect_err("partial").to_string();
        assert!(e.contains("go together"), "{e}");
        // The config's top-level files fill in, and flags win over them.
        let (dir, c) = connector(CONFIG, https(Some("/flag/ca.pem")));
        let Endpoint::Https { tls, .. } = c.resolve(None).expect("from config").endpoint else {
            panic!("https");
        };
        assert_eq!(tls.ca, PathBuf::from("/flag/ca.pem"));
        assert_eq!(tls.cert, dir.path().join("tls/alice.pem"));
        assert_eq!(tls.server_name, None, "the URL's host");
        let (_dir, c) = connector(
            "",
            EndpointArgs {
                endpoint: Some("http://127.0.0.1:7444".into()),
                ..Default::default()
            },
        );
        assert!(matches!(
            c.resolve(None).expect("http").endpoint,
            Endpoint::Http(_)
        ));
    }

    #[test]
    fn bad_configs_are_named() {
        for (text, expect) in [
            ("[nodes.a]\nendpoint = \"x\"\nsocket = \"/s\"\n", "not both"),
            ("[nodes.a]\n", "give endpoint"),
            (
                "default_node = \"b\"\n[nodes.a]\nsocket = \"/s\"\n",
                "no [nodes.b]",
            ),
            ("[nodes.a]\nsocket = \"/s\"\nsockt = 1\n", "unknown field"),
            ("[nodes.\"bad name\"]\nsocket = \"/s\"\n", "not a node name"),
        ] {
            let e = Config::parse(text, Path::new("/")).expect_err(text);
            assert!(format!("{e:#}").contains(expect), "{text}: {e:#}");
        }
        let (_dir, c) = connector("nodes = 3", EndpointArgs::default());
        let e = c.resolve(None).expect_err("invalid file").to_string();
        assert!(e.contains("config.toml is invalid"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_socket_says_start_repld() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Connector::new(EndpointArgs {
            socket: Some(dir.path().join("admin.sock")),
            ..Default::default()
        });
        let e = c.admin(None).await.expect_err("no socket").to_string();
        assert!(
            e.contains("is repld running") && e.contains("--socket"),
            "{e}"
        );
    }
}
