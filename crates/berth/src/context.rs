//! The CLI's contexts, as kubeconfig and Nomad's environment have them: each names a server and
//! the token to use there; one is current. Kept in `$BERTH_CONFIG`, else
//! `$XDG_CONFIG_HOME/berth/config.toml`, else `~/.config/berth/config.toml`, readable by its
//! owner only (it holds tokens). `berth up` writes one for itself, so that the CLI on that
//! machine works with no flag.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The CA (PEM) its https:// server's certificate is checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// Where the contexts are kept.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|p| !p.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("berth").join("config.toml"))
}

impl Config {
    /// The contexts at `path`; none when the file does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the contexts to `path`, mode 0600, aside then renamed (they hold tokens).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string(self)?;
        berth_tls::write_private(path, &text).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn current(&self) -> Option<(&str, &Context)> {
        let name = self.current.as_deref()?;
        self.contexts.get_key_value(name).map(|(n, c)| (n.as_str(), c))
    }
}

/// The server, token and CA a client command uses: `--server`/`BERTH_SERVER` and
/// `--token`/`BERTH_TOKEN` first, then the current context, then the local default. The
/// context's token and CA go only with the context's own server.
pub fn resolve(server: Option<&str>, token: Option<&str>, config: &Config) -> (String, Option<String>, Option<String>) {
    let current = config.current();
    let server = server
        .map(str::to_string)
        .or_else(|| current.map(|(_, c)| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let own = current.filter(|(_, c)| same_server(&c.server, &server)).map(|(_, c)| c);
    let token = token.map(str::to_string).or_else(|| own.and_then(|c| c.token.clone()));
    (server, token, own.and_then(|c| c.ca.clone()))
}

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

fn same_server(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut c = Config::default();
        let prod =
            Context { server: "https://prod:7070".into(), token: Some("tok-p.s".into()), ca: Some("PEM".into()) };
        c.contexts.insert("prod".into(), prod);
        c.current = Some("prod".into());
        c
    }

    #[test]
    fn flags_win_and_a_contexts_token_and_ca_go_to_its_own_server_only() {
        let c = config();
        let prod = ("https://prod:7070".into(), Some("tok-p.s".into()), Some("PEM".into()));
        assert_eq!(resolve(None, None, &c), prod);
        assert_eq!(resolve(Some("https://prod:7070/"), None, &c).1.as_deref(), Some("tok-p.s"));
        assert_eq!(resolve(Some("http://other:7070"), None, &c), ("http://other:7070".into(), None, None));
        assert_eq!(resolve(None, Some("tok-x.y"), &c).1.as_deref(), Some("tok-x.y"));
        assert_eq!(resolve(None, None, &Config::default()), (DEFAULT_SERVER.into(), None, None));
    }

    #[test]
    fn contexts_round_trip_through_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth").join("config.toml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        config().save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), config());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "current = [").unwrap();
        let err = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(err.contains("config.toml") && err.contains("line 1"), "{err}");
    }
}
