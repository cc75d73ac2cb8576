//! Groups' quotas: whether a change to one app fits what its group may reserve, counting the
//! extra instances a deployment runs on top for a while (as Kubernetes counts a rollout's
//! surge). Pure: the server passes the group's other apps and the change.

pub use berth_core::groups::{Allow, Demand, Quota};
use berth_core::spec::{AppSpec, NetworkMode, Strategy};

/// Instances a deployment to `spec` runs on top of `spec.instances` at its peak: blue-green a
/// whole set, rolling its `max_over_capacity`, a canary its count; none when only the count
/// changes.
pub fn surge(spec: &AppSpec, new_version: bool, canary: u32) -> u32 {
    if !new_version {
        return 0;
    }
    let by_strategy = match spec.upgrade.strategy {
        Strategy::BlueGreen => spec.instances,
        Strategy::Rolling => (f64::from(spec.instances) * spec.upgrade.max_over_capacity).ceil() as u32,
    };
    by_strategy.max(canary)
}

/// Why a change does not fit its group.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error(
        "group {group}'s {what} quota is {quota}: its other apps reserve {usage}, and this asks {ask} (with {surge} instance(s) on top while it deploys)"
    )]
    Over { group: String, what: &'static str, quota: String, usage: String, ask: String, surge: u32 },
    #[error("{field}: group {group} has a {what} quota, so each of its apps says how much {what} it needs")]
    Undeclared { group: String, field: &'static str, what: &'static str },
    #[error("{field}: group {group} does not allow {what} (berth group set {group} --allow {allow})")]
    NotAllowed { group: String, field: &'static str, what: &'static str, allow: &'static str },
}

/// Whether `spec`, run as `instances` instances with `surge` on top, fits `group`'s `quota`
/// beside `others` (what the group's other apps reserve), and asks nothing it does not allow.
pub fn check(
    group: &str,
    quota: &Quota,
    allowed: &[Allow],
    others: Demand,
    spec: &AppSpec,
    surge: u32,
) -> Result<(), Refused> {
    let g = || group.to_string();
    if spec.privileged && !allowed.contains(&Allow::Privileged) {
        return Err(Refused::NotAllowed {
            group: g(),
            field: "privileged",
            what: "privileged instances",
            allow: "privileged",
        });
    }
    if spec.network == NetworkMode::Host && !allowed.contains(&Allow::HostNetwork) {
        return Err(Refused::NotAllowed {
            group: g(),
            field: "network",
            what: "host networking",
            allow: "host-network",
        });
    }
    if quota.cpu.is_some() && spec.cpu.is_none() {
        return Err(Refused::Undeclared { group: g(), field: "cpu", what: "cpu" });
    }
    if quota.memory.is_some() && spec.memory.is_none() {
        return Err(Refused::Undeclared { group: g(), field: "memory", what: "memory" });
    }
    let ask = Demand::of(spec, spec.instances.saturating_add(surge));
    let total = others.plus(ask);
    let over =
        |what, quota: String, usage: String, ask: String| Refused::Over { group: g(), what, quota, usage, ask, surge };
    if let Some(cpu) = quota.cpu
        && total.cpu > cpu + 1e-9
    {
        return Err(over("cpu", format!("{cpu} cores"), format!("{}", others.cpu), format!("{}", ask.cpu)));
    }
    if let Some(memory) = quota.memory
        && total.memory > memory
    {
        return Err(over(
            "memory",
            format!("{memory} MiB"),
            format!("{} MiB", others.memory),
            format!("{} MiB", ask.memory),
        ));
    }
    if let Some(instances) = quota.instances
        && total.instances > instances
    {
        return Err(over("instances", instances.to_string(), others.instances.to_string(), ask.instances.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(instances: u32, cpu: Option<f64>, memory: Option<u64>) -> AppSpec {
        let mut s = AppSpec::from_yaml("group: shop\nname: web\nimage: i\n", None).unwrap();
        s.instances = instances;
        s.cpu = cpu;
        s.memory = memory;
        s
    }

    #[test]
    fn a_change_that_passes_a_quota_says_which_the_usage_and_the_ask() {
        let quota = Quota { cpu: Some(4.0), memory: None, instances: Some(10) };
        let others = Demand { cpu: 3.0, memory: 0, instances: 6 };
        let web = spec(2, Some(0.5), None);
        assert_eq!(check("shop", &quota, &[], others, &web, 0), Ok(()));
        let err = check("shop", &quota, &[], others, &web, 1).unwrap_err().to_string();
        assert_eq!(
            err,
            "group shop's cpu quota is 4 cores: its other apps reserve 3, and this asks 1.5 (with 1 instance(s) on top while it deploys)"
        );
        let many = spec(5, Some(0.1), None);
        let err = check("shop", &quota, &[], others, &many, 0).unwrap_err().to_string();
        assert!(
            err.starts_with("group shop's instances quota is 10: its other apps reserve 6, and this asks 5"),
            "{err}"
        );
        let err = check("shop", &quota, &[], others, &spec(1, None, None), 0).unwrap_err().to_string();
        assert_eq!(err, "cpu: group shop has a cpu quota, so each of its apps says how much cpu it needs");
    }

    #[test]
    fn privileged_and_host_networking_need_the_group_to_allow_them() {
        let mut s = spec(1, None, None);
        s.privileged = true;
        let err = check("shop", &Quota::default(), &[], Demand::default(), &s, 0).unwrap_err().to_string();
        assert_eq!(
            err,
            "privileged: group shop does not allow privileged instances (berth group set shop --allow privileged)"
        );
        assert_eq!(check("shop", &Quota::default(), &[Allow::Privileged], Demand::default(), &s, 0), Ok(()));
        s.privileged = false;
        s.network = NetworkMode::Host;
        assert!(check("shop", &Quota::default(), &[Allow::Privileged], Demand::default(), &s, 0).is_err());
        assert_eq!(check("shop", &Quota::default(), &[Allow::HostNetwork], Demand::default(), &s, 0), Ok(()));
    }

    #[test]
    fn the_surge_is_a_whole_set_for_blue_green_and_the_max_over_for_rolling() {
        let mut s = spec(10, None, None);
        s.upgrade.max_over_capacity = 0.25;
        assert_eq!((surge(&s, true, 0), surge(&s, false, 0), surge(&s, true, 5)), (3, 0, 5));
        s.upgrade.strategy = berth_core::spec::Strategy::BlueGreen;
        assert_eq!(surge(&s, true, 0), 10);
    }

    proptest! {
        #[test]
        fn what_fits_stays_within_every_limit(
            cpu in proptest::option::of(0.0f64..64.0), instances in proptest::option::of(0u32..100),
            others in 0u32..50, n in 0u32..50, each in 0.0f64..2.0, surge in 0u32..10,
        ) {
            let quota = Quota { cpu, memory: None, instances };
            let others = Demand { cpu: f64::from(others) * each, memory: 0, instances: others };
            let s = spec(n, Some(each), None);
            if check("g", &quota, &[], others, &s, surge).is_ok() {
                let total = others.plus(Demand::of(&s, n + surge));
                prop_assert!(cpu.is_none_or(|c| total.cpu <= c + 1e-9));
                prop_assert!(instances.is_none_or(|i| total.instances <= i));
            }
        }
    }
}
