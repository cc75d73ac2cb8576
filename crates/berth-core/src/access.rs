//! Who may do what: API tokens carry a role, scoped to groups or to all of them. Pure: the server
//! decides with these, the CLI shows them.

use serde::{Deserialize, Serialize};

/// What a token may do, from most to least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, tokens, groups, nodes, pools and static upstreams included.
    Admin,
    /// Deploys, scales, upgrades, rolls back, restarts and sets rules in its groups, and reads
    /// their logs, metrics and events.
    Deployer,
    /// Reads its groups, never a secret's value.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Viewer => "viewer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read what a group has (or what the cluster has, for a token of every group).
    Read,
    /// Deploy, scale, upgrade, roll back, restart, stop, run commands, set rules.
    Change,
    /// Tokens, nodes, pools, static upstreams: the cluster itself.
    Admin,
}

/// What a token may do: its role, and the groups it acts in (none: every group).
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    pub role: Role,
    pub groups: &'a [String],
}

/// Why a request was refused: the role it needs, or the group it is outside of.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("a {role} token cannot {what}; {needs}")]
    Role { role: Role, what: &'static str, needs: &'static str },
    #[error("a {role} token of group(s) {groups} cannot act in group {group}")]
    Group { role: Role, groups: String, group: String },
    #[error("a {role} token of group(s) {groups} cannot read what spans every group")]
    EveryGroup { role: Role, groups: String },
}

/// Which group a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// One group's.
    Group(&'a str),
    /// Not one group's, and harmless to every token (a list each token sees filtered).
    Any,
    /// Everything at once, unfiltered (`/metrics`): tokens of every group only.
    Every,
}

impl Grant<'_> {
    /// Whether the token acts in `group`.
    pub fn sees(&self, group: &str) -> bool {
        self.role == Role::Admin || self.groups.is_empty() || self.groups.iter().any(|g| g == group)
    }

    /// Whether the token may do `need` in `scope`, and if not, why.
    pub fn allows(&self, need: Need, scope: Scope<'_>) -> Result<(), Denied> {
        let role = self.role;
        match (need, role) {
            (_, Role::Admin) => return Ok(()),
            (Need::Admin, _) => {
                return Err(Denied::Role { role, what: "manage the cluster", needs: "only an admin token can" });
            }
            (Need::Change, Role::Viewer) => {
                return Err(Denied::Role { role, what: "change apps", needs: "a deployer or admin token can" });
            }
            _ => {}
        }
        let groups = || self.groups.join(", ");
        match scope {
            Scope::Group(group) if !self.sees(group) => {
                Err(Denied::Group { role, groups: groups(), group: group.to_string() })
            }
            Scope::Every if !self.groups.is_empty() => Err(Denied::EveryGroup { role, groups: groups() }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grant(role: Role, groups: &[String]) -> Grant<'_> {
        Grant { role, groups }
    }

    #[test]
    fn roles_and_groups_decide_and_say_why() {
        let shop = vec!["shop".to_string()];
        let deployer = grant(Role::Deployer, &shop);
        assert_eq!(deployer.allows(Need::Change, Scope::Group("shop")), Ok(()));
        assert_eq!(
            deployer.allows(Need::Change, Scope::Group("pay")).unwrap_err().to_string(),
            "a deployer token of group(s) shop cannot act in group pay"
        );
        assert_eq!(
            deployer.allows(Need::Admin, Scope::Any).unwrap_err().to_string(),
            "a deployer token cannot manage the cluster; only an admin token can"
        );
        let viewer = grant(Role::Viewer, &shop);
        assert_eq!(viewer.allows(Need::Read, Scope::Group("shop")), Ok(()));
        assert_eq!(
            viewer.allows(Need::Change, Scope::Group("shop")).unwrap_err().to_string(),
            "a viewer token cannot change apps; a deployer or admin token can"
        );
        assert!(viewer.allows(Need::Read, Scope::Every).is_err(), "metrics span every group");
        assert_eq!(grant(Role::Viewer, &[]).allows(Need::Read, Scope::Every), Ok(()));
        assert_eq!(grant(Role::Admin, &[]).allows(Need::Admin, Scope::Group("any")), Ok(()));
    }

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Admin), Just(Role::Deployer), Just(Role::Viewer)]
    }

    proptest! {
        #[test]
        fn a_higher_role_may_do_whatever_a_lower_one_may(
            lower in role(), higher in role(), groups in proptest::collection::vec("[a-c]", 0..3), group in "[a-d]",
        ) {
            prop_assume!(higher <= lower); // Admin < Deployer < Viewer in declaration order
            for need in [Need::Read, Need::Change, Need::Admin] {
                for scope in [Scope::Group(&group), Scope::Any, Scope::Every] {
                    if grant(lower, &groups).allows(need, scope).is_ok() {
                        prop_assert!(grant(higher, &groups).allows(need, scope).is_ok());
                    }
                }
            }
        }

        #[test]
        fn a_scoped_token_never_acts_outside_its_groups(
            r in role(), groups in proptest::collection::vec("[a-c]", 1..3), group in "[a-d]",
        ) {
            prop_assume!(r != Role::Admin && !groups.contains(&group));
            for need in [Need::Read, Need::Change, Need::Admin] {
                prop_assert!(grant(r, &groups).allows(need, Scope::Group(&group)).is_err());
            }
        }
    }
}
