//! Who owns a host name. The router sends a request to whoever serves its Host, so a name must
//! have exactly one owner: an app that lists it in `services`, or a static upstream. The
//! `NAME.GROUP.<domain>` names are the apps' own and are reserved to them, whether the app
//! exists yet or not.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The owner of a host name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostOwner {
    /// `GROUP/NAME`.
    App(String),
    /// A static upstream, by name.
    Upstream(String),
}

impl fmt::Display for HostOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostOwner::App(id) => write!(f, "app {id}"),
            HostOwner::Upstream(name) => write!(f, "static upstream {name}"),
        }
    }
}

/// A host name and its owner, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostClaim {
    pub host: String,
    pub owner: HostOwner,
}

/// Why a claim is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostConflict {
    #[error("host `{host}` is reserved for app {app} (every app answers as NAME.GROUP.{domain})")]
    Reserved { host: String, app: String, domain: String },
    #[error("host `{host}` already belongs to {owner}")]
    Taken { host: String, owner: HostOwner },
}

/// The host a `services` entry names: without its port, lower-cased.
pub fn service_host(service: &str) -> String {
    service.rsplit_once(':').map_or(service, |(host, _)| host).to_ascii_lowercase()
}

/// The app (`GROUP/NAME`) a host name is reserved for, when it has the form `NAME.GROUP.<domain>`.
pub fn reserved_for(host: &str, domain: &str) -> Option<String> {
    let rest = host.strip_suffix(domain)?.strip_suffix('.')?;
    let (name, group) = rest.split_once('.')?;
    (!name.is_empty() && !group.is_empty() && !group.contains('.')).then(|| format!("{group}/{name}"))
}

/// Whether `claimant` may hold `host`, given its present owner (if any).
pub fn check(host: &str, claimant: &HostOwner, owner: Option<&HostOwner>, domain: &str) -> Result<(), HostConflict> {
    if let Some(app) = reserved_for(host, domain)
        && *claimant != HostOwner::App(app.clone())
    {
        return Err(HostConflict::Reserved { host: host.to_string(), app, domain: domain.to_string() });
    }
    match owner {
        Some(owner) if owner != claimant => Err(HostConflict::Taken { host: host.to_string(), owner: owner.clone() }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "berth.local";

    #[test]
    fn an_apps_own_name_is_reserved_to_it() {
        assert_eq!(reserved_for("web.demo.berth.local", D).as_deref(), Some("demo/web"));
        assert_eq!(reserved_for("a.web.demo.berth.local", D), None, "deeper names are not the pattern");
        assert_eq!(reserved_for("demo.berth.local", D), None);
        assert_eq!(reserved_for("web.demo.xberth.local", D), None, "the domain matches on a label boundary");
        assert_eq!(reserved_for("web.demo.example.com", D), None);
        let evil = HostOwner::App("evil/steal".into());
        let err = check("web.demo.berth.local", &evil, None, D).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host `web.demo.berth.local` is reserved for app demo/web (every app answers as NAME.GROUP.berth.local)"
        );
        assert!(check("web.demo.berth.local", &HostOwner::App("demo/web".into()), None, D).is_ok());
        assert!(check("web.demo.berth.local", &HostOwner::Upstream("web.demo.berth.local".into()), None, D).is_err());
    }

    #[test]
    fn a_claimed_name_stays_with_its_owner() {
        let shop = HostOwner::App("shop/front".into());
        let other = HostOwner::App("other/front".into());
        assert!(check("shop.example.com", &other, None, D).is_ok());
        assert!(check("shop.example.com", &shop, Some(&shop), D).is_ok());
        let err = check("shop.example.com", &other, Some(&shop), D).unwrap_err();
        assert_eq!(err.to_string(), "host `shop.example.com` already belongs to app shop/front");
        let up = HostOwner::Upstream("shop.example.com".into());
        assert!(check("shop.example.com", &up, Some(&shop), D).is_err());
        assert_eq!(service_host("Shop.Example.com:8080"), "shop.example.com");
    }
}
